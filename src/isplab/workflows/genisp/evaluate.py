"""COCO mAP of the frozen detector on GenISP's output and on the baselines it is compared with.

- :func:`compute_map` / :func:`evaluate`: torchmetrics ``MeanAveragePrecision`` (COCO AP over IoU
  0.50:0.95, AP50, AP75 and AP per class). A **new metric object per evaluation**: the seed
  reproduction called ``compute()`` after every batch of one never-reset metric and averaged the
  results, which is not COCO AP.
- The four inputs of ``isplab genisp test`` and ``benchmarks/genisp.py`` (:data:`SOURCES`), all at
  the same size, from the same raw (or its normal-light render), with the same frozen detector:

  ``raw``        packed raw: camera RGB, black/white-level normalised, greens averaged, nothing else;
  ``classical``  isplab's classical ISP (:func:`isplab.isp.pipeline.render`) with the raw's as-shot
                 white balance and colour matrix, after auto exposure (:func:`auto_exposure_gain`);
  ``genisp``     GenISP applied to the camera-XYZ input (:func:`isplab.workflows.genisp.preprocess.raw_to_xyz`);
  ``normal``     the normal-light sRGB render of the scene (the detector's own domain; an upper bound).
- :func:`draw_detections` writes an image with the ground truth (green) and predictions (red).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from isplab.errors import IsplabError
from isplab.io.raw import RawImage, read_raw
from isplab.isp import bayer
from isplab.workflows.genisp.data import (
    DetectionDataset,
    _clip_and_drop,
    _frame_transform,
)
from isplab.workflows.genisp.preprocess import raw_to_xyz, resize_keep_aspect

SOURCES = ("raw", "classical", "genisp", "normal")
SOURCE_TITLES = {
    "raw": "(a) packed raw",
    "classical": "(b) classical ISP",
    "genisp": "(c) GenISP",
    "normal": "(d) normal light (upper bound)",
}
#: Auto exposure: the white-balanced mean green is scaled to this linear value (mid grey).
EXPOSURE_TARGET = 0.18
MAX_EXPOSURE_GAIN = 1024.0


def new_metric() -> MeanAveragePrecision:
    """A fresh COCO mAP metric (boxes xyxy in pixels, per-class AP on; COCO's 100 detections per
    image, the highest scoring, as torchvision detectors return up to 300)."""
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True)
    metric.warn_on_many_detections = False
    return metric


def summarise(result: dict, class_names: dict[int, str] | None = None) -> dict[str, Any]:
    """``MeanAveragePrecision.compute()`` as plain numbers: ``AP``, ``AP50``, ``AP75`` and
    ``per_class`` (class name or id -> AP; -1 where a class had no ground truth)."""
    classes = [int(c) for c in torch.as_tensor(result["classes"]).flatten().tolist()]
    per_class = torch.as_tensor(result["map_per_class"]).flatten().tolist()
    names = class_names or {}
    return {
        "AP": float(result["map"]),
        "AP50": float(result["map_50"]),
        "AP75": float(result["map_75"]),
        "per_class": {str(names.get(c, c)): float(v) for c, v in zip(classes, per_class)},
    }


def _plain_target(target: dict) -> dict:
    return {"boxes": target["boxes"].detach().float().cpu().reshape(-1, 4), "labels": target["labels"].detach().long().cpu()}


def _plain_prediction(prediction: dict) -> dict:
    return {k: prediction[k].detach().cpu() for k in ("boxes", "scores", "labels")}


def compute_map(predictions: Sequence[dict], targets: Sequence[dict], class_names: dict[int, str] | None = None) -> dict[str, Any]:
    """COCO AP of ``predictions`` (``boxes``, ``scores``, ``labels``) against ``targets``
    (``boxes``, ``labels``), one entry per image, with a fresh metric (see :func:`summarise`)."""
    if len(predictions) != len(targets):
        raise IsplabError(f"{len(predictions)} predictions for {len(targets)} images")
    metric = new_metric()
    metric.update([_plain_prediction(p) for p in predictions], [_plain_target(t) for t in targets])
    return summarise(metric.compute(), class_names)


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: the numbers and the first ``keep`` images with their boxes."""

    metrics: dict[str, Any]
    images: list[torch.Tensor] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)


def evaluate(
    detector: nn.Module,
    images_fn: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None,
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    class_names: dict[int, str] | None = None,
    keep: int = 0,
) -> Evaluation:
    """COCO AP of ``detector`` on ``images_fn(images)`` for every ``(images, targets)`` batch of ``loader``.

    A new metric is made here, updated with every batch and computed once at the end.

    Args:
        images_fn: the input transform being compared (e.g. GenISP); ``None`` feeds the images as they are.
        loader: batches of (list or ``(B, 3, H, W)`` tensor of images, list of target dicts).
        keep: how many images (as given to the detector, on the CPU) to return with their
            predictions for drawing.
    """
    metric = new_metric()
    result = Evaluation({})
    was_training = detector.training
    detector.eval()
    try:
        with torch.no_grad():
            for images, targets in loader:
                images = [im.to(device) for im in images]
                inputs = images_fn(images) if images_fn is not None else images
                predictions = [_plain_prediction(p) for p in detector(list(inputs))]
                plain = [_plain_target(t) for t in targets]
                metric.update(predictions, plain)
                for inp, pred, target in zip(inputs, predictions, plain):
                    if len(result.images) >= keep:
                        break
                    result.images.append(inp.detach().cpu())
                    result.predictions.append(pred)
                    result.targets.append(target)
    finally:
        detector.train(was_training)
    result.metrics = summarise(metric.compute(), class_names)
    return result


# --- baseline inputs ---------------------------------------------------------------------------


def normalised_planes(raw: RawImage) -> np.ndarray:
    """``(4, H/2, W/2)`` float32 R, Gr, Gb, B planes: black level subtracted, divided by
    ``white_level - black`` (the sensor's white level, not the image maximum)."""
    planes = bayer.pack(raw.mosaic, raw.cfa_pattern).astype(np.float32)
    black = raw.black_level.astype(np.float32)[:, None, None]
    return (planes - black) / (np.float32(raw.white_level) - black)


def packed_raw(raw: RawImage) -> np.ndarray:
    """Baseline (a): ``(H/2, W/2, 3)`` camera RGB, greens averaged, no other processing."""
    r, gr, gb, b = normalised_planes(raw)
    return np.stack([r, (gr + gb) * np.float32(0.5), b], axis=-1)


def auto_exposure_gain(raw: RawImage, target: float = EXPOSURE_TARGET) -> float:
    """The gain that brings the white-balanced mean green of ``raw`` to ``target`` (at most
    :data:`MAX_EXPOSURE_GAIN`, at least 1: a bright frame is left alone)."""
    planes = normalised_planes(raw)
    green = float(np.clip(0.5 * (planes[1] + planes[2]), 0, None).mean())
    return float(np.clip(target / max(green, 1e-8), 1.0, MAX_EXPOSURE_GAIN))


def classical_isp(raw: RawImage, target: float = EXPOSURE_TARGET) -> np.ndarray:
    """Baseline (b): isplab's classical ISP at half resolution, ``(H/2, W/2, 3)`` sRGB in [0, 1].

    Auto exposure (:func:`auto_exposure_gain`), as-shot white balance, demosaic, the raw's colour
    matrix to linear sRGB (:func:`isplab.isp.color.camera_to_srgb_matrix`), sRGB gamma and tone curve.

    Raises:
        IsplabError: the raw has no colour matrix.
    """
    from isplab.isp.color import camera_to_srgb_matrix
    from isplab.isp.pipeline import render

    if raw.color_matrix is None:
        raise IsplabError(f"{raw.path or 'the raw frame'} has no colour matrix: the classical ISP needs one")
    gain = auto_exposure_gain(raw, target)
    planes = normalised_planes(raw) * np.float32(gain)
    mosaic = torch.from_numpy(bayer.unpack(planes, raw.cfa_pattern))[None, None]
    srgb = render(mosaic, raw.cfa_pattern, torch.from_numpy(raw.wb_gains).float(),
                  camera_to_srgb_matrix(raw.color_matrix).float())[0]
    full = srgb.permute(1, 2, 0).numpy()
    h, w = full.shape[0] // 2, full.shape[1] // 2
    return cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)


def genisp_input(raw: RawImage) -> np.ndarray:
    """Input of (c): camera XYZ at half resolution (:func:`~isplab.workflows.genisp.preprocess.raw_to_xyz`)."""
    return raw_to_xyz(raw)


RAW_SOURCES: dict[str, Callable[[RawImage], np.ndarray]] = {"raw": packed_raw, "classical": classical_isp, "genisp": genisp_input}


# --- drawing and writing -----------------------------------------------------------------------


def display(image: torch.Tensor) -> torch.Tensor:
    """An image for looking at: scaled so its 99th percentile is 1, clipped to [0, 1]."""
    image = image.detach().float().cpu()
    top = float(torch.quantile(image.flatten()[:: max(1, image.numel() // 100_000)], 0.99))
    return (image / max(top, 1e-6)).clamp(0, 1)


def draw_detections(path: str | Path, image: torch.Tensor, prediction: dict, target: dict | None = None, *,
                    class_names: dict[int, str] | None = None, score_threshold: float = 0.3) -> Path:
    """Write ``image`` (``(3, H, W)`` float) as PNG with ``target`` boxes in green and predicted
    boxes scoring at least ``score_threshold`` in red, labelled with class and score."""
    from torchvision.utils import draw_bounding_boxes

    from isplab.engine.report import save_png

    names = class_names or {}
    canvas = (display(image) * 255).round().to(torch.uint8)
    if target is not None and len(target["boxes"]):
        canvas = draw_bounding_boxes(canvas, target["boxes"].float(), colors="lime", width=1)
    keep = prediction["scores"] >= score_threshold
    if keep.any():
        labels = [f"{names.get(int(c), int(c))} {float(s):.2f}" for c, s in zip(prediction["labels"][keep], prediction["scores"][keep])]
        canvas = draw_bounding_boxes(canvas, prediction["boxes"][keep].float(), labels=labels, colors="red", width=1)
    return save_png(path, canvas.permute(1, 2, 0).numpy())


def format_table(results: dict[str, dict[str, Any]], title: str = "") -> str:
    """A plain-text AP table: one row per source, AP / AP50 / AP75 in percent."""
    lines = [title] if title else []
    lines.append(f"{'input':34s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s}")
    for source, metrics in results.items():
        lines.append(f"{SOURCE_TITLES.get(source, source):34s} {100 * metrics['AP']:6.1f} {100 * metrics['AP50']:6.1f} {100 * metrics['AP75']:6.1f}")
    return "\n".join(lines)


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def baseline_dataset(coco, source: str, *, short: int, long: int, cache_items: int = 0):
    """The (un-augmented) dataset of ``coco`` as ``source`` sees it.

    ``"genisp"``: GenISP's XYZ input (apply the model with :func:`~isplab.workflows.genisp.predict.apply_genisp`);
    ``"raw"``/``"classical"``: the raws through :func:`packed_raw` / :func:`classical_isp`;
    ``"normal"``: ``coco`` must list the normal-light renders. Same sizes and boxes for all.
    """
    if source not in SOURCES:
        raise IsplabError(f"unknown input {source!r}: expected one of {', '.join(SOURCES)}")
    if source in ("genisp", "normal"):
        return DetectionDataset(coco, short=short, long=long, kind="raw" if source == "genisp" else "rgb", cache_items=cache_items)
    return _RawBaselineDataset(coco, RAW_SOURCES[source], short=short, long=long, kind="raw", cache_items=cache_items)


class _RawBaselineDataset(DetectionDataset):
    """:class:`~isplab.workflows.genisp.data.DetectionDataset` of raws rendered by ``image_fn``."""

    def __init__(self, coco, image_fn, **kwargs) -> None:
        super().__init__(coco, **kwargs)
        self.image_fn = image_fn

    def load(self, index: int):
        entry = self.coco.images[index]
        raw = read_raw(entry.path)
        image, _ = resize_keep_aspect(self.image_fn(raw), self.short, self.long)
        sx, sy, dx, dy = _frame_transform(entry, raw.mosaic.shape, image.shape[:2])
        boxes = (entry.boxes + [dx, dy, dx, dy]) * [sx, sy, sx, sy]
        boxes, labels = _clip_and_drop(boxes, entry.labels, image.shape[1], image.shape[0], 1e-3)
        return image, boxes, labels


# --- isplab genisp test ------------------------------------------------------------------------


@dataclass
class InputsReport:
    """What :func:`evaluate_inputs` wrote: ``metrics`` (source -> AP numbers), the folder, the images."""

    folder: Path
    metrics: dict[str, dict[str, Any]]
    images: list[Path] = field(default_factory=list)


def evaluate_inputs(
    coco,
    model: nn.Module | None,
    detector: nn.Module,
    out_dir: str | Path,
    *,
    sources: Sequence[str] = SOURCES,
    normal_coco=None,
    short: int,
    long: int,
    batch_size: int = 4,
    device: str = "cpu",
    tile: int = 0,
    keep: int = 4,
    overwrite: bool = False,
    title: str = "",
) -> InputsReport:
    """AP of ``detector`` on each of ``sources`` for the raws of ``coco`` (``normal`` needs
    ``normal_coco``, the same scenes' normal-light renders; ``genisp`` needs ``model``).

    Writes ``out_dir/metrics.json`` (``{source: {"AP", "AP50", "AP75", "per_class"}}`` plus the
    settings), ``out_dir/table.txt`` (:func:`format_table`) and, for the first ``keep`` images of
    each source, ``out_dir/images/<source>_<image id>.png`` with ground truth (green) and
    predictions (red). Existing outputs are refused before any work unless ``overwrite``.
    """
    from torch.utils.data import DataLoader

    from isplab.io.paths import prepare_output_dir
    from isplab.workflows.genisp.data import detection_collate
    from isplab.workflows.genisp.predict import apply_genisp

    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise IsplabError(f"unknown input {unknown[0]!r}: expected one of {', '.join(SOURCES)}")
    if "genisp" in sources and model is None:
        raise IsplabError("the genisp input needs a GenISP model")
    if "normal" in sources and normal_coco is None:
        raise IsplabError("the normal input needs the normal-light annotations of the same images")
    out_dir = Path(out_dir)
    prepare_output_dir(out_dir, overwrite=overwrite, names=["metrics.json", "table.txt", "images"], what="test report folder")
    names = dict(coco.categories)
    detector = detector.to(device)
    if model is not None:
        model = model.to(device).eval()
    metrics: dict[str, dict[str, Any]] = {}
    written: list[Path] = []
    for source in sources:
        data = baseline_dataset(normal_coco if source == "normal" else coco, source, short=short, long=long)
        loader = DataLoader(data, batch_size, collate_fn=detection_collate)
        fn = (lambda images: [apply_genisp(model, im, tile=tile) for im in images]) if source == "genisp" else None
        result = evaluate(detector, fn, loader, device=device, class_names=names, keep=keep)
        metrics[source] = result.metrics
        for i, (image, pred, target) in enumerate(zip(result.images, result.predictions, result.targets)):
            image_id = data.coco.images[i].file_id
            written.append(draw_detections(out_dir / "images" / f"{source}_{image_id}.png", image, pred, target, class_names=names))
    table = format_table(metrics, title)
    (out_dir / "table.txt").write_text(table + "\n")
    write_json(out_dir / "metrics.json", {"inputs": metrics, "images": len(coco), "annotations": str(coco.ann_path),
                                          "short": short, "long": long})
    return InputsReport(out_dir, metrics, written)
