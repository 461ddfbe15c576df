"""Metrics against numpy formulas and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from isplab.engine.metrics import (
    ciede2000,
    delta_e2000,
    psnr,
    psnr_pooled,
    srgb_to_lab,
    ssim,
)
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


# Sharma, Wu & Dalal (2005), Table 1: the 34 CIEDE2000 test pairs (L, a, b) and their differences.
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_ciede2000_matches_sharmas_34_test_pairs():
    lab1 = torch.tensor([p[0] for p in SHARMA_PAIRS], dtype=torch.float64)
    lab2 = torch.tensor([p[1] for p in SHARMA_PAIRS], dtype=torch.float64)
    expected = torch.tensor([p[2] for p in SHARMA_PAIRS], dtype=torch.float64)
    assert len(SHARMA_PAIRS) == 34
    torch.testing.assert_close(ciede2000(lab1, lab2), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(ciede2000(lab2, lab1), expected, atol=1e-4, rtol=0)  # symmetric


def test_srgb_to_lab_matches_colour_science():
    import colour

    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.6, 0.9], [0.5, 0.5, 0.5]],
                       dtype=torch.float64)
    ours = srgb_to_lab(rgb.T.reshape(1, 3, 1, 5))[0, :, 0].T.numpy()
    reference = colour.XYZ_to_Lab(colour.sRGB_to_XYZ(rgb.numpy()))
    np.testing.assert_allclose(ours, reference, atol=0.02)  # colour-science's sRGB matrix has more digits
    np.testing.assert_allclose(ours[0], [100.0, 0.0, 0.0], atol=1e-9)


def test_delta_e2000_of_images():
    rng = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 16, 16, generator=rng)
    assert float(delta_e2000(target, target)) == 0.0
    swapped = target[:, [2, 1, 0]]  # red and blue exchanged: a large colour error
    per_image = delta_e2000(swapped, target, reduction="none")
    assert per_image.shape == (2,) and per_image.min() > 10
    # a uniform image: the value of the one Lab pair, computed independently by colour-science
    import colour

    a, b = torch.tensor([0.8, 0.4, 0.2]), torch.tensor([0.7, 0.45, 0.25])
    expected = colour.delta_E(colour.XYZ_to_Lab(colour.sRGB_to_XYZ(a.numpy())),
                              colour.XYZ_to_Lab(colour.sRGB_to_XYZ(b.numpy())), method="CIE 2000")
    value = delta_e2000(a.reshape(1, 3, 1, 1).expand(1, 3, 4, 4), b.reshape(1, 3, 1, 1).expand(1, 3, 4, 4))
    assert float(value) == pytest.approx(float(expected), abs=0.02)
    with pytest.raises(IsplabError, match="RGB"):
        delta_e2000(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
