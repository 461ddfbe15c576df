"""Image quality metrics shared by training, evaluation and reports.

Both :func:`psnr` and :func:`ssim` score each image of a batch separately and then average
(``reduction="mean"``), which is what papers report as "average PSNR over the test set" when
called on the whole set. :func:`psnr_pooled` is the MAI challenge's definition instead: one
PSNR from the MSE pooled over every pixel of the batch, which weighs badly reconstructed
images less than the per-image mean does.

All functions take ``(B, C, H, W)`` float tensors (any device) with values in
``[0, data_range]``; PSNR and SSIM compute with torchmetrics' functional implementations.

:func:`delta_e2000` measures colour accuracy: sRGB (IEC 61966-2-1) -> CIELab (D65 white) ->
the CIEDE2000 colour difference (CIE 142-2001) of every pixel, implemented here after Sharma, Wu &
Dalal, "The CIEDE2000 color-difference formula: implementation notes, supplementary test data, and
mathematical observations" (Color Res. Appl. 30(1), 2005), whose 34 test pairs the tests check.
A difference of about 1 is just noticeable; above 10 colours look clearly different.
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


#: Linear sRGB -> CIE XYZ (D65), IEC 61966-2-1's published matrix
_SRGB_TO_XYZ = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))


def srgb_to_lab(srgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``(B, 3, H, W)`` in [0, 1] -> CIELab ``(B, 3, H, W)`` (L in 0..100), float64.

    Linearised with the sRGB transfer function, converted to XYZ with IEC 61966-2-1's matrix and
    normalised by the XYZ of sRGB white (the D65 white point), so sRGB white is exactly L=100, a=b=0.
    """
    x = srgb.to(torch.float64)
    linear = torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_SRGB_TO_XYZ, dtype=torch.float64, device=x.device)
    xyz = torch.einsum("ck,bkhw->bchw", matrix / matrix.sum(dim=1, keepdim=True), linear)
    delta = 6.0 / 29.0
    f = torch.where(xyz > delta**3, xyz.clamp(min=delta**3) ** (1.0 / 3.0), xyz / (3 * delta**2) + 4.0 / 29.0)
    return torch.stack([116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], dim=1)


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """CIEDE2000 colour difference of CIELab values along ``dim`` (kL = kC = kH = 1), float64.

    Follows Sharma et al.'s implementation notes (2005): hue undefined for zero chroma counts as 0,
    and the hue difference of exactly 180 degrees takes the ``<= 180`` branch (with a 1e-9 degree
    tolerance, so rounding of ``atan2`` does not flip it).
    """
    L1, a1, b1 = torch.unbind(lab1.to(torch.float64), dim=dim)
    L2, a2, b2 = torch.unbind(lab2.to(torch.float64), dim=dim)
    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.where(c1p == 0, 0.0, torch.rad2deg(torch.atan2(b1, a1p)) % 360.0)
    h2p = torch.where(c2p == 0, 0.0, torch.rad2deg(torch.atan2(b2, a2p)) % 360.0)
    tol = 1e-9
    dL = L2 - L1
    dC = c2p - c1p
    dh = h2p - h1p
    dh = torch.where(dh > 180.0 + tol, dh - 360.0, torch.where(dh < -180.0 - tol, dh + 360.0, dh))
    dh = torch.where(c1p * c2p == 0, 0.0, dh)
    dH = 2 * torch.sqrt(c1p * c2p) * torch.sin(torch.deg2rad(dh / 2))
    L_bar = (L1 + L2) / 2
    c_bar_p = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = torch.where(
        (h1p - h2p).abs() <= 180.0 + tol, h_sum / 2, torch.where(h_sum < 360.0, (h_sum + 360.0) / 2, (h_sum - 360.0) / 2)
    )
    h_bar = torch.where(c1p * c2p == 0, h_sum, h_bar)
    t = (1 - 0.17 * torch.cos(torch.deg2rad(h_bar - 30)) + 0.24 * torch.cos(torch.deg2rad(2 * h_bar))
         + 0.32 * torch.cos(torch.deg2rad(3 * h_bar + 6)) - 0.20 * torch.cos(torch.deg2rad(4 * h_bar - 63)))
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * torch.sqrt(c_bar_p**7 / (c_bar_p**7 + 25.0**7))
    s_l = 1 + 0.015 * (L_bar - 50) ** 2 / torch.sqrt(20 + (L_bar - 50) ** 2)
    s_c = 1 + 0.045 * c_bar_p
    s_h = 1 + 0.015 * c_bar_p * t
    r_t = -torch.sin(torch.deg2rad(2 * d_theta)) * r_c
    return torch.sqrt((dL / s_l) ** 2 + (dC / s_c) ** 2 + (dH / s_h) ** 2 + r_t * (dC / s_c) * (dH / s_h))


def delta_e2000(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean CIEDE2000 colour difference per image between sRGB images in [0, 1].

    Args:
        pred, target: ``(B, 3, H, W)`` sRGB.
        reduction: ``"mean"`` -> scalar mean of the per-image means; ``"none"`` -> ``(B,)``;
            ``"pixels"`` -> the ``(B, H, W)`` map.

    Returns:
        float64; 0 for identical images.
    """
    if reduction != "pixels":
        _check_pair(pred, target, 1.0, reduction)
    elif pred.ndim != 4 or pred.shape != target.shape:
        _check_pair(pred, target, 1.0, "none")
    if pred.shape[1] != 3:
        raise IsplabError(f"delta_e2000 needs RGB images (B, 3, H, W), got {tuple(pred.shape)}")
    per_pixel = ciede2000(srgb_to_lab(pred), srgb_to_lab(target), dim=1)
    if reduction == "pixels":
        return per_pixel
    per_image = per_pixel.mean(dim=(1, 2))
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
