"""Image quality metrics shared by training, evaluation and reports.

Both :func:`psnr` and :func:`ssim` score each image of a batch separately and then average
(``reduction="mean"``), which is what papers report as "average PSNR over the test set" when
called on the whole set. :func:`psnr_pooled` is the MAI challenge's definition instead: one
PSNR from the MSE pooled over every pixel of the batch, which weighs badly reconstructed
images less than the per-image mean does.

All functions take ``(B, C, H, W)`` float tensors (any device) with values in
``[0, data_range]`` and compute with torchmetrics' functional implementations.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from isplab.errors import IsplabError

REDUCTIONS = ("mean", "none")
SSIM_WINDOW = 11  # torchmetrics' Gaussian window: sigma 1.5, radius int(3.5 * 1.5 + 0.5)


def psnr(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 * log10(data_range**2 / MSE)`` per image.

    Args:
        pred, target: ``(B, C, H, W)``.
        data_range: the value of a full-scale pixel (1.0 for [0, 1] images, 255, 1023...).
        reduction: ``"mean"`` -> scalar mean of the per-image PSNRs; ``"none"`` -> ``(B,)``.

    Identical images give ``inf``.
    """
    _check_pair(pred, target, data_range, reduction)
    per_image = peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none", dim=(1, 2, 3))
    return per_image.mean() if reduction == "mean" else per_image


def psnr_pooled(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of the whole batch: ``20 * log10(data_range / sqrt(MSE))``, MSE over all pixels.

    ``pred``, ``target``: ``(B, C, H, W)``. Returns a scalar tensor.
    """
    _check_pair(pred, target, data_range, "mean")
    return peak_signal_noise_ratio(pred, target, data_range=data_range)


def ssim(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image: 11x11 Gaussian window, sigma 1.5.

    The SSIM map is averaged over channels and pixels of each image. torchmetrics
    reflect-pads the images so border pixels count too; scikit-image's
    ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
    averages only the interior, so the two differ slightly (and its default uniform 7x7 window
    with sample covariance differs more).

    Args:
        pred, target: ``(B, C, H, W)`` with ``H, W >= 11``.
        data_range: the value of a full-scale pixel.
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``(B,)``.
    """
    _check_pair(pred, target, data_range, reduction)
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise IsplabError(
            f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (its window), "
            f"got {tuple(pred.shape[-2:])}"
        )
    per_image = structural_similarity_index_measure(pred, target, data_range=data_range, reduction="none")
    return per_image.mean() if reduction == "mean" else per_image


def _check_pair(pred: torch.Tensor, target: torch.Tensor, data_range: float, reduction: str) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise IsplabError(
            f"expected pred and target of the same shape (B, C, H, W), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if not data_range > 0:
        raise IsplabError(f"data_range must be positive, got {data_range!r}")
    if reduction not in REDUCTIONS:
        raise IsplabError(f"unknown reduction {reduction!r}: expected one of {', '.join(REDUCTIONS)}")
