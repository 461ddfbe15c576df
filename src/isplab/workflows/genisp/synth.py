"""``isplab genisp synth``: an offline low-light detection dataset with two (or more) raw cameras.

Every image ``i`` is a pure function of ``(seed, i)``: a background (a procedural texture, gradient
or colour chart, or one of scikit-image's bundled photographs that show no people or vehicles)
(randomly mirrored) with 1-4 objects of three classes composited at random sizes and positions
(two boxes overlap by less than 30 % of the smaller one, so some occlusion occurs but no object is
mostly hidden; an object that finds no such place in 20 tries is left out). The classes use COCO's
ids, like RAW-NOD:

========  ==  ========================================================================
class     id  drawn as
========  ==  ========================================================================
person    1   upright figure: skin-tone head, coloured torso and arms, dark legs
bicycle   2   two dark tyre rings with spokes, a coloured diamond frame, saddle, bar
car       3   coloured body and cabin, blue-grey windows, black wheels, lights
========  ==  ========================================================================

Each box is the tight box of the object's drawn pixels (alpha > 0.5), in pixel-edge coordinates.

The same scene is written as a normal-light 8-bit sRGB PNG (for training the detector) and, per
camera, "unprocessed" (:func:`isplab.data.unprocess.unprocess`: inverse tone curve, gamma and
colour matrix for that camera, inverse white balance for a random illuminant of 2500-7500 K) to
that camera's raw, **darkened** by a factor drawn log-uniformly in ``DARKENING`` (1/100 to 1/20 of
the normal exposure), with that camera's shot and read noise (variance ``shot * x + read``, ``x``
the normalised raw) and quantised to its bit depth, then written as a DNG with its colour matrix,
CFA pattern, black and white levels and the as-shot neutral of the illuminant.

Cameras (fixed; ``CAMERAS``):

=====  =====  ============================  =====  =====  ========  ========  =====
name   CFA    XYZ -> camera (DNG matrix of)  black  white  shot      read      ISO
=====  =====  ============================  =====  =====  ========  ========  =====
cam-a  RGGB   Sony ILCE-7                   512    16383  2e-4      4e-7      3200
cam-b  GRBG   Canon EOS 5D Mark II          256    4095   6e-4      2e-6      6400
cam-c  BGGR   Nikon D700                    128    4095   1e-3      4e-6      12800
=====  =====  ============================  =====  =====  ========  ========  =====

Layout (file names in the annotations are relative to the dataset folder, so every
``load_coco(annotations/..., out_dir)`` takes the dataset folder as its image folder)::

    normal/<id>.png                       normal-light sRGB, 8-bit
    raw/<camera>/<id>.dng                 low-light raw of that camera
    annotations/normal_<split>.json       COCO, string image ids (img00000, ...)
    annotations/<camera>_<split>.json
    manifest.json                         settings, cameras, and per image: split, objects,
                                          illuminant, each camera's darkening factor

Splits are by image: image ``i`` goes to the split its number ``frac(offset(seed) + i * phi)``
falls in (``phi`` the golden ratio), so every prefix of the dataset is split close to the requested
fractions and an image's split does not depend on ``count``. ``shard=(I, N)`` makes images with
``i mod N = I - 1``; each shard writes ``manifest.shard-I-of-N.json`` (kept) and the last shard to
finish merges all parts into the annotation files and ``manifest.json``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch

from isplab import __version__
from isplab.data.sources import load_source
from isplab.data.unprocess import (
    CAMERA_XYZ_TO_CAMERA,
    add_noise,
    illuminant_neutral,
    unprocess,
)
from isplab.errors import IsplabError
from isplab.io.dng import write_dng
from isplab.io.image import to_uint8, write_image
from isplab.io.paths import check_writable_dir, prepare_output_dir
from isplab.io.raw import RawImage
from isplab.isp.color import camera_to_srgb_matrix
from isplab.workflows.genisp.data import CLASSES

__all__ = [
    "BACKGROUNDS",
    "CAMERAS",
    "DARKENING",
    "CameraSpec",
    "SynthResult",
    "parse_shard",
    "render_raw",
    "render_scene",
    "split_of",
    "synthesize",
]

MANIFEST = "manifest.json"
DARKENING = (1 / 100, 1 / 20)  # low-light exposure relative to the normal-light image
CCT_RANGE = (2500.0, 7500.0)
BACKGROUNDS = ("texture", "coffee", "gradient", "chelsea", "chart", "rocket", "hubble")
MAX_OBJECTS = 4
MAX_OVERLAP = 0.3  # of the smaller box, so no object is mostly hidden
_GOLDEN = (math.sqrt(5) - 1) / 2
_ID = re.compile(r"img\d{5,}")
_PART = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.json")


@dataclass(frozen=True)
class CameraSpec:
    """A synthetic camera's fixed properties (see the module's table)."""

    pattern: str
    matrix_of: str  # key of isplab.data.unprocess.CAMERA_XYZ_TO_CAMERA
    black_level: int
    white_level: int
    shot_noise: float
    read_noise: float
    iso: int

    @property
    def xyz_to_camera(self) -> np.ndarray:
        return np.array(CAMERA_XYZ_TO_CAMERA[self.matrix_of], dtype=np.float64) / 10000.0


CAMERAS = {
    "cam-a": CameraSpec("RGGB", "Sony ILCE-7", 512, 16383, 2e-4, 4e-7, 3200),
    "cam-b": CameraSpec("GRBG", "Canon EOS 5D Mark II", 256, 4095, 6e-4, 2e-6, 6400),
    "cam-c": CameraSpec("BGGR", "Nikon D700", 128, 4095, 1e-3, 4e-6, 12800),
}


@dataclass
class SynthResult:
    """What :func:`synthesize` did.

    Attributes:
        out_dir: the dataset folder (the image folder of every annotation file).
        images: records of the images this run made (id, index, split, objects, cameras).
        failures: ``{"index", "id", "error"}`` of images that could not be made.
        annotations: ``{(name, split): path}`` with name ``"normal"`` or a camera (once merged).
        manifest: the merged manifest, or ``None`` while shards are missing.
        seconds: wall time.
    """

    out_dir: Path
    images: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    annotations: dict[tuple[str, str], Path] = field(default_factory=dict)
    manifest: Path | None = None
    seconds: float = 0.0


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` (1-based, like ``proxy generate``) -> ``(I, N)``; ``None`` -> ``(1, 1)``."""
    from isplab.workflows.proxy.generate import parse_shard as parse

    return parse(text)


def image_id(index: int) -> str:
    return f"img{index:05d}"


def split_of(index: int, seed: int, splits) -> str:
    """The split of image ``index`` (see the module docstring)."""
    offset = np.random.default_rng([seed, 0x5B1]).random()
    u = (offset + (index + 1) * _GOLDEN) % 1.0
    total = 0.0
    for name, fraction in splits:
        total += fraction
        if u < total:
            return name
    return splits[-1][0]


# --------------------------------------------------------------------------------------------
# objects


def _colour(rng: np.random.Generator, saturation=(0.55, 1.0), value=(0.55, 1.0)) -> tuple[int, int, int]:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(*value) * 255]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


_SKIN = [(241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172)]


def _person(w: int, h: int, rng: np.random.Generator):
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    shirt, trousers = _colour(rng), _colour(rng, (0.2, 0.8), (0.15, 0.4))
    p = lambda x, y: (int(x * w), int(y * h))

    def draw(fn, colour, *args, **kwargs):
        fn(img, *args, colour, **kwargs)
        fn(mask, *args, 255, **kwargs)

    swing = rng.uniform(-0.06, 0.06)
    legs = int(0.16 * w)
    draw(cv2.line, trousers, p(0.4, 0.55), p(0.36 - swing, 0.97), thickness=legs)
    draw(cv2.line, trousers, p(0.6, 0.55), p(0.64 + swing, 0.97), thickness=legs)
    arms = int(0.1 * w)
    draw(cv2.line, shirt, p(0.28, 0.25), p(0.1, 0.52 + swing), thickness=arms)
    draw(cv2.line, shirt, p(0.72, 0.25), p(0.9, 0.52 - swing), thickness=arms)
    draw(cv2.circle, skin, p(0.1, 0.53 + swing), int(0.06 * w), thickness=-1)
    draw(cv2.circle, skin, p(0.9, 0.53 - swing), int(0.06 * w), thickness=-1)
    torso = np.array([p(0.25, 0.22), p(0.75, 0.22), p(0.68, 0.58), p(0.32, 0.58)], np.int32)
    draw(cv2.fillPoly, shirt, [torso])
    draw(cv2.line, skin, p(0.5, 0.17), p(0.5, 0.23), thickness=int(0.12 * w))
    draw(cv2.circle, skin, p(0.5, 0.1), int(0.095 * h), thickness=-1)
    draw(cv2.ellipse, _colour(rng, (0.3, 0.9), (0.1, 0.45)), p(0.5, 0.07), (int(0.2 * w), int(0.06 * h)), 0, 180, 360, thickness=-1)
    return img, mask


def _bicycle(w: int, h: int, rng: np.random.Generator):
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    frame = _colour(rng)
    tyre = (int(rng.integers(25, 80)),) * 3
    p = lambda x, y: (int(x * w), int(y * h))

    def draw(fn, colour, *args, **kwargs):
        fn(img, *args, colour, **kwargs)
        fn(mask, *args, 255, **kwargs)

    radius = int(0.2 * w)
    rear, front = p(0.22, 0.66), p(0.78, 0.66)
    for hub in (rear, front):
        for k in range(8):
            angle = k * np.pi / 8
            dx, dy = int(radius * np.cos(angle)), int(radius * np.sin(angle))
            draw(cv2.line, (170, 170, 170), (hub[0] - dx, hub[1] - dy), (hub[0] + dx, hub[1] + dy), thickness=max(1, w // 90))
        draw(cv2.circle, tyre, hub, radius - int(0.025 * w), thickness=int(0.05 * w))
    thick = max(2, int(0.04 * w))
    crank, seat, head = p(0.46, 0.68), p(0.4, 0.3), p(0.72, 0.3)
    for a, b in ((rear, crank), (rear, seat), (crank, seat), (crank, head), (seat, head), (head, front)):
        draw(cv2.line, frame, a, b, thickness=thick)
    draw(cv2.line, frame, seat, p(0.38, 0.2), thickness=thick)
    draw(cv2.ellipse, (25, 25, 25), p(0.38, 0.18), (int(0.07 * w), int(0.035 * h)), 0, 0, 360, thickness=-1)
    draw(cv2.line, (60, 60, 60), head, p(0.7, 0.12), thickness=thick)
    draw(cv2.line, (60, 60, 60), p(0.64, 0.1), p(0.78, 0.12), thickness=thick)
    return img, mask


def _car(w: int, h: int, rng: np.random.Generator):
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    body = _colour(rng, (0.5, 1.0), (0.45, 1.0))
    p = lambda x, y: (int(x * w), int(y * h))

    def draw(fn, colour, *args, **kwargs):
        fn(img, *args, colour, **kwargs)
        fn(mask, *args, 255, **kwargs)

    cabin = np.array([p(0.2, 0.44), p(0.32, 0.06), p(0.7, 0.06), p(0.84, 0.44)], np.int32)
    draw(cv2.fillPoly, body, [cabin])
    glass = (int(rng.integers(90, 140)), int(rng.integers(120, 160)), int(rng.integers(150, 200)))
    draw(cv2.fillPoly, glass, [np.array([p(0.25, 0.42), p(0.35, 0.13), p(0.49, 0.13), p(0.49, 0.42)], np.int32)])
    draw(cv2.fillPoly, glass, [np.array([p(0.53, 0.42), p(0.53, 0.13), p(0.67, 0.13), p(0.78, 0.42)], np.int32)])
    radius = int(0.09 * w)
    draw(cv2.rectangle, body, p(0.02, 0.4), p(0.98, 0.8), thickness=-1)
    draw(cv2.circle, body, p(0.05, 0.6), int(0.2 * h), thickness=-1)
    draw(cv2.circle, body, p(0.95, 0.6), int(0.2 * h), thickness=-1)
    draw(cv2.rectangle, (250, 235, 120), p(0.92, 0.48), p(0.99, 0.58), thickness=-1)
    draw(cv2.rectangle, (200, 20, 20), p(0.01, 0.48), p(0.05, 0.6), thickness=-1)
    draw(cv2.line, (30, 30, 30), p(0.03, 0.72), p(0.97, 0.72), thickness=max(1, h // 25))
    for x in (0.22, 0.78):
        draw(cv2.circle, (20, 20, 20), p(x, 0.8), radius, thickness=-1)
        draw(cv2.circle, (150, 150, 150), p(x, 0.8), radius // 2, thickness=-1)
    return img, mask


#: per class: the drawing function, width / height, and the range of the object's size
#: (height for a person, width otherwise) relative to the image's height or width
_SHAPES = {
    1: (_person, 0.37, ("h", 0.25, 0.7)),
    2: (_bicycle, 1.7, ("w", 0.18, 0.45)),
    3: (_car, 2.3, ("w", 0.22, 0.55)),
}


def _draw_object(label: int, size: tuple[int, int], rng: np.random.Generator):
    """``(rgba float32 (h, w, 4))`` of one object, antialiased (drawn at 2x and area-shrunk)."""
    fn, aspect, (axis, lo, hi) = _SHAPES[label]
    width, height = size
    extent = rng.uniform(lo, hi) * (height if axis == "h" else width)
    h = extent if axis == "h" else extent / aspect
    h = min(h, 0.95 * height, 0.95 * width / aspect)
    w, h = max(8, round(h * aspect)), max(8, round(h))
    img, mask = fn(2 * w, 2 * h, rng)
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    rgba = np.concatenate([img, mask[..., None]], axis=2).astype(np.float32) / 255.0
    rgba = cv2.resize(np.ascontiguousarray(rgba), (w, h), interpolation=cv2.INTER_AREA)
    shade = np.linspace(rng.uniform(1.0, 1.15), rng.uniform(0.7, 0.9), h, dtype=np.float32)[:, None, None]
    rgba[..., :3] = np.clip(rgba[..., :3] * shade, 0, 1)
    return rgba


def _overlap(a, b) -> float:
    """Intersection of two xyxy boxes over the smaller one's area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def render_scene(index: int, seed: int, size: tuple[int, int] = (640, 426)) -> tuple[np.ndarray, list[dict], dict]:
    """The normal-light scene of image ``index``.

    Returns:
        ``(srgb float32 (H, W, 3) in [0, 1], objects [{"label", "category", "box": [x1, y1, x2, y2]}],
        info {"background", ...})``, a pure function of ``(index, seed, size)``.
    """
    width, height = size
    rng = np.random.default_rng([seed, index])
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image = load_source(background, size, rng).copy()
    if rng.random() < 0.5:
        image = np.ascontiguousarray(image[:, ::-1])
    image *= np.float32(rng.uniform(0.55, 1.0))  # backgrounds a little dimmer than the objects
    objects = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(1, 4))
        rgba = _draw_object(label, size, rng)
        h, w = rgba.shape[:2]
        alpha = rgba[..., 3]
        ys, xs = np.nonzero(alpha > 0.5)
        local = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        for _attempt in range(20):
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            box = (x0 + local[0], y0 + local[1], x0 + local[2], y0 + local[3])
            if all(_overlap(box, o["box"]) < MAX_OVERLAP for o in objects):
                break
        else:
            continue  # no room left for this object
        region = image[y0 : y0 + h, x0 : x0 + w]
        region[:] = region * (1 - alpha[..., None]) + rgba[..., :3] * alpha[..., None]
        objects.append({"label": label, "category": CLASSES[label], "box": [float(v) for v in box]})
    return np.clip(image, 0, 1), objects, {"background": background}


def render_raw(srgb: np.ndarray, camera: str, rng: np.random.Generator, cct: float) -> tuple[RawImage, dict]:
    """The low-light raw of a normal-light sRGB image on ``camera``: ``(RawImage, info)``."""
    spec = CAMERAS[camera]
    xyz_to_camera = spec.xyz_to_camera
    neutral = illuminant_neutral(xyz_to_camera, cct)
    darkening = float(np.exp(rng.uniform(np.log(DARKENING[0]), np.log(DARKENING[1]))))
    noise_seed = int(rng.integers(2**62))
    t = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float32)[None]
    ccm = camera_to_srgb_matrix(torch.from_numpy(xyz_to_camera)).float()
    raw = unprocess(torch.from_numpy(srgb).permute(2, 0, 1)[None], ccm[None], t(1.0 / neutral), t(1.0 / darkening), spec.pattern)
    raw = add_noise(raw, t(spec.shot_noise), t(spec.read_noise), torch.Generator().manual_seed(noise_seed))
    scale = spec.white_level - spec.black_level
    digital = (raw[0, 0].double().numpy() * scale + spec.black_level).round()
    mosaic = digital.clip(0, spec.white_level).astype(np.uint16)
    image = RawImage(
        mosaic=mosaic,
        cfa_pattern=spec.pattern,
        black_level=[spec.black_level] * 4,
        white_level=spec.white_level,
        as_shot_neutral=neutral,
        color_matrix=xyz_to_camera,
        exposure_time=1 / 30,
        iso=spec.iso,
        aperture=2.8,
        make="isplab",
        model=f"synthetic {camera}",
        unique_camera_model=f"isplab synthetic {camera}",
    )
    return image, {"darkening": darkening, "as_shot_neutral": (neutral / neutral[1]).tolist()}


def _make_image(task: dict) -> dict:
    """Render and write image ``task["index"]`` (normal PNG + one DNG per camera); its record."""
    index, seed, size, out = task["index"], task["seed"], tuple(task["size"]), Path(task["out_dir"])
    name = image_id(index)
    srgb, objects, info = render_scene(index, seed, size)
    rng = np.random.default_rng([seed, index, 7])
    cct = float(1e6 / rng.uniform(1e6 / CCT_RANGE[1], 1e6 / CCT_RANGE[0]))
    _write_atomic(out / "normal" / f"{name}.png", lambda p: write_image(p, to_uint8(srgb), overwrite=True))
    cameras = {}
    for camera in task["cameras"]:
        camera_rng = np.random.default_rng([seed, index, 11, list(CAMERAS).index(camera)])
        raw, raw_info = render_raw(srgb, camera, camera_rng, cct)
        _write_atomic(out / "raw" / camera / f"{name}.dng", lambda p, r=raw: write_dng(p, r, overwrite=True))
        cameras[camera] = raw_info
    return {
        "id": name,
        "index": index,
        "split": split_of(index, seed, task["splits"]),
        "width": size[0],
        "height": size[1],
        "illuminant_cct": cct,
        **info,
        "objects": objects,
        "cameras": cameras,
    }


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# the dataset


def _settings(count, seed, size, cameras, splits) -> dict:
    return {
        "count": count,
        "seed": seed,
        "size": list(size),
        "cameras": list(cameras),
        "splits": [[name, fraction] for name, fraction in splits],
    }


def _check(count, size, cameras, splits, workers) -> None:
    if count < 1:
        raise IsplabError(f"--count must be at least 1, got {count}")
    if len(size) != 2 or any(int(v) != v or v < 64 or v % 2 for v in size):
        raise IsplabError(f"bad --size {size!r}: expected an even WIDTHxHEIGHT of at least 64x64")
    unknown = [c for c in cameras if c not in CAMERAS]
    if unknown or not cameras or len(set(cameras)) != len(cameras):
        raise IsplabError(f"bad cameras {list(cameras)}: expected distinct names among {', '.join(CAMERAS)}")
    names = [name for name, _ in splits]
    fractions = [float(f) for _, f in splits]
    if not splits or len(set(names)) != len(names) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise IsplabError(f"bad splits {list(splits)}: expected distinct names with fractions that sum to 1")
    if any(not re.fullmatch(r"[A-Za-z0-9-]+", n) for n in names):
        raise IsplabError(f"bad split names {names}: expected letters, digits and '-'")
    if workers < 1:
        raise IsplabError(f"--workers must be at least 1, got {workers}")


def _own_files(out_dir: Path) -> list[Path]:
    """Files a previous synth run wrote in ``out_dir`` (only those are ever deleted)."""
    if not out_dir.is_dir():
        return []
    found = [p for p in (out_dir / MANIFEST,) if p.is_file()]
    found += [p for p in out_dir.glob("manifest.shard-*-of-*.json") if _PART.fullmatch(p.name)]
    found += [p for p in (out_dir / "normal").glob("img*.png") if _ID.fullmatch(p.stem)]
    found += [p for p in (out_dir / "raw").glob("*/img*.dng") if _ID.fullmatch(p.stem)]
    found += [p for p in (out_dir / "annotations").glob("*.json")]
    return sorted(found)


def _remove(files: list[Path], out_dir: Path) -> None:
    for path in files:
        path.unlink(missing_ok=True)
    for folder in sorted({p.parent for p in files}, key=lambda p: -len(p.parts)):
        if folder != out_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    raw = out_dir / "raw"
    if raw.is_dir() and not any(raw.iterdir()):
        raw.rmdir()


def synthesize(
    out_dir: str | Path,
    *,
    count: int,
    seed: int = 0,
    size: tuple[int, int] = (640, 426),
    cameras=("cam-a", "cam-b"),
    splits=(("train", 0.6), ("val", 0.2), ("test", 0.2)),
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SynthResult:
    """Write the synthetic low-light detection dataset (see the module docstring).

    Args:
        out_dir: the dataset folder.
        count: images in the whole dataset (all shards).
        size: ``(width, height)`` of every image, even.
        cameras: names from :data:`CAMERAS`.
        splits: ``(name, fraction)`` pairs summing to 1.
        workers: processes rendering in parallel.
        shard: ``(I, N)``: make only images with ``index mod N == I - 1`` (1-based).
        overwrite: replace a previous dataset in ``out_dir`` (its own files only).

    Raises:
        IsplabError: before anything is written: bad settings, an ``out_dir`` that holds a dataset
            (without ``overwrite``; a shard may join the other shards of the same settings), or an
            unwritable folder.
    """
    start = time.perf_counter()
    size = tuple(int(v) for v in size)
    cameras = tuple(cameras)
    splits = tuple((str(n), float(f)) for n, f in splits)
    _check(count, size, cameras, splits, workers)
    index_of, total = shard or (1, 1)
    if not 1 <= index_of <= total:
        raise IsplabError(f"bad shard {index_of}/{total}: expected I/N with 1 <= I <= N")
    out_dir = Path(out_dir)
    settings = _settings(count, seed, size, cameras, splits)
    previous = _own_files(out_dir)
    part = out_dir / f"manifest.shard-{index_of}-of-{total}.json"
    if previous and not overwrite and total > 1 and _joins(out_dir, previous, settings, part):
        check_writable_dir(out_dir)
    else:
        prepare_output_dir(out_dir, overwrite=overwrite, names=[p.relative_to(out_dir) for p in previous], what="dataset folder")
        _remove(previous, out_dir)
    for folder in [out_dir / "normal", out_dir / "annotations", *(out_dir / "raw" / c for c in cameras)]:
        folder.mkdir(parents=True, exist_ok=True)

    result = SynthResult(out_dir)
    tasks = [
        {"index": i, "seed": seed, "size": size, "cameras": cameras, "splits": splits, "out_dir": str(out_dir)}
        for i in range(index_of - 1, count, total)
    ]
    for task, record in _run(tasks, workers, progress):
        if isinstance(record, dict):
            result.images.append(record)
        else:
            result.failures.append({"index": task["index"], "id": image_id(task["index"]), "error": record})
    result.images.sort(key=lambda r: r["index"])
    document = {"isplab_version": __version__, "settings": settings, "shard": [index_of, total],
                "images": result.images, "failures": result.failures}
    if total == 1:
        _merge(out_dir, [document], settings, result)
    else:
        _write_json(part, document)
        parts = [out_dir / f"manifest.shard-{i}-of-{total}.json" for i in range(1, total + 1)]
        try:  # the last shard to finish merges (two at once write the same files atomically)
            documents = [json.loads(p.read_text()) for p in parts]
        except (OSError, ValueError):
            documents = None  # other shards still running
        if documents is not None:
            _merge(out_dir, documents, settings, result)
    result.seconds = time.perf_counter() - start
    return result


def _joins(out_dir: Path, previous: list[Path], settings: dict, part: Path) -> bool:
    """A shard may write into a folder holding only other shards' parts of the same settings."""
    if (out_dir / MANIFEST).exists() or part.exists():
        return False
    for path in out_dir.glob("manifest.shard-*-of-*.json"):
        try:
            if json.loads(path.read_text()).get("settings") != settings:
                return False
        except (OSError, ValueError, AttributeError):
            return False
    return True


def _run(tasks: list[dict], workers: int, progress: bool):
    """Yield ``(task, record or error text)`` as images finish."""
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        bar.start()
        job = bar.add_task("rendering", total=len(tasks))
    try:
        if workers == 1 or len(tasks) < 2:
            for task in tasks:
                yield task, _safe_make(task)
                if bar:
                    bar.advance(job)
            return
        context = get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_worker_init) as pool:
            futures = {pool.submit(_safe_make, task): task for task in tasks}
            for future in as_completed(futures):
                yield futures[future], future.result()
                if bar:
                    bar.advance(job)
    finally:
        if bar:
            bar.stop()


def _worker_init() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _safe_make(task: dict) -> dict | str:
    try:
        return _make_image(task)
    except IsplabError as error:
        return str(error)
    except Exception as error:  # a batch job reports a failure and goes on
        return f"{type(error).__name__}: {error}"


def _write_json(path: Path, document) -> None:
    _write_atomic(path, lambda p: p.write_text(json.dumps(document, indent=1)))


def _merge(out_dir: Path, documents: list[dict], settings: dict, result: SynthResult) -> None:
    """Write the annotation files and ``manifest.json`` from all shards' records."""
    images = sorted((r for d in documents for r in d["images"]), key=lambda r: r["index"])
    failures = sorted((f for d in documents for f in d["failures"]), key=lambda f: f["index"])
    categories = [{"id": k, "name": v, "supercategory": "none"} for k, v in CLASSES.items()]
    for name in ("normal", *settings["cameras"]):
        for split, _ in settings["splits"]:
            coco_images, annotations = [], []
            for record in images:
                if record["split"] != split:
                    continue
                file_name = f"normal/{record['id']}.png" if name == "normal" else f"raw/{name}/{record['id']}.dng"
                coco_images.append({"id": record["id"], "file_name": file_name, "width": record["width"], "height": record["height"]})
                for obj in record["objects"]:
                    x1, y1, x2, y2 = obj["box"]
                    annotations.append(
                        {"id": len(annotations) + 1, "image_id": record["id"], "category_id": obj["label"],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                    )
            path = out_dir / "annotations" / f"{name}_{split}.json"
            _write_json(path, {"info": {"description": f"isplab genisp synth: {name}, {split}"},
                               "images": coco_images, "annotations": annotations, "categories": categories})
            result.annotations[(name, split)] = path
    manifest = {
        "isplab_version": __version__,
        "settings": settings,
        "cameras": {name: {**asdict(CAMERAS[name]), "xyz_to_camera": CAMERAS[name].xyz_to_camera.tolist()}
                    for name in settings["cameras"]},
        "conventions": {
            "darkening": "the raw's exposure relative to the normal-light image (1/100 .. 1/20)",
            "noise": "variance = shot_noise * x + read_noise, x the raw normalised to [0, 1]",
            "box": "[x1, y1, x2, y2] in pixels (pixel edges); annotation bbox is COCO [x, y, w, h]",
            "annotations": "file_name relative to the dataset folder",
        },
        "images": images,
        "failures": failures,
    }
    _write_json(out_dir / MANIFEST, manifest)
    result.manifest = out_dir / MANIFEST
