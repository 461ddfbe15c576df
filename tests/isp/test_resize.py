"""Resizing against OpenCV (area, bilinear, bicubic) and PIL (antialiased)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.isp.resize import fit_size, resize, resize_keep_aspect

cv2 = pytest.importorskip("cv2")

RNG = np.random.default_rng(5)
CV2_MODES = {"area": "INTER_AREA", "bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC"}


def _cv2_resize(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``(B, C, H, W)`` -> ``(B, C, h, w)`` with cv2 (HWC layout), image by image."""
    flag = getattr(cv2, CV2_MODES[mode])
    out = [cv2.resize(np.ascontiguousarray(i.transpose(1, 2, 0)), size, interpolation=flag) for i in img]
    return np.stack([o.reshape(size[1], size[0], -1).transpose(2, 0, 1) for o in out])


@pytest.mark.parametrize("size", [(12, 8), (6, 4), (24, 16)])
def test_area_matches_cv2_exactly_for_integer_factors(size):
    img = RNG.random((2, 3, 32, 48)).astype(np.float32)
    out = resize(torch.from_numpy(img), size, mode="area")
    assert out.shape == (2, 3, size[1], size[0]) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _cv2_resize(img, size, "area"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(17, 13), (32, 32), (7, 20)])
def test_area_matches_cv2_for_fractional_factors(size):
    # e.g. half-resolution Bayer planes down to a 32x32 AWB statistics grid
    img = RNG.random((1, 3, 45, 60)).astype(np.float32)
    out = resize(torch.from_numpy(img), size, mode="area")
    np.testing.assert_allclose(out.numpy(), _cv2_resize(img, size, "area"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(20, 15), (33, 17), (100, 70)])
def test_interpolation_without_antialias_matches_cv2(mode, size):
    img = RNG.random((2, 1, 30, 40)).astype(np.float32)
    out = resize(torch.from_numpy(img), size, mode=mode, antialias=False)
    np.testing.assert_allclose(out.numpy(), _cv2_resize(img, size, mode), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_antialiased_shrinking_matches_pil(mode):
    image_module = pytest.importorskip("PIL.Image")
    img = RNG.random((60, 80)).astype(np.float32)
    resample = {"bilinear": image_module.BILINEAR, "bicubic": image_module.BICUBIC}[mode]
    expected = np.asarray(image_module.fromarray(img, mode="F").resize((33, 17), resample))
    out = resize(torch.from_numpy(img)[None, None], (33, 17), mode=mode, antialias=True)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "width, height, max_size, expected",
    [
        (5472, 3648, (1333, 800), (1200, 800)),  # GenISP / keras-retinanet's 1333x800 box
        (3648, 5472, (1333, 800), (533, 800)),
        (4000, 3000, 512, (512, 384)),
        (3000, 4000, 512, (384, 512)),
        (100, 50, (400, 400), (400, 200)),  # enlarged to fit
        (1000, 1, 10, (10, 1)),  # never below one pixel
    ],
)
def test_fit_size(width, height, max_size, expected):
    assert fit_size(width, height, max_size) == expected


def test_resize_keep_aspect():
    img = torch.rand(2, 3, 48, 64, dtype=torch.float64)
    out = resize_keep_aspect(img, (16, 16))
    assert out.shape == (2, 3, 12, 16)
    np.testing.assert_allclose(out.numpy(), _cv2_resize(img.numpy(), (16, 12), "area"), atol=1e-12)
    assert resize_keep_aspect(img, 32, mode="bilinear").shape == (2, 3, 24, 32)


@pytest.mark.parametrize("mode", ["area", "bilinear"])
def test_resize_is_differentiable(mode):
    img = torch.rand(2, 2, 7, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: resize(x, (4, 3), mode=mode), (img,))


def test_bad_arguments_are_reported():
    img = torch.zeros(1, 3, 8, 8)
    with pytest.raises(IsplabError, match="unknown resize mode 'nearest': expected one of area, bilinear, bicubic"):
        resize(img, (4, 4), mode="nearest")
    with pytest.raises(IsplabError, match=r"size must be a \(width, height\) pair of positive integers, got \(0, 4\)"):
        resize(img, (0, 4))
    with pytest.raises(IsplabError, match=r"size must be a .* got 4"):
        resize(img, 4)
    with pytest.raises(IsplabError, match=r"max_size must be a .* got \(4\.5, 4\)"):
        resize_keep_aspect(img, (4.5, 4))
    with pytest.raises(IsplabError, match=r"img must have shape \(B, C, H, W\), got \(8, 8\)"):
        resize(torch.zeros(8, 8), (4, 4))
