"""GenISP preprocessing: hand-computed XYZ values from tiny DNGs of every CFA pattern."""

from __future__ import annotations

import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.io.dng import write_dng
from isplab.io.raw import RawImage, read_raw
from isplab.workflows.genisp.preprocess import (
    load_raw_xyz,
    raw_to_xyz,
    resize_keep_aspect,
    resize_scale,
)

# XYZ -> camera, not symmetric; its inverse is [[0.5, -0.5, 0], [0, 1, 0], [0, 0, 0.25]].
MATRIX = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
BLACK, WHITE = 64, 64 + 2048


def _tile_raw(pattern: str, values: dict[str, int], size=(24, 24), matrix=MATRIX, path=None) -> RawImage:
    """A mosaic whose R, G (first G in the tile), G (second) and B sites hold ``values``."""
    tile = np.zeros((2, 2), np.uint16)
    greens = iter(("G1", "G2"))
    for i, c in enumerate(pattern):
        tile[i // 2, i % 2] = values[c if c != "G" else next(greens)]
    return RawImage(
        mosaic=np.tile(tile, (size[0] // 2, size[1] // 2)),
        cfa_pattern=pattern,
        black_level=[BLACK] * 4,
        white_level=WHITE,
        as_shot_neutral=[0.5, 1.0, 0.6],
        color_matrix=matrix,
        path=path,
    )


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_hand_computed_xyz_from_a_dng(tmp_path, pattern):
    # R = 0.5, greens 0.25 and 0.75 (mean 0.5), B = 0.5 after (x - 64) / 2048; the image maximum
    # (1600) is below the white level (2112), so normalising by the maximum would give 2/3 instead.
    values = {"R": BLACK + 1024, "G1": BLACK + 512, "G2": BLACK + 1536, "B": BLACK + 1024}
    path = write_dng(tmp_path / f"{pattern}.dng", _tile_raw(pattern, values))
    xyz = raw_to_xyz(read_raw(path))
    assert xyz.shape == (12, 12, 3) and xyz.dtype == np.float32
    # inv(MATRIX) @ (0.5, 0.5, 0.5) = (0, 0.5, 0.125); the forward matrix would give (1.5, 0.5, 2)
    np.testing.assert_allclose(xyz, np.broadcast_to([0.0, 0.5, 0.125], xyz.shape), atol=1e-5)


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_each_pattern_puts_each_colour_in_its_channel(pattern):
    # distinct R, G, B: a hard-coded RGGB (or swapped channels) would mix them up
    values = {"R": BLACK + 2048, "G1": BLACK + 1024, "G2": BLACK + 1024, "B": BLACK + 256}
    identity = _tile_raw(pattern, values, matrix=np.eye(3))
    np.testing.assert_allclose(raw_to_xyz(identity)[0, 0], [1.0, 0.5, 0.125], atol=1e-6)


def test_random_mosaic_with_per_plane_black_levels_matches_a_direct_computation(tmp_path):
    rng = np.random.default_rng(0)
    mosaic = rng.integers(40, 4000, size=(24, 30)).astype(np.uint16)
    black = np.array([60.0, 62.0, 58.0, 64.0])  # R, Gr, Gb, B
    raw = RawImage(mosaic=mosaic, cfa_pattern="GRBG", black_level=black, white_level=4095,
                   as_shot_neutral=[1, 1, 1], color_matrix=MATRIX)
    m = mosaic.astype(np.float64)
    # GRBG: Gr at (0,0) (red's row), R at (0,1), B at (1,0), Gb at (1,1)
    r = (m[0::2, 1::2] - 60) / (4095 - 60)
    g = ((m[0::2, 0::2] - 62) / (4095 - 62) + (m[1::2, 1::2] - 58) / (4095 - 58)) / 2
    b = (m[1::2, 0::2] - 64) / (4095 - 64)
    expected = np.einsum("ck,hwk->hwc", np.linalg.inv(MATRIX), np.stack([r, g, b], -1))
    np.testing.assert_allclose(raw_to_xyz(raw), expected, rtol=1e-5, atol=1e-6)
    below_black = mosaic.copy()
    below_black[0, 1] = 10  # an R site below its black level stays negative (not clipped)
    raw2 = RawImage(mosaic=below_black, cfa_pattern="GRBG", black_level=black, white_level=4095,
                    as_shot_neutral=[1, 1, 1], color_matrix=np.eye(3))
    assert raw_to_xyz(raw2)[0, 0, 0] == pytest.approx((10 - 60) / (4095 - 60), rel=1e-6)


def test_resize_scale_follows_keras_retinanet():
    assert resize_scale(3648, 5472) == pytest.approx(800 / 3648)  # Sony RX100: 800 x 1200
    assert resize_scale(1000, 3000) == pytest.approx(1333 / 3000)  # long side limits
    assert resize_scale(400, 300, short=600, long=1000) == pytest.approx(2.0)  # enlarges
    with pytest.raises(IsplabError, match="short"):
        resize_scale(10, 10, short=900, long=800)


def test_resize_keep_aspect_area_averages_and_stays_float():
    blocks = np.arange(3 * 10 * 3, dtype=np.float32).reshape(3, 10, 3) / 90
    img = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)  # (12, 40, 3) of constant 4x4 blocks
    out, scale = resize_keep_aspect(img, short=5, long=10)
    assert scale == pytest.approx(0.25) and out.shape == (3, 10, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, blocks, atol=1e-6)
    with pytest.raises(IsplabError, match="float"):
        resize_keep_aspect((img * 255).astype(np.uint8))
    ramp = np.tile(np.arange(8, dtype=np.float32)[None, :, None], (4, 1, 3))  # enlarging: bilinear
    up, scale = resize_keep_aspect(ramp, short=8, long=16)
    assert scale == 2 and up.shape == (8, 16, 3)
    np.testing.assert_allclose(up[0, 1:15, 0], (np.arange(1, 15) - 0.5) / 2, atol=1e-6)


def test_load_raw_xyz_resizes_after_packing_and_reports_the_sensor_scale(tmp_path):
    rng = np.random.default_rng(1)
    raw = RawImage(mosaic=rng.integers(64, 2000, size=(48, 64)).astype(np.uint16), cfa_pattern="BGGR",
                   black_level=[BLACK] * 4, white_level=WHITE, as_shot_neutral=[1, 1, 1], color_matrix=MATRIX)
    path = write_dng(tmp_path / "r.dng", raw)
    image, scale = load_raw_xyz(path, short=12, long=100)
    full = raw_to_xyz(raw)  # (24, 32, 3)
    assert image.shape == (12, 16, 3) and image.dtype == np.float32
    assert scale == pytest.approx(0.25)  # a 48 x 64 sensor becomes 12 x 16
    np.testing.assert_allclose(image, full.reshape(12, 2, 16, 2, 3).mean(axis=(1, 3)), rtol=1e-4, atol=1e-5)


def test_a_raw_without_colour_matrix_is_refused_naming_the_file(tmp_path):
    raw = _tile_raw("RGGB", {"R": 100, "G1": 100, "G2": 100, "B": 100}, matrix=None, path=tmp_path / "x.dng")
    with pytest.raises(IsplabError, match=r"x\.dng has no colour matrix"):
        raw_to_xyz(raw)
    singular = _tile_raw("RGGB", {"R": 100, "G1": 100, "G2": 100, "B": 100}, matrix=np.ones((3, 3)))
    with pytest.raises(IsplabError, match="singular"):
        raw_to_xyz(singular)
    with pytest.raises(IsplabError, match="not found"):
        load_raw_xyz(tmp_path / "missing.dng")


def test_a_dng_without_colour_matrix_is_refused_naming_the_file(tmp_path):
    raw = _tile_raw("RGGB", {"R": 100, "G1": 100, "G2": 100, "B": 100}, matrix=None)
    path = write_dng(tmp_path / "nomatrix.dng", raw)
    with pytest.raises(IsplabError, match=r"nomatrix\.dng has no colour matrix"):
        load_raw_xyz(path)
