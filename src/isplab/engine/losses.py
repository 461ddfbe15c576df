"""Training losses for image restoration, on ``(B, C, H, W)`` float tensors."""

from __future__ import annotations

import torch

from isplab.engine.metrics import ssim
from isplab.errors import IsplabError


def charbonnier(
    pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3, reduction: str = "mean"
) -> torch.Tensor:
    """Charbonnier loss ``sqrt((pred - target)**2 + eps**2)``, a differentiable L1.

    Behaves like L1 for errors much larger than ``eps`` and like a scaled L2 near zero, so
    its gradient stays smooth where L1's flips sign.

    Args:
        pred, target: tensors of the same shape.
        eps: smoothing constant in the units of the images.
        reduction: ``"mean"`` or ``"sum"`` over all elements, or ``"none"`` for the per-element loss.
    """
    if pred.shape != target.shape:
        raise IsplabError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    loss = torch.sqrt((pred - target) ** 2 + eps**2)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise IsplabError(f"unknown reduction {reduction!r}: expected 'mean', 'sum' or 'none'")


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``1 - SSIM`` averaged over the batch (see :func:`isplab.engine.metrics.ssim`); 0 when equal."""
    return 1.0 - ssim(pred, target, data_range=data_range)
