"""Black/white level normalisation against numpy formulas and bayer packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.isp import bayer
from isplab.isp.levels import denormalize_mosaic, denormalize_planes, normalize_mosaic, normalize_planes

RNG = np.random.default_rng(0)
BLACK = np.array([[60.0, 64.0, 62.0, 58.0], [512.0, 500.0, 505.0, 498.0], [0.0, 1.0, 2.0, 3.0]])  # (B, 4)
WHITE = np.array([1023.0, 4095.0, 16383.0])


def _numpy_normalize(planes: np.ndarray, black: np.ndarray, white: np.ndarray, clip: bool) -> np.ndarray:
    black = black.reshape(-1, 4, 1, 1)
    white = np.asarray(white, dtype=float).reshape(-1, 1, 1, 1)
    out = (planes - black) / (white - black)
    return np.clip(out, 0, 1) if clip else out


@pytest.mark.parametrize("clip", [True, False])
def test_normalize_planes_per_sample_matches_numpy(clip):
    planes = RNG.uniform(-50, 17000, size=(3, 4, 5, 6))
    out = normalize_planes(torch.from_numpy(planes), torch.from_numpy(BLACK), torch.from_numpy(WHITE), clip=clip)
    np.testing.assert_allclose(out.numpy(), _numpy_normalize(planes, BLACK, WHITE, clip), rtol=1e-12)
    if clip:
        assert out.min() == 0 and out.max() == 1


def test_normalize_planes_shared_levels_and_float32():
    planes = RNG.uniform(0, 1023, size=(2, 4, 3, 3)).astype(np.float32)
    out = normalize_planes(torch.from_numpy(planes), BLACK[0].tolist(), 1023)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _numpy_normalize(planes, BLACK[0], 1023.0, True), rtol=1e-6, atol=1e-7)


def test_integer_raw_is_promoted_to_float32():
    raw = torch.tensor([[[[64, 1023], [500, 0]]]] * 4, dtype=torch.int32).reshape(1, 4, 2, 2)
    out = normalize_planes(raw, [64, 64, 64, 64], 1023)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[0, 0].numpy(), [[0.0, 1.0], [436 / 959, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_normalize_mosaic_places_plane_levels_by_cfa(pattern):
    mosaic = RNG.uniform(0, 17000, size=(3, 6, 8))
    # Reference: split into planes with bayer.pack, normalise each plane with its level, reassemble.
    expected = bayer.unpack(_numpy_normalize(bayer.pack(mosaic, pattern), BLACK, WHITE, False), pattern)
    out = normalize_mosaic(torch.from_numpy(mosaic)[:, None], torch.from_numpy(BLACK), WHITE, pattern, clip=False)
    assert out.shape == (3, 1, 6, 8)
    np.testing.assert_allclose(out[:, 0].numpy(), expected, rtol=1e-12)


def test_normalize_mosaic_odd_size_crops_the_tile():
    mosaic = torch.full((1, 1, 3, 5), 100.0, dtype=torch.float64)
    out = normalize_mosaic(mosaic, [10.0, 20.0, 30.0, 40.0], 110.0, "GBRG", clip=False)
    # GBRG: row 0 = Gb, B; row 1 = R, Gr.
    expected_black = np.array([[30, 40, 30, 40, 30], [10, 20, 10, 20, 10], [30, 40, 30, 40, 30]], dtype=float)
    np.testing.assert_allclose(out[0, 0].numpy(), (100 - expected_black) / (110 - expected_black))


def test_denormalize_inverts_normalize():
    planes = torch.from_numpy(RNG.uniform(0, 1000, size=(3, 4, 4, 4)))
    levels = (torch.from_numpy(BLACK), torch.from_numpy(WHITE))
    back = denormalize_planes(normalize_planes(planes, *levels, clip=False), *levels)
    torch.testing.assert_close(back, planes, rtol=1e-12, atol=1e-9)
    mosaic = torch.from_numpy(RNG.uniform(0, 1000, size=(3, 1, 4, 6)))
    back = denormalize_mosaic(normalize_mosaic(mosaic, *levels, "GRBG", clip=False), *levels, "GRBG")
    torch.testing.assert_close(back, mosaic, rtol=1e-12, atol=1e-9)


def test_normalize_is_differentiable_in_data_and_levels():
    planes = torch.rand(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    black = torch.tensor([[0.1, 0.05, 0.02, 0.08], [0.0, 0.01, 0.02, 0.03]], dtype=torch.float64, requires_grad=True)
    white = torch.tensor([1.5, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, b, w: normalize_planes(p, b, w, clip=False), (planes, black, white))
    mosaic = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, b: normalize_mosaic(m, b, 2.0, "BGGR"), (mosaic, black))


def test_wrong_shapes_are_reported():
    planes = torch.zeros(2, 4, 2, 2)
    with pytest.raises(IsplabError, match=r"black_level must have shape \(4,\) or \(2, 4\).*got \(3,\)"):
        normalize_planes(planes, [0.0, 0.0, 0.0], 1.0)
    with pytest.raises(IsplabError, match=r"white_level must have shape .*or \(2,\).*got \(3,\)"):
        normalize_planes(planes, [0.0] * 4, [1.0, 1.0, 1.0])
    with pytest.raises(IsplabError, match=r"planes must have shape \(B, 4, H, W\), got \(2, 3, 2, 2\)"):
        normalize_planes(torch.zeros(2, 3, 2, 2), [0.0] * 4, 1.0)
    with pytest.raises(IsplabError, match=r"mosaic must have shape \(B, 1, H, W\), got \(4, 4\)"):
        normalize_mosaic(torch.zeros(4, 4), [0.0] * 4, 1.0, "RGGB")
    with pytest.raises(IsplabError, match="unknown CFA pattern 'RGBG'"):
        normalize_mosaic(torch.zeros(1, 1, 4, 4), [0.0] * 4, 1.0, "RGBG")
