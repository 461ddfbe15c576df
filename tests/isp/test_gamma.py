"""sRGB transfer function against colour-science's IEC 61966-2-1 implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.isp.gamma import linear_to_srgb, srgb_to_linear

colour = pytest.importorskip("colour")

# Both sides of the breakpoints (0.0031308 linear, ~0.04045 encoded), negatives and values above 1.
VALUES = np.concatenate(
    [np.linspace(-0.2, 1.5, 1001), [0.0, 0.0031308, 0.00313081, 0.0031309, 0.04044991, 0.040449936, 0.04045, 1.0]]
)


def test_linear_to_srgb_matches_colour():
    expected = colour.cctf_encoding(VALUES, function="sRGB")
    np.testing.assert_allclose(linear_to_srgb(torch.from_numpy(VALUES)).numpy(), expected, rtol=1e-12, atol=1e-15)


def test_srgb_to_linear_matches_colour():
    expected = colour.cctf_decoding(VALUES, function="sRGB")
    np.testing.assert_allclose(srgb_to_linear(torch.from_numpy(VALUES)).numpy(), expected, rtol=1e-12, atol=1e-15)


def test_round_trip_and_float32():
    x = torch.from_numpy(VALUES)
    # The standard's two segments miss each other by ~3e-8 at the breakpoint (colour-science's
    # functions behave the same), so values just above 0.0031308 come back within a few 1e-9.
    torch.testing.assert_close(srgb_to_linear(linear_to_srgb(x)), x, rtol=1e-12, atol=5e-9)
    image = torch.rand(2, 3, 4, 4)
    encoded = linear_to_srgb(image)
    assert encoded.dtype == torch.float32 and encoded.shape == image.shape
    torch.testing.assert_close(srgb_to_linear(encoded), image, rtol=1e-5, atol=1e-6)


def test_gradients_are_finite_everywhere_and_correct():
    x = torch.tensor([-0.1, 0.0, 0.002, 0.01, 0.5, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_to_srgb, (x,))
    assert torch.autograd.gradcheck(srgb_to_linear, (x,))
    linear_to_srgb(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[1].item() == pytest.approx(12.92)  # slope of the linear segment at 0
