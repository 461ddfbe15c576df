"""Demosaicing against colour-demosaicing's reference implementations, borders included.

colour-demosaicing pads by repeating the edge pixel (swapping CFA colours at the border); isplab
reflects about the edge photosite. Feeding the reference our padding (2 px, even, so the CFA phase
is kept) and cropping it back compares every pixel, borders included.
"""

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
    padded = [np.pad(m[0], 2, mode="reflect") for m in mosaic]
    return np.stack([REFERENCES[method](p, pattern)[2:-2, 2:-2].transpose(2, 0, 1) for p in padded])


@pytest.mark.parametrize("method", ["bilinear", "malvar"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("size", [(8, 12), (6, 10)])
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


@pytest.mark.parametrize("method", ["bilinear", "malvar"])
def test_flat_colour_is_reproduced_exactly_up_to_the_border(method):
    rgb = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    mosaic = torch.empty(1, 1, 8, 8, dtype=torch.float64)
    for position, colour in enumerate("BGGR"):
        mosaic[..., position // 2 :: 2, position % 2 :: 2] = rgb["RGB".index(colour)]
    out = demosaic(mosaic, "BGGR", method)
    torch.testing.assert_close(out, rgb.reshape(1, 3, 1, 1).expand_as(out), rtol=0, atol=1e-15)


@pytest.mark.parametrize("method", ["bilinear", "malvar"])
def test_is_differentiable(method):
    mosaic = torch.rand(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: demosaic(m, "GBRG", method), (mosaic,))


def test_bad_arguments_are_reported():
    with pytest.raises(IsplabError, match="unknown demosaic method 'ahd': expected one of malvar, bilinear"):
        demosaic(torch.zeros(1, 1, 4, 4), "RGGB", "ahd")
    with pytest.raises(IsplabError, match=r"mosaic must have shape \(B, 1, H, W\), got \(1, 3, 4, 4\)"):
        demosaic(torch.zeros(1, 3, 4, 4), "RGGB")
    with pytest.raises(IsplabError, match="unknown CFA pattern 'RGBG'"):
        demosaic(torch.zeros(1, 1, 4, 4), "RGBG", "malvar")
    with pytest.raises(IsplabError, match="mosaic must be at least 3x3 to demosaic, got 2x4"):
        demosaic_malvar(torch.zeros(1, 1, 2, 4), "RGGB")
