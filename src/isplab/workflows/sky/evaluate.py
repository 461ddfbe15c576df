"""Numbers on held-out images: IoU, boundary F-score, a per-image table and overlays.

- **IoU** of an image: ``|pred & gt| / |pred | gt|`` with ``pred = alpha >= 0.5`` (1 when both are
  empty); the dataset IoU pools intersections and unions over all images.
- **Boundary F-score** (as DAVIS's F measure): the boundary of a mask is its pixels with a 4-neighbour
  outside it; precision is the share of predicted boundary pixels within ``tolerance`` pixels
  (Euclidean) of a ground-truth boundary pixel, recall the converse, F their harmonic mean (1 when
  both masks have no boundary, 0 when only one has).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir
from isplab.workflows.sky.predict import TileOptions, overlay, predict_alpha, refine_alpha

REPORT_FILES = ("metrics.json", "per_image.csv", "overlays")


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as inside)."""
    m = mask.astype(np.uint8)
    eroded = cv2.erode(m, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8), borderType=cv2.BORDER_REPLICATE)
    return (m - eroded).astype(bool)


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> float:
    """Boundary F-score of two bool masks (see the module docstring)."""
    bp, bg = boundary(pred), boundary(gt)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0

    def distance_to(b: np.ndarray) -> np.ndarray:
        return cv2.distanceTransform((~b).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)

    precision = float((distance_to(bg)[bp] <= tolerance).mean())
    recall = float((distance_to(bp)[bg] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass
class EvalResult:
    iou: float
    boundary_f: float
    rows: list[dict]
    folder: Path


def evaluate(
    model,
    samples,
    out_dir: str | Path,
    options: TileOptions = TileOptions(),
    *,
    tolerance: float = 2.0,
    device: str = "cpu",
    overwrite: bool = False,
    refine=None,
) -> EvalResult:
    """Predict every sample, write ``metrics.json``, ``per_image.csv`` and ``overlays/<name>.png``.

    Raises:
        IsplabError: no samples, an output folder holding a previous report (without
            ``overwrite``), or an unreadable sample.
    """
    from isplab.io.image import write_image
    from isplab.workflows.sky.hdr import tone_map

    if not samples:
        raise IsplabError("no images to evaluate")
    out_dir = prepare_output_dir(out_dir, overwrite=overwrite, names=REPORT_FILES, what="report folder")
    (out_dir / "overlays").mkdir(exist_ok=True)
    rows, inter, union = [], 0, 0
    for sample in samples:
        image, gt = sample.load()
        alpha = predict_alpha(model, image.pixels, image.hdr, options, device=device)
        if refine is not None:
            alpha = refine_alpha(alpha, image.pixels, image.hdr, refine)
        pred = alpha >= 0.5
        inter += int(np.logical_and(pred, gt).sum())
        union += int(np.logical_or(pred, gt).sum())
        rows.append({"image": sample.name, "iou": round(iou(pred, gt), 6), "boundary_f": round(boundary_f(pred, gt, tolerance), 6),
                     "sky_fraction": round(float(gt.mean()), 6)})
        write_image(out_dir / "overlays" / f"{sample.name}.png", overlay(tone_map(image.pixels, image.hdr), alpha), overwrite=True)
    pooled = 1.0 if union == 0 else inter / union
    mean_f = float(np.mean([r["boundary_f"] for r in rows]))
    with (out_dir / "per_image.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metrics = {"images": len(rows), "iou": pooled, "boundary_f": mean_f, "tolerance_px": tolerance,
               "refine": None if refine is None else {"radius": refine.radius, "eps": refine.eps},
               "tile": options.tile, "overlap": options.overlap, "margin": options.margin}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return EvalResult(pooled, mean_f, rows, out_dir)
