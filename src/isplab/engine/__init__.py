"""Training engine shared by all workflows: Lightning trainer setup, run folders, Ctrl-C, metrics, losses, reports."""

from __future__ import annotations

from isplab.engine.losses import charbonnier, ssim_loss
from isplab.engine.metrics import psnr, psnr_pooled, ssim
from isplab.engine.report import Report, plot_curves, save_png
from isplab.engine.run import (
    RunFolder,
    SaveOnInterrupt,
    TrainingInterrupted,
    fit_interruptible,
    is_global_zero,
    prepare_run_dir,
    saved_progress,
)
from isplab.engine.trainer import (
    build_trainer,
    configure_optimizer,
    fit,
    iteration_budget,
    metrics_csv_files,
    resolve_accelerator,
    resolve_checkpoint,
)

__all__ = [
    "Report",
    "RunFolder",
    "SaveOnInterrupt",
    "TrainingInterrupted",
    "build_trainer",
    "charbonnier",
    "configure_optimizer",
    "fit",
    "fit_interruptible",
    "is_global_zero",
    "iteration_budget",
    "metrics_csv_files",
    "plot_curves",
    "prepare_run_dir",
    "psnr",
    "psnr_pooled",
    "resolve_accelerator",
    "resolve_checkpoint",
    "save_png",
    "saved_progress",
    "ssim",
    "ssim_loss",
]
