"""Sky datasets: COCO polygons or mask PNGs, a split by image, random patches.

Two layouts (:func:`open_dataset` detects them):

- **COCO** (as Label Studio exports it): ``DATASET/result.json`` (or any single ``*.json``) whose
  images' ``file_name`` is found relative to the JSON's folder (or by its name in ``images/``).
  Category 1 is sky, category 2 objects inside the sky; the label is the union of the sky
  polygons minus the union of the object polygons, rasterised with pycocotools.
- **Masks**: ``DATASET/images/<stem>.<ext>`` with ``DATASET/masks/<stem>.png`` (non-zero = sky).

The train/validation split is **by image** (:func:`split_by_image`): no image gives patches to both.
:class:`SkyPatchDataset` draws item ``i`` of epoch ``e`` as a pure function of ``(seed, e, i)``
(random image, scale, position, horizontal flip and, for HDR, an exposure shift of 2^U(-2, 2)
and a gamma of U(0.8, 1.25) applied to the linear values before the log encoding; LDR gets the
gamma only).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from isplab.data.epoch import EpochDataset
from isplab.errors import IsplabError
from isplab.io.image import read_image
from isplab.workflows.sky.hdr import IMAGE_SUFFIXES, LogEncoding, SkyImage, network_input, read_sky_image

SKY_CATEGORY, OBJECT_CATEGORY = 1, 2
#: polygons may reach this far (pixels) outside the image before they are refused
POLYGON_TOLERANCE = 1.0


def rasterize(sky: list[list[float]], objects: list[list[float]], height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool mask: union of ``sky`` polygons minus union of ``objects`` polygons.

    Polygons are flat ``[x1, y1, x2, y2, ...]`` lists in pixel coordinates (COCO), rasterised with
    pycocotools.
    """
    from pycocotools import mask as mask_utils

    def union(polys: list[list[float]]) -> np.ndarray:
        polys = [p for p in polys if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), bool)
        rles = mask_utils.frPyObjects(polys, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)

    return union(sky) & ~union(objects)


@dataclass
class SkySample:
    """One labelled image: its file, and either polygons (COCO) or a mask file."""

    image: Path
    width: int | None = None
    height: int | None = None
    sky: list[list[float]] = field(default_factory=list)
    objects: list[list[float]] = field(default_factory=list)
    mask_file: Path | None = None
    source: Path | None = None  # the annotation file

    @property
    def name(self) -> str:
        return self.image.stem

    def load(self) -> tuple[SkyImage, np.ndarray]:
        """``(image, mask (H, W) bool)``.

        Raises:
            IsplabError: unreadable image or mask, or sizes that disagree.
        """
        image = read_sky_image(self.image)
        h, w = image.pixels.shape[:2]
        if self.mask_file is not None:
            mask = read_image(self.mask_file)
            if mask.ndim == 3:
                mask = mask[..., 0]
            if mask.shape != (h, w):
                raise IsplabError(
                    f"size mismatch: image {self.image} is {w}x{h} but its mask {self.mask_file} is {mask.shape[1]}x{mask.shape[0]}"
                )
            return image, mask > 0
        if (w, h) != (self.width, self.height):
            raise IsplabError(
                f"size mismatch: image {self.image} is {w}x{h} but {self.source} annotates it as {self.width}x{self.height}"
            )
        return image, rasterize(self.sky, self.objects, h, w)


def _find_image(root: Path, file_name: str) -> Path | None:
    name = Path(file_name.split("?")[0])
    for candidate in (root / name, root / "images" / name.name, root / name.name):
        if candidate.is_file():
            return candidate
    return None


def load_coco(json_path: str | Path, sky_category: int = SKY_CATEGORY, object_category: int = OBJECT_CATEGORY) -> list[SkySample]:
    """The samples of a COCO file (see the module docstring), in the file's image order.

    Raises:
        IsplabError: unreadable JSON, an annotation for an image id not in ``images``, an image
            file that does not exist, or a polygon outside its image (one line each, naming them).
    """
    json_path = Path(json_path)
    try:
        coco = json.loads(json_path.read_text())
        images = {int(im["id"]): im for im in coco["images"]}
        annotations = coco.get("annotations", [])
    except FileNotFoundError:
        raise IsplabError(f"annotation file {json_path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IsplabError(f"{json_path}: not a COCO annotation file ({type(e).__name__}: {e}); expected 'images' and 'annotations'") from None
    samples: dict[int, SkySample] = {}
    for image_id, im in images.items():
        path = _find_image(json_path.parent, str(im.get("file_name", "")))
        if path is None:
            raise IsplabError(f"{json_path}: image {im.get('file_name')!r} (id {image_id}) does not exist next to it or in images/")
        samples[image_id] = SkySample(path, int(im["width"]), int(im["height"]), source=json_path)
    for ann in annotations:
        image_id = int(ann.get("image_id", -1))
        if image_id not in samples:
            raise IsplabError(f"{json_path}: annotation {ann.get('id')} is for image id {image_id}, which is not among its images")
        category = ann.get("category_id")
        if category not in (sky_category, object_category):
            continue
        segmentation = ann.get("segmentation")
        if not isinstance(segmentation, list):
            raise IsplabError(f"{json_path}: annotation {ann.get('id')} has no polygon segmentation (RLE is not supported)")
        sample = samples[image_id]
        for poly in segmentation:
            xs, ys = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
            t = POLYGON_TOLERANCE
            if len(poly) < 6 or len(poly) % 2:
                raise IsplabError(f"{json_path}: annotation {ann.get('id')} has a polygon with {len(poly)} coordinates; expected x,y pairs of at least 3 points")
            if xs.min() < -t or ys.min() < -t or xs.max() > sample.width + t or ys.max() > sample.height + t:
                raise IsplabError(
                    f"{json_path}: annotation {ann.get('id')} has a polygon outside its image {sample.image.name} "
                    f"({sample.width}x{sample.height}): x {xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g}"
                )
            (sample.sky if category == sky_category else sample.objects).append([float(v) for v in poly])
    return list(samples.values())


def load_mask_folder(root: str | Path) -> list[SkySample]:
    """``root/images/<stem>.*`` paired with ``root/masks/<stem>.png``.

    Raises:
        IsplabError: no images, or an image without its mask.
    """
    root = Path(root)
    images = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise IsplabError(f"no images in {root / 'images'}")
    samples = []
    for image in images:
        mask = root / "masks" / f"{image.stem}.png"
        if not mask.is_file():
            raise IsplabError(f"image {image} has no mask: expected {mask}")
        samples.append(SkySample(image, mask_file=mask))
    return samples


def open_dataset(root: str | Path) -> list[SkySample]:
    """The samples of a dataset folder (COCO JSON or images/ + masks/), or of a COCO JSON file.

    Raises:
        IsplabError: nothing recognisable, or the errors of :func:`load_coco`/:func:`load_mask_folder`.
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".json":
        return load_coco(root)
    if not root.is_dir():
        raise IsplabError(f"dataset {root} does not exist")
    if (root / "result.json").is_file():
        return load_coco(root / "result.json")
    jsons = sorted(root.glob("*.json"))
    if len(jsons) == 1:
        return load_coco(jsons[0])
    if (root / "masks").is_dir():
        return load_mask_folder(root)
    raise IsplabError(f"no sky dataset in {root}: expected result.json (COCO) or images/ with masks/")


def split_by_image(samples: list[SkySample], val_fraction: float = 0.25, seed: int = 0) -> tuple[list[SkySample], list[SkySample]]:
    """``(train, val)``: whole images, never patches, go to one side (at least one each when
    there are two or more images). The same ``seed`` gives the same split.

    Raises:
        IsplabError: ``val_fraction`` outside [0, 1) or fewer than 2 images with ``val_fraction`` > 0.
    """
    if not 0 <= val_fraction < 1:
        raise IsplabError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return list(samples), []
    if len(samples) < 2:
        raise IsplabError(f"a split by image needs at least 2 images, got {len(samples)}")
    order = np.random.default_rng([seed, 0x5C1]).permutation(len(samples))
    n_val = min(len(samples) - 1, max(1, int(round(val_fraction * len(samples)))))
    val_idx = set(order[:n_val].tolist())
    return [s for i, s in enumerate(samples) if i not in val_idx], [s for i, s in enumerate(samples) if i in val_idx]


@dataclass(frozen=True)
class PatchOptions:
    """How :class:`SkyPatchDataset` draws patches.

    Attributes:
        patch: side of the network input (pixels).
        scale: range of the crop side over ``patch`` (the crop is resized to ``patch``); capped
            by the image size.
        exposure_stops: HDR exposure shift range, in stops (+-).
        gamma: range of the gamma applied to linear values (1 = none).
        flip: random horizontal flips.
    """

    patch: int = 256
    scale: tuple[float, float] = (0.5, 2.0)
    exposure_stops: float = 2.0
    gamma: tuple[float, float] = (0.8, 1.25)
    flip: bool = True


def draw_patch(image: SkyImage, mask: np.ndarray, rng: np.random.Generator, options: PatchOptions, augment: bool) -> tuple[np.ndarray, np.ndarray]:
    """One random ``(pixels (p, p, 3) linear, mask (p, p) float32)`` patch of ``image``."""
    h, w = mask.shape
    p = options.patch
    lo, hi = options.scale if augment else (1.0, 1.0)
    side = int(round(p * float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))) if hi > lo else int(round(p * lo))
    side = max(8, min(side, h, w))
    y = int(rng.integers(h - side + 1))
    x = int(rng.integers(w - side + 1))
    pixels = image.pixels[y : y + side, x : x + side]
    labels = mask[y : y + side, x : x + side].astype(np.float32)
    if side != p:
        interp = cv2.INTER_AREA if side > p else cv2.INTER_LINEAR
        pixels = cv2.resize(pixels, (p, p), interpolation=interp)
        labels = cv2.resize(labels, (p, p), interpolation=cv2.INTER_NEAREST)
    if augment and options.flip and rng.random() < 0.5:
        pixels, labels = pixels[:, ::-1], labels[:, ::-1]
    if augment:
        g = float(rng.uniform(*options.gamma))
        if image.hdr:
            stops = float(rng.uniform(-options.exposure_stops, options.exposure_stops))
            pixels = np.power(np.maximum(pixels, 0) * np.float32(2.0**stops), g)
        else:
            pixels = np.power(np.clip(pixels, 0, 1), g)
    return np.ascontiguousarray(pixels, dtype=np.float32), np.ascontiguousarray(labels)


class SkyPatchDataset(EpochDataset):
    """Random patches: item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``.

    Items are ``(input (3, p, p) float32, mask (1, p, p) float32)``; every random choice comes from
    ``numpy.random.default_rng([seed, epoch, index])``, so DDP ranks (given different indices by
    Lightning's ``DistributedSampler``) and dataloader workers need no seeding of their own. The
    epoch lives in shared memory (:meth:`set_epoch`, called by the engine's ``DatasetEpoch``).
    With ``augment=False`` the patches do not depend on the epoch (a fixed validation set).
    A few decoded images are cached per process (``cache`` of them).
    """

    def __init__(
        self,
        samples: list[SkySample],
        options: PatchOptions = PatchOptions(),
        patches_per_epoch: int = 1000,
        *,
        augment: bool = True,
        seed: int = 0,
        encoding: LogEncoding = LogEncoding(),
        cache: int = 4,
    ) -> None:
        if not samples:
            raise IsplabError("no images to draw patches from")
        super().__init__(patches_per_epoch, seed)
        self.samples, self.options, self.patches_per_epoch = samples, options, patches_per_epoch
        self.augment, self.encoding, self.cache_size = augment, encoding, cache
        self._cache: OrderedDict[int, tuple[SkyImage, np.ndarray]] = OrderedDict()

    def _load(self, i: int) -> tuple[SkyImage, np.ndarray]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        item = self.samples[i].load()
        self._cache[i] = item
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return item

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng(index, epoch=None if self.augment else 0)
        i = int(rng.integers(len(self.samples)))
        image, mask = self._load(i)
        pixels, labels = draw_patch(image, mask, rng, self.options, self.augment)
        x = network_input(pixels, image.hdr, self.encoding)
        return torch.from_numpy(x).permute(2, 0, 1).contiguous(), torch.from_numpy(labels)[None]
