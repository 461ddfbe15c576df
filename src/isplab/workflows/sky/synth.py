"""Procedural HDR sky panoramas with COCO polygon labels, as Label Studio exports them.

Each image (a pure function of ``(seed, index)``) is an equirectangular-style panorama:

- a clear sky: luminance ``L = base * (1 + 2 exp(-3 g)) * (0.4 + 0.6 cos^0.3 z)`` in the sun's
  colour over the zenith angle ``z`` and the angle ``g`` to the sun, bluer towards the zenith;
- a sun disc ``SUN_RATIO`` (10^4 to 10^5) times brighter than the sky around it, with a halo;
- clouds from smooth fractal noise (grey-white, part of the sky);
- terrain, buildings (lit windows) and trees whose silhouettes form the skyline;
- 0-2 dark objects floating inside the sky (balloons, signs), labelled class 2.

Layout written by :func:`synthesize`::

    OUT/images/sky_00000.exr ...     float32 linear RGB
    OUT/result.json                   COCO: images, annotations (polygons), categories 1 sky, 2 object

The label of an image is its sky polygon (category 1) minus its objects' polygons (category 2),
rasterised with pycocotools (:func:`isplab.workflows.sky.data.rasterize`); the image's pixels are
drawn from that very rasterisation, so pixels and labels agree exactly.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from isplab.errors import IsplabError
from isplab.io.image import write_image
from isplab.io.paths import prepare_output_dir

SKY, OBJECT = 1, 2
CATEGORIES = [{"id": SKY, "name": "sky"}, {"id": OBJECT, "name": "object in sky"}]
ANNOTATIONS_FILE = "result.json"
IMAGES_DIR = "images"
#: brightness of the sun disc over the sky next to it (drawn log-uniformly per image)
SUN_RATIO = (1e4, 1e5)


@dataclass
class SynthResult:
    images: list[Path]
    annotations: Path


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``, each at least 32."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise IsplabError(f"bad size {text!r}: expected WIDTHxHEIGHT such as 512x256") from None
    if w < 32 or h < 32:
        raise IsplabError(f"bad size {text!r}: width and height must be at least 32")
    return w, h


def _noise(rng: np.random.Generator, h: int, w: int, octaves: int = 5, base: int = 4) -> np.ndarray:
    """Smooth fractal noise in about [0, 1], (h, w) float32."""
    total = np.zeros((h, w), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        grid = rng.random((max(2, cells * h // w + 1), cells + 1)).astype(np.float32)
        total += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        norm += amp
        amp *= 0.5
    return total / norm


def _skyline(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, list, list]:
    """Per-column top of the non-sky scene (float y, at column centres) and the buildings and trees."""
    x = np.arange(w) + 0.5
    horizon = h * rng.uniform(0.5, 0.7)
    terrain = horizon + np.zeros(w)
    for _ in range(4):
        freq, phase, amp = rng.uniform(1, 8), rng.uniform(0, 2 * np.pi), rng.uniform(0.01, 0.06) * h
        terrain -= amp * np.sin(2 * np.pi * freq * x / w + phase)
    top = terrain.copy()
    buildings = []
    for _ in range(int(rng.integers(1, 5))):
        bw = rng.uniform(0.04, 0.12) * w
        x0 = rng.uniform(0, w - bw)
        x0, x1 = int(x0), int(x0 + bw)
        roof = float(terrain[x0:x1].min() - rng.uniform(0.05, 0.25) * h)
        buildings.append((x0, x1, roof))
        top[x0:x1] = np.minimum(top[x0:x1], roof)
    trees = []
    for _ in range(int(rng.integers(2, 7))):
        cx = rng.uniform(0, w)
        r = rng.uniform(0.02, 0.05) * h
        base = float(np.interp(cx, x, terrain))
        cy = base - rng.uniform(1.5, 2.5) * r
        trees.append((cx, cy, r, base))
        dx = x - cx
        inside = np.abs(dx) < r
        top[inside] = np.minimum(top[inside], cy - np.sqrt(r * r - dx[inside] ** 2))
        trunk = np.abs(dx) < max(1.0, 0.15 * r)
        top[trunk] = np.minimum(top[trunk], cy)
    return np.clip(top, 2.0, h - 1.0), buildings, trees


def _sky_polygon(top: np.ndarray, w: int) -> list[float]:
    """The region above the skyline as one polygon (x, y, ...), steps at column boundaries."""
    points = [(0.0, 0.0), (float(w), 0.0)]
    ys = np.round(top, 2)
    for col in range(w - 1, -1, -1):
        y = float(ys[col])
        points.append((float(col + 1), y))
        points.append((float(col), y))
    # drop points on straight runs (flat roofs, level ground)
    kept = [points[0], points[1]]
    for p, nxt in zip(points[2:], points[3:] + [points[0]]):
        prev = kept[-1]
        if (prev[1] == p[1] == nxt[1]) or (prev[0] == p[0] == nxt[0]):
            continue
        kept.append(p)
    return [round(v, 2) for p in kept for v in p]


def _floating_objects(rng: np.random.Generator, top: np.ndarray, w: int, h: int) -> list[list[float]]:
    """0-2 convex polygons well inside the sky (class 2)."""
    polys = []
    for _ in range(int(rng.integers(0, 3))):
        r = rng.uniform(0.02, 0.05) * h
        for _attempt in range(20):
            cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h * 0.5)
            cols = slice(max(0, int(cx - r) - 2), min(w, int(cx + r) + 3))
            if cy + r + 4 < top[cols].min():
                break
        else:
            continue
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = r * rng.uniform(0.7, 1.0, n)
        polys.append([round(float(v), 2) for a, rr in zip(angles, radii) for v in (cx + rr * np.cos(a), cy + rr * np.sin(a))])
    return polys


def _render(rng: np.random.Generator, w: int, h: int, sky_mask: np.ndarray, buildings, trees) -> np.ndarray:
    """Linear HDR RGB float32: the sky where ``sky_mask``, the scene elsewhere."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    zenith = np.clip(yy / h, 0, 1) * (np.pi / 2) * 1.2  # 0 at the top row
    azimuth = xx / w * 2 * np.pi
    sun_az, sun_zen = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 1.0)
    cos_g = np.cos(zenith) * np.cos(sun_zen) + np.sin(zenith) * np.sin(sun_zen) * np.cos(azimuth - sun_az)
    gamma = np.arccos(np.clip(cos_g, -1, 1))
    base = rng.uniform(0.3, 3.0)
    lum = base * (1 + 2 * np.exp(-3 * gamma)) * (0.4 + 0.6 * np.power(np.clip(np.cos(zenith * 0.8), 0, 1), 0.3))
    t = np.clip(zenith / (np.pi / 2), 0, 1)[..., None]
    blue = np.array([0.25, 0.45, 1.0], np.float32)
    pale = np.array([0.85, 0.9, 1.0], np.float32)
    sky = lum[..., None] * ((1 - t) * blue + t * pale)
    # clouds: brighter, greyer patches
    cover = rng.uniform(0.0, 0.6)
    cloud = np.clip((_noise(rng, h, w) - (1 - cover)) * 4, 0, 1)[..., None]
    sky = sky * (1 - cloud) + cloud * lum[..., None] * rng.uniform(1.0, 2.0) * np.array([0.9, 0.9, 0.92], np.float32)
    # sun: a disc SUN_RATIO times the sky there, plus a halo
    ratio = float(np.exp(rng.uniform(*np.log(SUN_RATIO))))
    radius = 0.0047 * 2  # about 0.27 degrees doubled, so it is visible at small sizes
    radius = max(radius, 1.5 / h * np.pi / 2 * 1.2)
    sun_level = ratio * base * 3.0
    sky = sky + (sun_level * (gamma < radius))[..., None] * np.array([1.0, 0.95, 0.85], np.float32)
    sky = sky + (base * 20 * np.exp(-gamma / 0.03))[..., None]
    # scene: terrain, then buildings and trees over it
    texture = _noise(rng, h, w, octaves=6, base=16)[..., None]
    ground = (0.03 + 0.12 * texture) * np.array([0.35, 0.4, 0.2], np.float32) * base
    scene = ground.astype(np.float32)
    for x0, x1, roof in buildings:
        grey = rng.uniform(0.05, 0.3) * base
        y0 = max(0, int(np.floor(roof)))
        scene[y0:, x0:x1] = grey
        win = (((yy[y0:, x0:x1] // 4) % 3 == 1) & ((xx[y0:, x0:x1] // 3) % 3 == 1)) & (rng.random() < 0.5)
        scene[y0:, x0:x1][win] = 2.0 * base
    for cx, cy, r, trunk_base in trees:
        crown = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        scene[crown] = np.array([0.02, 0.06, 0.02], np.float32) * base
        trunk = (np.abs(xx - cx) < max(1.0, 0.15 * r)) & (yy >= cy) & (yy <= trunk_base + 1)
        scene[trunk] = np.array([0.06, 0.04, 0.02], np.float32) * base
    image = np.where(sky_mask[..., None], sky, scene).astype(np.float32)
    exposure = np.float32(2.0 ** rng.uniform(-2, 2))
    return image * exposure


def make_sample(seed: int, index: int, size: tuple[int, int]) -> tuple[np.ndarray, list[float], list[list[float]], np.ndarray]:
    """One panorama: ``(image (H, W, 3) float32, sky polygon, object polygons, sky mask (H, W) bool)``."""
    from isplab.workflows.sky.data import rasterize

    w, h = size
    rng = np.random.default_rng([seed, index])
    top, buildings, trees = _skyline(rng, w, h)
    sky_poly = _sky_polygon(top, w)
    objects = _floating_objects(rng, top, w, h)
    mask = rasterize([sky_poly], objects, h, w)
    image = _render(rng, w, h, mask, buildings, trees)
    return image, sky_poly, objects, mask


def _bbox(poly: list[float]) -> list[float]:
    xs, ys = poly[0::2], poly[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def synthesize(out: str | Path, count: int, *, size: tuple[int, int] = (512, 256), seed: int = 0, overwrite: bool = False) -> SynthResult:
    """Write ``count`` panoramas and ``result.json`` under ``out`` (see the module docstring).

    Raises:
        IsplabError: ``out`` holds a previous dataset (without ``overwrite``) or cannot be written,
            or ``count`` < 1.
    """
    if count < 1:
        raise IsplabError(f"count must be at least 1, got {count}")
    out = prepare_output_dir(out, overwrite=overwrite, names=(ANNOTATIONS_FILE, IMAGES_DIR), what="dataset folder")
    for name in (IMAGES_DIR, ANNOTATIONS_FILE):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (out / IMAGES_DIR).mkdir()
    from pycocotools import mask as mask_utils

    images, annotations, paths = [], [], []
    for i in range(count):
        image, sky_poly, objects, _ = make_sample(seed, i, size)
        name = f"sky_{i:05d}.exr"
        paths.append(write_image(out / IMAGES_DIR / name, image))
        w, h = size
        images.append({"width": w, "height": h, "id": i, "file_name": f"{IMAGES_DIR}/{name}"})
        for category, poly in [(SKY, sky_poly)] + [(OBJECT, p) for p in objects]:
            rle = mask_utils.frPyObjects([poly], h, w)
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": i,
                    "category_id": category,
                    "segmentation": [poly],
                    "bbox": [round(v, 2) for v in _bbox(poly)],
                    "ignore": 0,
                    "iscrowd": 0,
                    "area": float(mask_utils.area(rle).sum()),
                }
            )
    coco = {
        "images": images,
        "categories": CATEGORIES,
        "annotations": annotations,
        "info": {"description": "isplab sky synth", "seed": seed, "version": "1.0"},
    }
    path = out / ANNOTATIONS_FILE
    path.write_text(json.dumps(coco) + "\n")
    return SynthResult(paths, path)
