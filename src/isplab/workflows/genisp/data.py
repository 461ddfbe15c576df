"""Detection data for GenISP: COCO annotations (RAW-NOD, LOD, ``isplab genisp synth``) and a dataset.

:func:`load_coco` reads a COCO JSON file as RAW-NOD and LOD ship it. Image ids may be strings
(RAW-NOD's ``raw_new_Sony_RX100m7_train.json``) or integers; the evaluator needs integers, so
string ids are numbered 1, 2, ... in sorted order (stable whatever the order of the file) and the
mapping is kept in :attr:`CocoSet.id_map`; integer ids are kept as they are. Boxes are COCO
``[x, y, w, h]`` in the annotation's pixel frame and are stored as ``xyxy``.

Checks, each a one-line :class:`~isplab.errors.IsplabError` naming the annotation file:
a missing or unreadable file; an image file missing from ``image_dir`` (``skip_missing=True``
drops such images instead, counted in :attr:`CocoSet.missing`); a category id the file does not
declare, or (with ``classes``) a category name that is not one of the classes; a box wholly
outside its image or with a non-positive width or height. A box partly outside its image is
clipped to it and counted in :attr:`CocoSet.clipped`.

:class:`DetectionDataset` returns ``(image (3, H, W) float32, target)`` with ``target["boxes"]``
``(N, 4)`` float32 xyxy in the returned image's pixels, ``target["labels"]`` int64 and
``target["image_id"]`` an int64 scalar, the torchvision detection convention.

Annotation frame vs. raw sensor: a raw's boxes are mapped from the annotation frame (the COCO
image ``width`` x ``height``) to the sensor's visible area. If the frame equals the sensor size (or
the file gives no size) boxes are only scaled; if the frame is smaller by at most 32 pixels and
10 % on each side it is taken as a **crop** of the sensor (RAW-NOD's Sony frames are 5472x3648 inside
LibRaw's 5496x3672 visible area) and boxes are shifted by half the margin (``frame_anchor="center"``,
the default: cameras' default crops are centred) or not at all (``"origin"``: the crop starts at the
top-left corner); otherwise the frame is taken as a resized view of the whole sensor and boxes are
scaled per axis. The two anchors differ by half the margin (12 sensor pixels for RAW-NOD's Sony, under
3 pixels of its 1200x800 input); which one RAW-NOD's annotators used is not documented.
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
from isplab.io.image import read_image, to_float
from isplab.workflows.genisp.preprocess import (
    LONG_SIDE,
    SHORT_SIDE,
    load_raw_xyz_sized,
    resize_keep_aspect,
)

#: RAW-NOD's classes with their COCO category ids.
CLASSES = {1: "person", 2: "bicycle", 3: "car"}
KINDS = ("raw", "rgb")
# An annotation frame smaller than the sensor by at most min(CROP_MARGIN * side, CROP_PIXELS) is a
# centred crop of it (RAW-NOD's Sony frames lose 12 pixels on each side).
CROP_MARGIN, CROP_PIXELS = 0.1, 32

__all__ = [
    "CLASSES",
    "FRAME_ANCHORS",
    "KINDS",
    "Augment",
    "CocoImage",
    "CocoSet",
    "DetectionDataset",
    "detection_collate",
    "hflip_boxes",
    "load_coco",
]


@dataclass
class CocoImage:
    """One annotated image.

    Attributes:
        id: integer id given to the evaluator.
        file_id: the id as written in the file (string or integer).
        path: the image file (``image_dir / file_name``).
        width, height: the annotation frame from the file, or ``None`` when not given.
        boxes: ``(N, 4)`` float64 xyxy in the annotation frame (clipped to it when known).
        labels: ``(N,)`` int64 category ids (of :attr:`CocoSet.categories`).
    """

    id: int
    file_id: str | int
    path: Path
    width: int | None
    height: int | None
    boxes: np.ndarray
    labels: np.ndarray


@dataclass
class CocoSet:
    """What :func:`load_coco` read: images with boxes, categories and the id mapping."""

    ann_path: Path
    image_dir: Path
    images: list[CocoImage]
    categories: dict[int, str]
    id_map: dict[str | int, int] = field(default_factory=dict)
    clipped: int = 0
    missing: int = 0

    def __len__(self) -> int:
        return len(self.images)

    def coco_json(self) -> dict:
        """The set as a COCO document with integer ids (for evaluators that read COCO)."""
        images, annotations = [], []
        for image in self.images:
            images.append({"id": image.id, "file_name": image.path.name, "width": image.width, "height": image.height})
            for box, label in zip(image.boxes, image.labels):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image.id, "category_id": int(label),
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                )
        categories = [{"id": k, "name": v} for k, v in sorted(self.categories.items())]
        return {"images": images, "annotations": annotations, "categories": categories}


def _fail(path: Path, message: str) -> IsplabError:
    return IsplabError(f"{path}: {message}")


def load_coco(
    ann_path: str | Path,
    image_dir: str | Path,
    *,
    classes: dict[int, str] | None = CLASSES,
    skip_missing: bool = False,
    file_suffix: str | None = None,
) -> CocoSet:
    """Read a COCO detection file whose images lie in ``image_dir``.

    Args:
        ann_path: the JSON file (``images``, ``annotations``, ``categories``).
        image_dir: folder the images' ``file_name`` are relative to.
        classes: ``{id: name}`` the labels must use (default person/bicycle/car, 1-3). The file's
            categories are matched **by name**, so a file that numbers them differently is
            renumbered; a name not in ``classes`` is an error. ``None`` keeps the file's own.
        skip_missing: drop images whose file is missing instead of refusing the set.
        file_suffix: replace each ``file_name``'s extension with this one (e.g. ``".ARW"`` when the
            annotations name the JPEG renders of the raws).

    Raises:
        IsplabError: see the module docstring; one line naming ``ann_path``.
    """
    ann_path, image_dir = Path(ann_path), Path(image_dir)
    if not ann_path.is_file():
        raise IsplabError(f"annotation file {ann_path} does not exist: expected a COCO JSON file")
    if not image_dir.is_dir():
        raise IsplabError(f"image folder {image_dir} does not exist: expected the folder of {ann_path.name}'s images")
    try:
        document = json.loads(ann_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(ann_path, f"not a readable JSON file ({error}); expected COCO annotations") from None
    if not isinstance(document, dict) or not all(isinstance(document.get(k), list) for k in ("images", "annotations", "categories")):
        raise _fail(ann_path, "expected a COCO JSON object with 'images', 'annotations' and 'categories' lists")

    file_categories = {}
    for category in document["categories"]:
        try:
            file_categories[category["id"]] = str(category["name"])
        except (TypeError, KeyError):
            raise _fail(ann_path, f"category {category!r} lacks an 'id' or 'name'") from None
    if classes is None:
        categories = {int(k): v for k, v in file_categories.items()}
        relabel = {k: int(k) for k in file_categories}
    else:
        categories = dict(classes)
        by_name = {name: cid for cid, name in classes.items()}
        relabel = {}
        for cid, name in file_categories.items():
            if name not in by_name:
                raise _fail(ann_path, f"unknown category {name!r} (id {cid}): expected one of {', '.join(classes.values())}")
            relabel[cid] = by_name[name]

    records = {}
    for entry in document["images"]:
        try:
            records[entry["id"]] = entry
            str(entry["file_name"])
        except (TypeError, KeyError):
            raise _fail(ann_path, f"image entry {str(entry)[:80]} lacks an 'id' or 'file_name'") from None
    ids = list(records)
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        id_map = {i: i for i in ids}
    else:
        id_map = {i: n for n, i in enumerate(sorted(ids, key=str), start=1)}

    boxes: dict = {i: [] for i in ids}
    labels: dict = {i: [] for i in ids}
    clipped = 0
    for ann in document["annotations"]:
        try:
            image_id, category, bbox = ann["image_id"], ann["category_id"], ann["bbox"]
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, KeyError, ValueError):
            raise _fail(ann_path, f"annotation {str(ann)[:80]} lacks image_id, category_id or a 4-number bbox") from None
        where = f"annotation {ann.get('id', '?')} of image {image_id!r}"
        if image_id not in records:
            raise _fail(ann_path, f"{where} refers to an image the file does not list")
        if category not in relabel:
            raise _fail(ann_path, f"{where} has unknown category id {category!r}: the file declares {sorted(file_categories)}")
        if not (w > 0 and h > 0):
            raise _fail(ann_path, f"{where} has a box of size {w}x{h}: expected a positive width and height")
        x1, y1, x2, y2 = x, y, x + w, y + h
        width, height = records[image_id].get("width"), records[image_id].get("height")
        if width and height:
            if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
                raise _fail(ann_path, f"{where} has box {bbox} wholly outside its {width}x{height} image")
            c = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
            clipped += c != (x1, y1, x2, y2)
            x1, y1, x2, y2 = c
        boxes[image_id].append((x1, y1, x2, y2))
        labels[image_id].append(relabel[category])

    images, missing, first_missing = [], 0, None
    for file_id, entry in records.items():
        path = image_dir / str(entry["file_name"])
        if file_suffix is not None:
            path = path.with_suffix(file_suffix)
        if not path.is_file():
            missing += 1
            first_missing = first_missing or path
            continue
        images.append(
            CocoImage(
                id=id_map[file_id],
                file_id=file_id,
                path=path,
                width=int(entry["width"]) if entry.get("width") else None,
                height=int(entry["height"]) if entry.get("height") else None,
                boxes=np.array(boxes[file_id], dtype=np.float64).reshape(-1, 4),
                labels=np.array(labels[file_id], dtype=np.int64),
            )
        )
    if missing and not skip_missing:
        raise _fail(
            ann_path,
            f"{missing} of {len(records)} images are missing from {image_dir} (first: {first_missing.name}); "
            "expected every listed image there",
        )
    if records and not images:
        raise _fail(ann_path, f"no images to use: all {len(records)} listed images are missing from {image_dir}")
    return CocoSet(ann_path, image_dir, images, categories, id_map, clipped, missing)


# --------------------------------------------------------------------------------------------
# boxes


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror ``(N, 4)`` xyxy boxes in an image ``width`` pixels wide: ``x -> width - x``."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def _clip_and_drop(boxes: np.ndarray, labels: np.ndarray, width: int, height: int, min_size: float):
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return boxes[keep], labels[keep]


FRAME_ANCHORS = ("center", "origin")


def _frame_transform(image: CocoImage, sensor_hw: tuple[int, int], out_hw: tuple[int, int], anchor: str = "center"):
    """``(sx, sy, dx, dy)``: a box in the annotation frame maps to ``(x + dx) * sx``, ``(y + dy) * sy``."""
    sh, sw = sensor_hw
    fw, fh = image.width or sw, image.height or sh
    dx = dy = 0.0
    near = lambda frame, side: frame <= side and side - frame <= min(CROP_MARGIN * side, CROP_PIXELS)
    if (fw, fh) != (sw, sh) and near(fw, sw) and near(fh, sh):
        if anchor == "center":
            dx, dy = (sw - fw) / 2, (sh - fh) / 2
        fw, fh = sw, sh
    return out_hw[1] / fw, out_hw[0] / fh, dx, dy


# --------------------------------------------------------------------------------------------
# dataset


@dataclass
class Augment:
    """Training augmentation, drawn per item from ``default_rng([seed, epoch, index])``.

    Attributes:
        flip: probability of a horizontal flip.
        scale: range of the random rescale; the result is cropped back to at most the original size
            at a random offset (boxes moved, clipped, and dropped when thinner than ``min_box``).
        gain: range of the exposure gain (drawn log-uniformly), multiplied into the image.
        noise: the largest Gaussian noise std, relative to the image's mean level (raw) or
            absolute (rgb, which is then clipped to [0, 1]).
        min_box: boxes narrower or shorter than this (pixels) after cropping are dropped.
    """

    flip: float = 0.5
    scale: tuple[float, float] = (0.75, 1.33)
    gain: tuple[float, float] = (0.5, 2.0)
    noise: float = 0.05
    min_box: float = 2.0


class DetectionDataset(EpochDataset):
    """Images of a :class:`CocoSet` with their boxes, resized keeping the aspect ratio.

    Args:
        coco: from :func:`load_coco`.
        short, long: resize sides (:func:`~isplab.workflows.genisp.preprocess.resize_keep_aspect`).
        augment: apply :class:`Augment` (a pure function of ``(seed, epoch, index)``; call
            :meth:`set_epoch`, as the engine's trainer does).
        seed: the run's seed.
        kind: ``"raw"``: raw files through
            :func:`~isplab.workflows.genisp.preprocess.load_raw_xyz` (GenISP's XYZ input);
            ``"rgb"``: 8/16-bit sRGB PNG/JPEG as float [0, 1] (for the normal-light detector).
        cache_items: decoded, resized images kept in memory per process (least recently used
            dropped first); 0 disables the cache.
        augmentation: the :class:`Augment` settings used when ``augment``.
        frame_anchor: where an annotation frame slightly smaller than a raw's sensor sits:
            ``"center"`` or ``"origin"`` (see the module docstring).

    Items: ``(image (3, H, W) float32, {"boxes": (N, 4) float32 xyxy, "labels": (N,) int64,
    "image_id": int64 scalar})``.
    """

    def __init__(
        self,
        coco: CocoSet,
        *,
        short: int = SHORT_SIDE,
        long: int = LONG_SIDE,
        augment: bool = False,
        seed: int = 0,
        kind: str = "raw",
        cache_items: int = 32,
        augmentation: Augment | None = None,
        frame_anchor: str = "center",
    ) -> None:
        if kind not in KINDS:
            raise IsplabError(f"unknown dataset kind {kind!r}: expected one of {', '.join(KINDS)}")
        if frame_anchor not in FRAME_ANCHORS:
            raise IsplabError(f"unknown frame anchor {frame_anchor!r}: expected one of {', '.join(FRAME_ANCHORS)}")
        self.frame_anchor = frame_anchor
        if not len(coco):
            raise IsplabError(f"{coco.ann_path}: no images to load")
        super().__init__(len(coco), seed)
        self.coco = coco
        self.short, self.long = int(short), int(long)
        self.augment = bool(augment)
        self.kind = kind
        self.cache_items = int(cache_items)
        self.augmentation = augmentation or Augment()
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item ``index`` without augmentation: ``(image (H, W, 3) float32, boxes (N, 4), labels (N,))``.

        Cached (do not modify the arrays in place).
        """
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        entry = self.coco.images[index]
        if self.kind == "raw":
            image, _, sensor_hw = load_raw_xyz_sized(entry.path, self.short, self.long)
        else:
            full = _read_rgb(entry.path)
            sensor_hw = full.shape[:2]
            image, _ = resize_keep_aspect(full, self.short, self.long)
        sx, sy, dx, dy = _frame_transform(entry, sensor_hw, image.shape[:2], self.frame_anchor)
        boxes = (entry.boxes + [dx, dy, dx, dy]) * [sx, sy, sx, sy]
        boxes, labels = _clip_and_drop(boxes, entry.labels, image.shape[1], image.shape[0], 1e-3)
        item = (image, boxes, labels)
        if self.cache_items > 0:
            self._cache[index] = item
            while len(self._cache) > self.cache_items:
                self._cache.popitem(last=False)
        return item

    def __getitem__(self, index: int):
        rng = self.rng(index)  # raises IndexError past the end
        image, boxes, labels = self.load(index)
        if self.augment:
            image, boxes, labels = self._augment(image, boxes, labels, rng)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            "image_id": torch.tensor(self.coco.images[index].id, dtype=torch.int64),
        }
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target

    def _augment(self, image, boxes, labels, rng: np.random.Generator):
        a = self.augmentation
        h, w = image.shape[:2]
        # every draw is made whatever the outcome, so the stream does not depend on earlier choices
        flip = rng.random() < a.flip
        s = float(np.exp(rng.uniform(np.log(a.scale[0]), np.log(a.scale[1]))))
        u_x, u_y = rng.random(2)
        gain = float(np.exp(rng.uniform(np.log(a.gain[0]), np.log(a.gain[1]))))
        sigma = float(rng.uniform(0, a.noise))
        noise_seed = int(rng.integers(2**32))
        if flip:
            image = image[:, ::-1]
            boxes = hflip_boxes(boxes, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            interpolation = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            image = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=interpolation)
            boxes = boxes * [nw / w, nh / h, nw / w, nh / h]
        ch, cw = min(nh, h), min(nw, w)
        x0, y0 = int(u_x * (nw - cw + 1)), int(u_y * (nh - ch + 1))
        image = image[y0 : y0 + ch, x0 : x0 + cw]
        boxes, labels = _clip_and_drop(boxes - [x0, y0, x0, y0], labels, cw, ch, a.min_box)
        image = image * np.float32(gain)
        if sigma > 0:
            level = float(np.abs(image).mean()) if self.kind == "raw" else 1.0
            noise = np.random.default_rng(noise_seed).standard_normal(image.shape, dtype=np.float32)
            image = image + noise * np.float32(sigma * level)
        if self.kind == "rgb":
            image = np.clip(image, 0, 1)
        return image.astype(np.float32, copy=False), boxes, labels


def _read_rgb(path: Path) -> np.ndarray:
    image = to_float(read_image(path))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[..., :3]
    if image.shape[2] != 3:
        raise IsplabError(f"{path}: expected an RGB image, got {image.shape[2]} channels")
    return np.ascontiguousarray(image, dtype=np.float32)


def detection_collate(batch):
    """``[(image, target), ...]`` -> ``(list of images, list of targets)`` (sizes may differ)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
