"""Evaluate AWB models: per-image errors, summaries, grouped cross-validation and a report.

Errors are in mireds, ``|1e6 / predicted - 1e6 / clip(true, 2800, 7600)|``
(:func:`~isplab.workflows.awb.dataset.mired_error`), the measure the reference tools use; the
kelvin and percent errors are taken against the same clamped truth. Every result carries the
camera's own estimate (the ``camera_temp`` label) scored the same way, as the baseline a model
has to beat.

In-sample numbers (a model scored on its own training images, as the reference workflow reports
them) are optimistic; :func:`cross_validate` gives the honest held-out number by training a
fresh model per fold with each scene (``<user>,<id>``) in exactly one fold. Typical use::

    dataset = load_dataset("pisp-dataset", "pisp")
    result = cross_validate(dataset, 5, TrainConfig())
    print(result.model.mean, result.camera.mean)
    write_report(result, "runs/awb-cv")
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from isplab.engine import Report
from isplab.errors import IsplabError
from isplab.workflows.awb.constants import TEMPERATURE_RANGE
from isplab.workflows.awb.dataset import AWBDataset, grouped_kfold, mired_error
from isplab.workflows.awb.predict import predict
from isplab.workflows.awb.train import TrainConfig, train_model

#: Rows of the report's worst-images table.
WORST_SHOWN = 20
#: What :func:`write_report` writes into its folder (checked before work by the CLI).
REPORT_FILES = ("report.html", "errors.csv", "error_histogram.png", "predicted_vs_true.png")


@dataclass(frozen=True)
class ErrorSummary:
    """Statistics of a set of per-image errors (mireds); ``p95`` is numpy's linear percentile."""

    worst: float
    mean: float
    median: float
    p95: float
    count: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarise(errors: Sequence[float] | np.ndarray) -> ErrorSummary:
    """Worst, mean, median, 95th percentile and count of ``errors`` ``(N,)``.

    Raises:
        IsplabError: ``errors`` is empty or not finite.
    """
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        raise IsplabError("cannot summarise an empty set of errors")
    if not np.isfinite(errors).all():
        raise IsplabError(f"errors contain NaN or infinite values ({int((~np.isfinite(errors)).sum())} of {errors.size})")
    return ErrorSummary(
        worst=float(errors.max()),
        mean=float(errors.mean()),
        median=float(np.median(errors)),
        p95=float(np.percentile(errors, 95)),
        count=int(errors.size),
    )


@dataclass(frozen=True)
class ImageError:
    """One image's prediction and errors. ``fold`` is its test fold in cross-validation, else ``None``."""

    file: str
    predicted_temp: float
    true_temp: float
    camera_temp: float
    error_mired: float
    error_kelvin: float
    error_percent: float
    camera_error_mired: float
    fold: int | None = None


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Per-image errors sorted worst first, and summaries for the model and the camera baseline.

    Attributes:
        rows: one :class:`ImageError` per image, largest ``error_mired`` first.
        model: summary of the model's mired errors.
        camera: summary of the camera estimate's mired errors on the same images.
        predicted: ``(N,)`` predicted kelvin in dataset order (out-of-fold for cross-validation).
        target: the dataset's target.
    """

    rows: tuple[ImageError, ...]
    model: ErrorSummary
    camera: ErrorSummary
    predicted: np.ndarray
    target: str

    def write_csv(self, path: str | PathLike[str]) -> Path:
        """Write :attr:`rows` (worst first) as CSV with a header; returns ``path``."""
        path = Path(path)
        names = [f.name for f in fields(ImageError)]
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(names)
            writer.writerows([getattr(row, name) for name in names] for row in self.rows)
        return path


@dataclass(frozen=True)
class FoldResult:
    """One cross-validation fold: its size, its held-out summaries and its training time."""

    index: int
    train_count: int
    test_count: int
    model: ErrorSummary
    camera: ErrorSummary
    train_seconds: float


@dataclass(frozen=True, eq=False)
class CVResult(EvaluationResult):
    """An :class:`EvaluationResult` of out-of-fold predictions plus per-fold results."""

    folds: tuple[FoldResult, ...] = ()


def evaluate_predictions(
    dataset: AWBDataset, predicted: np.ndarray, folds: np.ndarray | None = None
) -> EvaluationResult:
    """Score predicted temperatures ``(N,)`` (kelvin, dataset order) against the dataset's labels.

    ``folds`` ``(N,)`` optionally gives each image's test fold, copied into the rows.

    Raises:
        IsplabError: ``predicted`` has the wrong length or is not positive and finite.
    """
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    if predicted.shape != (len(dataset),):
        raise IsplabError(f"got {predicted.size} predictions for a dataset of {len(dataset)} images")
    if not (np.isfinite(predicted).all() and (predicted > 0).all()):
        raise IsplabError("predicted temperatures must be positive and finite (kelvin)")
    true = dataset.true_temp.astype(np.float64)
    errors = mired_error(predicted, true)
    camera_errors = mired_error(dataset.camera_temp, true)
    # Kelvin and percent errors use the same clamped truth as the mired error, so all three agree on ranking.
    clamped = np.clip(true, *TEMPERATURE_RANGE)
    kelvin = np.abs(predicted - clamped)
    rows = [
        ImageError(
            file=sample.path.name,
            predicted_temp=float(predicted[i]),
            true_temp=float(true[i]),
            camera_temp=float(dataset.camera_temp[i]),
            error_mired=float(errors[i]),
            error_kelvin=float(kelvin[i]),
            error_percent=float(100.0 * kelvin[i] / clamped[i]),
            camera_error_mired=float(camera_errors[i]),
            fold=None if folds is None else int(folds[i]),
        )
        for i, sample in enumerate(dataset.samples)
    ]
    rows.sort(key=lambda row: row.error_mired, reverse=True)
    return EvaluationResult(
        rows=tuple(rows),
        model=summarise(errors),
        camera=summarise(camera_errors),
        predicted=predicted,
        target=dataset.target,
    )


def evaluate_model(model, dataset: AWBDataset, batch_size: int = 256) -> EvaluationResult:
    """Run an AWB model over ``dataset`` and score it (see :func:`evaluate_predictions`).

    ``model`` is anything :func:`isplab.workflows.awb.predict.predict` runs: an ``nn.Module``, a
    ``.pt`` or ``.tflite`` file, a loaded TFLite runner or a predictor.
    """
    sensors = [sample.sensor for sample in dataset.samples]  # used by models with a sensor embedding
    return evaluate_predictions(dataset, predict(model, dataset.images, dataset.lux, sensors=sensors, batch_size=batch_size))


def evaluate_tflite(path: str | PathLike[str], dataset: AWBDataset) -> EvaluationResult:
    """Run a ``.tflite`` AWB model over ``dataset`` (batch 1, as libcamera does) and score it."""
    return evaluate_model(Path(path), dataset)


def cross_validate(
    dataset: AWBDataset,
    k: int,
    config: TrainConfig,
    seed: int = 0,
    *,
    weights: np.ndarray | None = None,
    progress: bool = False,
    on_fold: Callable[[FoldResult, float], None] | None = None,
) -> CVResult:
    """Grouped ``k``-fold cross-validation: a fresh model per fold, scored on the held-out fold.

    Folds come from :func:`~isplab.workflows.awb.dataset.grouped_kfold` (``seed``), so a scene's
    images are never split between training and test. Every image gets exactly one out-of-fold
    prediction; the result's summaries are over all of them.

    Args:
        dataset: the images to split.
        k: number of folds (2 <= k <= number of scenes).
        config: training configuration for every fold.
        seed: fold assignment seed (training randomness is ``config.seed``).
        weights: optional ``(N,)`` per-image repeat counts for training (duplicates file).
        progress: show the trainer's progress bars.
        on_fold: called after each fold with its :class:`FoldResult` and the mean mired error of
            all images held out so far (after the last fold: the result's ``model.mean``); what it
            raises (e.g. ``optuna.TrialPruned`` to stop a bad configuration early) propagates.
    """
    if weights is not None and len(weights) != len(dataset):
        raise IsplabError(f"got {len(weights)} weights for a dataset of {len(dataset)} images")
    predicted = np.full(len(dataset), np.nan)
    fold_of = np.full(len(dataset), -1, dtype=np.int64)
    timings = []
    splits = grouped_kfold(dataset.samples, k, seed=seed)
    for index, (train_idx, test_idx) in enumerate(splits):
        start = time.perf_counter()
        fold_weights = None if weights is None else np.asarray(weights)[train_idx]
        # A sensor embedding knows every sensor of the dataset (one absent from a fold's training keeps the identity).
        model = train_model(dataset.subset(train_idx), config, weights=fold_weights, progress=progress,
                            sensors=sorted({s.sensor for s in dataset.samples}))
        timings.append(time.perf_counter() - start)
        predicted[test_idx] = predict(model, dataset.images[test_idx], dataset.lux[test_idx],
                                      sensors=[dataset.samples[i].sensor for i in test_idx])
        fold_of[test_idx] = index
        if on_fold is not None:
            done = fold_of >= 0
            on_fold(
                _fold_result(dataset, predicted, index, train_idx, test_idx, timings[index]),
                float(mired_error(predicted[done], dataset.true_temp[done]).mean()),
            )
    result = evaluate_predictions(dataset, predicted, fold_of)
    folds = tuple(
        _fold_result(dataset, predicted, index, train_idx, test_idx, timings[index])
        for index, (train_idx, test_idx) in enumerate(splits)
    )
    return CVResult(
        rows=result.rows,
        model=result.model,
        camera=result.camera,
        predicted=result.predicted,
        target=result.target,
        folds=folds,
    )


def _fold_result(
    dataset: AWBDataset, predicted: np.ndarray, index: int, train_idx: np.ndarray, test_idx: np.ndarray, seconds: float
) -> FoldResult:
    true = dataset.true_temp[test_idx]
    return FoldResult(
        index=index,
        train_count=len(train_idx),
        test_count=len(test_idx),
        model=summarise(mired_error(predicted[test_idx], true)),
        camera=summarise(mired_error(dataset.camera_temp[test_idx], true)),
        train_seconds=seconds,
    )


def write_report(result: EvaluationResult, out_dir: str | PathLike[str], title: str | None = None) -> Path:
    """Write an HTML report and ``errors.csv`` into ``out_dir``; returns the HTML file's path.

    The report holds the model-vs-camera summary, the per-fold table (cross-validation), the
    :data:`WORST_SHOWN` worst images, a histogram of mired errors and a predicted-vs-true plot.
    """
    is_cv = isinstance(result, CVResult)
    if title is None:
        kind = f"{len(result.folds)}-fold grouped cross-validation" if is_cv else "evaluation"
        title = f"AWB {kind} ({result.target})"
    out_dir = Path(out_dir)
    report = Report(title, out_dir)
    result.write_csv(out_dir / "errors.csv")

    report.add_heading("Summary")
    report.add_text(
        ("Out-of-fold predictions: each image scored by a model that never saw its scene. "
         if is_cv else "")
        + f"Errors in mireds against the label clamped to {TEMPERATURE_RANGE[0]:.0f}..{TEMPERATURE_RANGE[1]:.0f} K; "
        "'camera' is the camera's own AWB estimate. Per-image errors: errors.csv."
    )
    report.add_table(
        [
            {"estimate": name, "mean": s.mean, "median": s.median, "p95": s.p95, "worst": s.worst, "images": s.count}
            for name, s in (("model", result.model), ("camera", result.camera))
        ],
        caption="Error (mireds)",
        float_format="{:.2f}",
    )
    if is_cv:
        report.add_table(
            [
                {
                    "fold": fold.index,
                    "train images": fold.train_count,
                    "test images": fold.test_count,
                    "mean": fold.model.mean,
                    "median": fold.model.median,
                    "p95": fold.model.p95,
                    "worst": fold.model.worst,
                    "camera mean": fold.camera.mean,
                    "training (s)": fold.train_seconds,
                }
                for fold in result.folds
            ],
            caption="Per fold (mireds, held-out images)",
            float_format="{:.2f}",
        )

    report.add_heading("Plots")
    report.add_figure(_error_histogram(result), "Distribution of errors (mireds)", name="error_histogram")
    report.add_figure(_predicted_vs_true(result), "Predicted vs true temperature", name="predicted_vs_true")

    report.add_heading(f"Worst {min(WORST_SHOWN, len(result.rows))} images")
    report.add_table(
        [_row_cells(row, is_cv) for row in result.rows[:WORST_SHOWN]],
        float_format="{:.1f}",
    )
    return report.write()


def _row_cells(row: ImageError, with_fold: bool) -> dict[str, object]:
    cells = {
        "file": row.file,
        "predicted (K)": row.predicted_temp,
        "true (K)": row.true_temp,
        "camera (K)": row.camera_temp,
        "error (mireds)": row.error_mired,
        "error (K)": row.error_kelvin,
        "error (%)": row.error_percent,
        "camera error (mireds)": row.camera_error_mired,
    }
    if with_fold:
        cells["fold"] = row.fold
    return cells


def _error_histogram(result: EvaluationResult) -> Figure:
    model = np.array([row.error_mired for row in result.rows])
    camera = np.array([row.camera_error_mired for row in result.rows])
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = figure.add_subplot()
    bins = np.linspace(0.0, max(model.max(), camera.max(), 1.0), 41)
    ax.hist(camera, bins=bins, color="tab:gray", alpha=0.5, label=f"camera (mean {result.camera.mean:.1f})")
    ax.hist(model, bins=bins, color="tab:blue", alpha=0.7, label=f"model (mean {result.model.mean:.1f})")
    ax.axvline(result.model.p95, color="tab:blue", linestyle="--", linewidth=1, label=f"model p95 {result.model.p95:.1f}")
    ax.set_xlabel("error (mireds)")
    ax.set_ylabel("images")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def _predicted_vs_true(result: EvaluationResult) -> Figure:
    true = np.array([row.true_temp for row in result.rows])
    figure = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = figure.add_subplot()
    ax.scatter(true, [row.camera_temp for row in result.rows], s=8, color="tab:gray", alpha=0.5, label="camera")
    ax.scatter(true, [row.predicted_temp for row in result.rows], s=10, color="tab:blue", alpha=0.8, label="model")
    values = [true, [row.predicted_temp for row in result.rows], [row.camera_temp for row in result.rows]]
    low, high = float(np.min([np.min(v) for v in values])), float(np.max([np.max(v) for v in values]))
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="identity")
    # Errors are measured against labels clamped to this range, so predictions beyond it are not needed.
    for bound in TEMPERATURE_RANGE:
        ax.axvline(bound, color="tab:red", linestyle=":", linewidth=1)
    ax.set_xlabel(f"true temperature (K); dotted: error clamp {TEMPERATURE_RANGE[0]:.0f}..{TEMPERATURE_RANGE[1]:.0f} K")
    ax.set_ylabel("estimated temperature (K)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure
