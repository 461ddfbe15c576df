"""Demosaicing against colour-demosaicing's reference implementations, borders included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

colour_demosaicing = pytest.importorskip("colour_demosaicing")

from isplab.errors import IsplabError  # noqa: E402
from isplab.isp.bayer import PATTERNS  # noqa: E402
from isplab.isp.demosaic import demosaic, demosaic_bilinear, demosaic_malvar  # noqa: E402

RNG = np.random.default_rng(2)
REFERENCES = {
    "bilinear": colour_demosaicing.demosaicing_CFA_Bayer_bilinear,
    "malvar": colour_demosaicing.demosaicing_CFA_Bayer_Malvar2004,
}


def _reference(mosaic: np.ndarray, pattern: str, method: str) -> np.ndarray:
    """``(B, 1, H, W)`` -> ``(B, 3, H, W)`` with colour-demosaicing, one image at a time."""
    return np.stack([REFERENCES[method](m[0], pattern).transpose(2, 0, 1) for m in mosaic])


@pytest.mark.parametrize("method", ["bilinear", "malvar"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("size", [(8, 12), (7, 9)])
def test_matches_colour_demosaicing_on_whole_image(method, pattern, size):
    mosaic = RNG.random((2, 1, *size))
    out = demosaic(torch.from_numpy(mosaic), pattern, method)
    assert out.shape == (2, 3, *size) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), _reference(mosaic, pattern, method), atol=1e-12)


@pytest.mark.parametrize("function, method", [(demosaic_bilinear, "bilinear"), (demosaic_malvar, "malvar")])
def test_float32_agrees_to_1e5(function, method):
    mosaic = RNG.random((1, 1, 32, 48)).astype(np.float32)
    out = function(torch.from_numpy(mosaic), "GRBG")
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _reference(mosaic.astype(np.float64), "GRBG", method), atol=1e-5)


@pytest.mark.parametrize("method, margin", [("bilinear", 1), ("malvar", 2)])
def test_flat_colour_is_reproduced_exactly_inside_the_kernel_margin(method, margin):
    # The edge-repeating padding (colour-demosaicing's) breaks the CFA parity, so only pixels
    # whose kernel stays inside the image are exact; the border is covered by the reference test.
    rgb = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    mosaic = torch.empty(1, 1, 8, 8, dtype=torch.float64)
    for position, colour in enumerate("BGGR"):
        mosaic[..., position // 2 :: 2, position % 2 :: 2] = rgb["RGB".index(colour)]
    inner = demosaic(mosaic, "BGGR", method)[..., margin:-margin, margin:-margin]
    torch.testing.assert_close(inner, rgb.reshape(1, 3, 1, 1).expand_as(inner), rtol=0, atol=1e-15)


@pytest.mark.parametrize("method", ["bilinear", "malvar"])
def test_is_differentiable(method):
    mosaic = torch.rand(2, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: demosaic(m, "GBRG", method), (mosaic,))


def test_bad_arguments_are_reported():
    with pytest.raises(IsplabError, match="unknown demosaic method 'ahd': expected one of malvar, bilinear"):
        demosaic(torch.zeros(1, 1, 4, 4), "RGGB", "ahd")
    with pytest.raises(IsplabError, match=r"mosaic must have shape \(B, 1, H, W\), got \(1, 3, 4, 4\)"):
        demosaic(torch.zeros(1, 3, 4, 4), "RGGB")
    with pytest.raises(IsplabError, match="unknown CFA pattern 'RGBG'"):
        demosaic(torch.zeros(1, 1, 4, 4), "RGBG", "malvar")
    with pytest.raises(IsplabError, match="mosaic must be at least 2x2 to demosaic, got 1x4"):
        demosaic_malvar(torch.zeros(1, 1, 1, 4), "RGGB")
