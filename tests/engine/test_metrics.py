"""Metrics against numpy formulas and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from isplab.engine.metrics import psnr, psnr_pooled, ssim
from isplab.errors import IsplabError


def numpy_psnr(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    return 10 * np.log10(data_range**2 / np.mean((pred - target) ** 2))


def test_psnr_is_mean_of_per_image_psnr(noisy_pair):
    pred, target = noisy_pair([0.01, 0.05, 0.2])
    per_image = [numpy_psnr(p.numpy(), t.numpy(), 1.0) for p, t in zip(pred, target)]
    # rel 1e-6: torchmetrics keeps data_range as a float32 tensor even for float64 images.
    assert psnr(pred, target, reduction="none").numpy() == pytest.approx(per_image, rel=1e-6)
    assert psnr(pred, target).item() == pytest.approx(np.mean(per_image), rel=1e-6)
    # data_range scales with the values: 8-bit-range images give the same dB.
    assert psnr(pred * 255, target * 255, data_range=255).item() == pytest.approx(np.mean(per_image))
    assert psnr(target, target).item() == float("inf")


def test_psnr_pooled_vs_per_image_mean(noisy_pair):
    pred, target = noisy_pair([0.01, 0.2])
    pooled = 20 * np.log10(1.0 / np.sqrt(np.mean((pred.numpy() - target.numpy()) ** 2)))
    assert psnr_pooled(pred, target).item() == pytest.approx(pooled, rel=1e-6)
    # -log is convex, so the per-image mean exceeds the pooled PSNR when the errors differ
    # (here by several dB: the noisy image dominates the pooled MSE)...
    assert psnr(pred, target).item() > psnr_pooled(pred, target).item() + 5
    # ...and both agree when every image has the same MSE.
    same = target[:1].repeat(2, 1, 1, 1)
    noisy = same + 0.03 * torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
    assert psnr(noisy, same).item() == pytest.approx(psnr_pooled(noisy, same).item(), rel=1e-6)


def test_ssim_of_constant_images_matches_closed_form():
    # Constant images: zero variances, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2.
    a, b = 0.3, 0.6
    pred = torch.full((1, 3, 16, 16), a, dtype=torch.float64)
    target = torch.full((1, 3, 16, 16), b, dtype=torch.float64)
    c1 = 0.01**2
    assert ssim(pred, target).item() == pytest.approx((2 * a * b + c1) / (a**2 + b**2 + c1), rel=1e-9)
    assert ssim(target, target).item() == pytest.approx(1.0)


def skimage_ssim(pred: np.ndarray, target: np.ndarray, **kwargs) -> tuple[float, np.ndarray]:
    """Mean SSIM and full map of one (H, W) channel, Wang et al.'s Gaussian settings."""
    return structural_similarity(pred, target, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, full=True, **kwargs)


def test_ssim_matches_skimage(noisy_pair):
    pred, target = noisy_pair([0.05, 0.15], size=48)
    ours = ssim(pred, target, reduction="none").numpy()

    # Exact comparison: torchmetrics reflect-pads (numpy's "reflect") and averages every pixel.
    # Pad the same way, let skimage compute the map and keep the original pixels.
    pad = 5
    exact = []
    for p, t in zip(pred.numpy(), target.numpy()):
        maps = [skimage_ssim(np.pad(pc, pad, mode="reflect"), np.pad(tc, pad, mode="reflect"))[1]
                for pc, tc in zip(p, t)]
        exact.append(np.mean([m[pad:-pad, pad:-pad] for m in maps]))
    assert ours == pytest.approx(exact, abs=1e-6)

    # skimage's own score averages only the interior (5-pixel border excluded): close, not equal.
    interior = [np.mean([skimage_ssim(pc, tc)[0] for pc, tc in zip(p, t)])
                for p, t in zip(pred.numpy(), target.numpy())]
    assert ours == pytest.approx(interior, abs=0.005)
    # Its default uniform 7x7 window with sample covariance is a different metric altogether.
    uniform = [np.mean([structural_similarity(pc, tc, data_range=1.0) for pc, tc in zip(p, t)])
               for p, t in zip(pred.numpy(), target.numpy())]
    assert np.all(np.abs(ours - np.array(uniform)) > 0.02)
    assert ssim(pred, target).item() == pytest.approx(np.mean(exact), abs=1e-6)


def test_metric_input_errors():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(IsplabError, match=r"same shape \(B, C, H, W\), got \(2, 3, 16, 16\) and \(2, 3, 16, 8\)"):
        psnr(x, x[..., :8])
    with pytest.raises(IsplabError, match=r"got \(3, 16, 16\)"):
        ssim(x[0], x[0])
    with pytest.raises(IsplabError, match="unknown reduction 'sum'"):
        psnr(x, x, reduction="sum")
    with pytest.raises(IsplabError, match="data_range must be positive, got 0"):
        psnr_pooled(x, x, data_range=0)
    with pytest.raises(IsplabError, match=r"at least 11x11 pixels .*got \(10, 16\)"):
        ssim(x[..., :10, :], x[..., :10, :])
