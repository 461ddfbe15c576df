"""isplab.isp.bayer against explicit numpy index formulas, for every pattern, numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.isp import bayer

# (row, col) of R, Gr, Gb, B in the 2x2 tile, written out by hand for each pattern.
OFFSETS = {
    "RGGB": [(0, 0), (0, 1), (1, 0), (1, 1)],
    "BGGR": [(1, 1), (1, 0), (0, 1), (0, 0)],
    "GRBG": [(0, 1), (0, 0), (1, 1), (1, 0)],
    "GBRG": [(1, 0), (1, 1), (0, 0), (0, 1)],
}
COLOUR_OF_PLANE = [0, 1, 1, 2]  # R, Gr, Gb, B -> RGB channel


def explicit_pack(m: np.ndarray, pattern: str) -> np.ndarray:
    h, w = m.shape[-2:]
    out = np.empty((*m.shape[:-2], 4, h // 2, w // 2), m.dtype)
    for p, (r, c) in enumerate(OFFSETS[pattern]):
        for i in range(h // 2):
            for j in range(w // 2):
                out[..., p, i, j] = m[..., 2 * i + r, 2 * j + c]
    return out


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_plane_offsets_and_indices(pattern):
    offsets = bayer.plane_offsets(pattern)
    assert [offsets[p] for p in bayer.PLANES] == OFFSETS[pattern]
    tile = bayer.tile_to_planes(pattern)
    for plane, (r, c) in enumerate(OFFSETS[pattern]):
        assert tile[2 * r + c] == plane
    assert bayer.channel_index(pattern) == ["RGB".index(ch) for ch in pattern]
    # Gr shares a row with R, Gb with B.
    assert offsets["Gr"][0] == offsets["R"][0] and offsets["Gb"][0] == offsets["B"][0]


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_pack_matches_index_formula_and_unpack_inverts(pattern):
    m = np.random.default_rng(0).integers(0, 65535, (2, 6, 8), dtype=np.uint16)
    packed = bayer.pack(m, pattern)
    assert packed.shape == (2, 4, 3, 4) and packed.dtype == np.uint16
    np.testing.assert_array_equal(packed, explicit_pack(m, pattern))
    np.testing.assert_array_equal(bayer.unpack(packed, pattern), m)
    planes = np.random.default_rng(1).random((3, 4, 2, 5)).astype(np.float32)
    np.testing.assert_array_equal(bayer.pack(bayer.unpack(planes, pattern), pattern), planes)


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_mosaic_samples_each_pixel_from_its_colour(pattern):
    rgb = np.random.default_rng(2).random((3, 6, 8)).astype(np.float32)
    m = bayer.mosaic(rgb, pattern)
    assert m.shape == (6, 8) and m.dtype == np.float32
    for y in range(6):
        for x in range(8):
            channel = "RGB".index(pattern[2 * (y % 2) + x % 2])
            assert m[y, x] == rgb[channel, y, x]


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_to_half_rgb_formula(pattern):
    m = np.random.default_rng(3).integers(0, 4096, (4, 6), dtype=np.uint16)
    half = bayer.to_half_rgb(m, pattern)
    assert half.shape == (3, 2, 3) and half.dtype == np.float32
    (rr, rc), (grr, grc), (gbr, gbc), (br, bc) = OFFSETS[pattern]
    mf = m.astype(np.float32)
    np.testing.assert_array_equal(half[0], mf[rr::2, rc::2])
    np.testing.assert_array_equal(half[1], (mf[grr::2, grc::2] + mf[gbr::2, gbc::2]) / 2)
    np.testing.assert_array_equal(half[2], mf[br::2, bc::2])


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_numpy_and_torch_agree(pattern):
    rng = np.random.default_rng(4)
    m = rng.integers(0, 1023, (2, 4, 6), dtype=np.int32)
    rgb = rng.random((2, 3, 4, 6)).astype(np.float32)
    t_m, t_rgb = torch.from_numpy(m), torch.from_numpy(rgb)
    packed = bayer.pack(t_m, pattern)
    assert isinstance(packed, torch.Tensor)
    np.testing.assert_array_equal(packed.numpy(), bayer.pack(m, pattern))
    np.testing.assert_array_equal(bayer.unpack(packed, pattern).numpy(), m)
    half = bayer.to_half_rgb(t_m, pattern)
    assert half.dtype == torch.float32
    np.testing.assert_array_equal(half.numpy(), bayer.to_half_rgb(m, pattern))
    np.testing.assert_array_equal(bayer.mosaic(t_rgb, pattern).numpy(), bayer.mosaic(rgb, pattern))


def test_torch_gradients_flow_through_pack_and_mosaic():
    rgb = torch.rand(1, 3, 4, 4, requires_grad=True)
    bayer.pack(bayer.mosaic(rgb, "GRBG"), "GRBG").sum().backward()
    # Each pixel is sampled once, from exactly one channel.
    assert torch.equal(rgb.grad.sum(dim=1), torch.ones(1, 4, 4))


def test_pattern_is_case_insensitive():
    assert bayer.check_pattern("rggb") == "RGGB"


@pytest.mark.parametrize("bad", ["RGBG", "XYZW", "RGB", ""])
def test_bad_pattern(bad):
    with pytest.raises(IsplabError, match=rf"unknown CFA pattern '{bad}': expected one of RGGB, BGGR, GRBG, GBRG"):
        bayer.pack(np.zeros((4, 4)), bad)


def test_odd_size_and_bad_shapes():
    with pytest.raises(IsplabError, match=r"mosaic must have even height and width.*got 5x4"):
        bayer.pack(np.zeros((5, 4)), "RGGB")
    with pytest.raises(IsplabError, match=r"image must have even height and width.*got 4x3"):
        bayer.mosaic(np.zeros((3, 4, 3)), "RGGB")
    with pytest.raises(IsplabError, match=r"expected 4 packed planes .* got shape \(3, 2, 2\)"):
        bayer.unpack(np.zeros((3, 2, 2)), "RGGB")
    with pytest.raises(IsplabError, match=r"expected 3 colour channels .* got shape \(4, 2, 2\)"):
        bayer.mosaic(np.zeros((4, 2, 2)), "RGGB")
