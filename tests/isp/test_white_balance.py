"""White-balance gains against numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.isp.bayer import PATTERNS
from isplab.isp.white_balance import apply_wb, apply_wb_mosaic, apply_wb_planes, gains_from_neutral

RNG = np.random.default_rng(1)
GAINS = np.array([[2.0, 1.0, 1.5], [1.2, 0.9, 2.5]])  # (B, 3)


def test_apply_wb_shared_and_per_sample():
    rgb = RNG.random((2, 3, 4, 5))
    out = apply_wb(torch.from_numpy(rgb), torch.from_numpy(GAINS))
    np.testing.assert_allclose(out.numpy(), rgb * GAINS[:, :, None, None])
    out = apply_wb(torch.from_numpy(rgb).float(), GAINS[1])
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), rgb * GAINS[1][None, :, None, None], rtol=1e-6)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("size", [(4, 6), (5, 3)])
def test_apply_wb_mosaic_uses_each_sites_colour(pattern, size):
    mosaic = RNG.random((2, 1, *size))
    expected = mosaic.copy()
    for position, colour in enumerate(pattern):
        r, c = divmod(position, 2)
        expected[:, 0, r::2, c::2] *= GAINS[:, "RGB".index(colour), None, None]
    out = apply_wb_mosaic(torch.from_numpy(mosaic), torch.from_numpy(GAINS), pattern)
    np.testing.assert_allclose(out.numpy(), expected)


def test_apply_wb_planes_gives_both_greens_the_green_gain():
    planes = RNG.random((2, 4, 3, 3))
    out = apply_wb_planes(torch.from_numpy(planes), torch.from_numpy(GAINS))
    np.testing.assert_allclose(out.numpy(), planes * GAINS[:, [0, 1, 1, 2], None, None])


def test_gains_from_neutral():
    np.testing.assert_allclose(gains_from_neutral([0.5, 1.0, 0.7]).numpy(), [2.0, 1.0, 1 / 0.7])
    neutral = torch.tensor([[0.4, 0.8, 0.5], [1.0, 0.5, 0.25]])
    gains = gains_from_neutral(neutral)
    assert gains.dtype == torch.float32
    torch.testing.assert_close(gains, torch.tensor([[2.0, 1.0, 1.6], [0.5, 1.0, 2.0]]))
    torch.testing.assert_close(gains * neutral, neutral[:, 1:2].expand(2, 3))  # the neutral becomes grey


def test_wb_is_differentiable():
    rgb = torch.rand(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    gains = torch.tensor(GAINS, requires_grad=True)
    assert torch.autograd.gradcheck(apply_wb, (rgb, gains))
    mosaic = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, g: apply_wb_mosaic(m, g, "GRBG"), (mosaic, gains))
    neutral = torch.tensor([0.4, 0.8, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gains_from_neutral, (neutral,))


def test_wrong_shapes_are_reported():
    with pytest.raises(IsplabError, match=r"gains must have shape \(3,\) or \(2, 3\).*got \(4,\)"):
        apply_wb(torch.zeros(2, 3, 2, 2), [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(IsplabError, match=r"gains must have shape \(3,\) or \(2, 3\).*got \(3, 3\)"):
        apply_wb_mosaic(torch.zeros(2, 1, 2, 2), torch.ones(3, 3), "RGGB")
    with pytest.raises(IsplabError, match=r"rgb must have shape \(B, 3, H, W\), got \(2, 4, 2, 2\)"):
        apply_wb(torch.zeros(2, 4, 2, 2), [1.0, 1.0, 1.0])
    with pytest.raises(IsplabError, match="rgb must be a floating-point tensor"):
        apply_wb(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), [1.0, 1.0, 1.0])
    with pytest.raises(IsplabError, match=r"neutral must have shape \(\.\.\., 3\).*got \(4,\)"):
        gains_from_neutral([1.0, 1.0, 1.0, 1.0])
    with pytest.raises(IsplabError, match="neutral must be positive"):
        gains_from_neutral([0.5, 0.0, 1.0])
