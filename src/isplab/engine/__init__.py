"""Training engine shared by all workflows: Lightning trainer setup, metrics, losses, reports."""

from __future__ import annotations

from isplab.engine.losses import charbonnier, ssim_loss
from isplab.engine.metrics import psnr, psnr_pooled, ssim
from isplab.engine.report import Report, plot_curves, save_png
from isplab.engine.trainer import (
    build_trainer,
    configure_optimizer,
    fit,
    metrics_csv_files,
    resolve_accelerator,
    resolve_checkpoint,
)

__all__ = [
    "Report",
    "build_trainer",
    "charbonnier",
    "configure_optimizer",
    "fit",
    "metrics_csv_files",
    "plot_curves",
    "psnr",
    "psnr_pooled",
    "resolve_accelerator",
    "resolve_checkpoint",
    "save_png",
    "ssim",
    "ssim_loss",
]
