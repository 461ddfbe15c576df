"""read_raw / write_dng, checked against rawpy (LibRaw) and tifffile as independent readers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rawpy
import tifffile
from pidng.core import RAW2DNG, DNGTags, Tag
from pidng.defs import PhotometricInterpretation

from isplab.errors import IsplabError, RawReadError
from isplab.io import RawImage, read_raw, write_dng
from isplab.isp import bayer

PATTERNS = bayer.PATTERNS
# dcraw/LibRaw's xyz_rgb (linear sRGB -> XYZ, D65), used to check how LibRaw read ColorMatrix1.
XYZ_FROM_SRGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
# A typical camera ColorMatrix (XYZ -> camera RGB, D65); tests perturb it to stay realistic.
CAMERA_MATRIX = np.array([[0.6347, -0.0479, -0.0972], [-0.8297, 1.5954, 0.2480], [-0.1968, 0.2131, 0.7649]])


def random_raw(pattern: str, seed: int, shape=(64, 96)) -> RawImage:
    rng = np.random.default_rng(seed)
    white = int(rng.integers(1023, 65536))
    black = rng.integers(0, 200, 4).astype(np.float64)  # deliberately different per plane
    matrix = CAMERA_MATRIX + rng.uniform(-0.05, 0.05, (3, 3))
    return RawImage(
        mosaic=rng.integers(0, white + 1, shape, dtype=np.uint16),
        cfa_pattern=pattern,
        black_level=black,
        white_level=white,
        as_shot_neutral=[rng.uniform(0.2, 1.0), 1.0, rng.uniform(0.2, 1.0)],
        color_matrix=matrix,
        exposure_time=float(rng.choice([1 / 4000, 1 / 60, 0.5, 2.0])),
        iso=int(rng.integers(50, 12800)),
        aperture=float(rng.choice([1.4, 2.8, 5.6, 16.0])),
        make=f"Maker{seed}",
        model=f"Model {pattern}",
        unique_camera_model=f"Maker{seed} Model {pattern}",
    )


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dng_round_trip_matches_rawpy(tmp_path, pattern):
    raw = random_raw(pattern, seed=PATTERNS.index(pattern))
    path = write_dng(tmp_path / "frame.dng", raw)
    assert path == tmp_path / "frame.dng"

    with rawpy.imread(str(path)) as ref:
        np.testing.assert_array_equal(ref.raw_image_visible, raw.mosaic)  # bit-exact
        layout = ref.raw_pattern
        desc = ref.color_desc.decode()
        assert "".join(desc[i] for i in layout.ravel()) == pattern
        # rawpy reports black levels by colour index; map each plane through its tile position.
        per_index = ref.black_level_per_channel
        offsets = bayer.plane_offsets(pattern)
        rawpy_black = [per_index[layout[offsets[p]]] for p in bayer.PLANES]
        np.testing.assert_array_equal(rawpy_black, raw.black_level)
        assert ref.white_level == raw.white_level
        multipliers = np.array(ref.camera_whitebalance[:3])
        np.testing.assert_allclose(1.0 / multipliers, raw.as_shot_neutral, rtol=1e-6)
        # LibRaw turns ColorMatrix1 into cmatrix = inverse of row-normalised (CM @ xyz_rgb).
        cam_rgb = raw.color_matrix @ XYZ_FROM_SRGB
        cam_rgb /= cam_rgb.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(ref.color_matrix[:, :3], np.linalg.inv(cam_rgb), rtol=1e-4, atol=1e-5)
        assert ref.other.shutter_speed == pytest.approx(raw.exposure_time, rel=1e-6)
        assert ref.other.aperture == pytest.approx(raw.aperture, rel=1e-6)
        assert ref.other.iso_speed == raw.iso

    back = read_raw(path)
    assert back.path == path
    np.testing.assert_array_equal(back.mosaic, raw.mosaic)
    assert back.mosaic.dtype == np.uint16
    assert back.cfa_pattern == pattern
    np.testing.assert_array_equal(back.black_level, raw.black_level)
    assert back.white_level == raw.white_level
    np.testing.assert_allclose(back.as_shot_neutral, raw.as_shot_neutral, rtol=1e-6)
    np.testing.assert_allclose(back.wb_gains, 1.0 / raw.as_shot_neutral, rtol=1e-6)
    np.testing.assert_allclose(back.color_matrix, raw.color_matrix, rtol=0, atol=1e-6)
    assert back.exposure_time == pytest.approx(raw.exposure_time, rel=1e-9)
    assert back.iso == raw.iso
    assert back.analogue_gain == pytest.approx(raw.iso / 100)
    assert back.aperture == pytest.approx(raw.aperture, rel=1e-9)
    assert (back.make, back.model, back.unique_camera_model) == (raw.make, raw.model, raw.unique_camera_model)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_rawpy_colours_agree_with_bayer_pack(tmp_path, pattern):
    """Every pixel bayer.pack puts in plane R/Gr/Gb/B has that colour according to LibRaw."""
    path = write_dng(tmp_path / "f.dng", random_raw(pattern, seed=7, shape=(24, 26)))
    with rawpy.imread(str(path)) as ref:
        colours = ref.raw_colors_visible
        letters = np.array(list(ref.color_desc.decode()))[colours]
    planes = bayer.pack(letters, pattern)
    for i, name in enumerate(bayer.PLANES):
        assert set(planes[i].ravel()) == {name[0]}
    # The two greens land in different planes and LibRaw's second green (index 3) is one of them.
    gr, gb = bayer.pack(colours, pattern)[1:3]
    assert len(set(gr.ravel())) == len(set(gb.ravel())) == 1 and gr[0, 0] != gb[0, 0]


def test_dng_tags_seen_by_tifffile(tmp_path):
    """A generic TIFF reader sees a valid CFA DNG with the tile-order black levels."""
    raw = random_raw("GRBG", seed=3)
    path = write_dng(tmp_path / "f.dng", raw)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        np.testing.assert_array_equal(page.asarray(), raw.mosaic)
        tags = page.tags
        assert tags["PhotometricInterpretation"].value == 32803
        assert list(tags["CFAPattern"].value) == [1, 0, 2, 1]
        # GRBG tile order is Gr, R, B, Gb.
        expected = [raw.black_level[i] for i in (1, 0, 3, 2)]
        assert list(tags["BlackLevel"].value) == expected
        assert list(tags["DNGVersion"].value) == [1, 4, 0, 0]
        assert tags["CalibrationIlluminant1"].value == 21
        exif = tags["ExifTag"].value  # capture settings in the Exif IFD, where EXIF puts them
        assert exif["ISOSpeedRatings"] == raw.iso
        assert exif["ExposureTime"][0] / exif["ExposureTime"][1] == pytest.approx(raw.exposure_time, rel=1e-9)


def test_optional_metadata_omitted(tmp_path):
    raw = dataclasses.replace(
        random_raw("RGGB", seed=4),
        exposure_time=None, iso=None, aperture=None, make="", model="", unique_camera_model=None, color_matrix=None,
    )
    back = read_raw(write_dng(tmp_path / "f.dng", raw))
    assert (back.exposure_time, back.iso, back.aperture, back.analogue_gain) == (None, None, None, None)
    assert back.color_matrix is None
    assert (back.make, back.model) == ("", "")
    assert back.unique_camera_model == "isplab"  # DNG requires one; the writer's fallback


def test_odd_visible_area_is_trimmed_to_even(tmp_path):
    # pidng's high-level writer lets us store an odd-sized CFA image that write_dng would refuse.
    mosaic = np.arange(23 * 25, dtype=np.uint16).reshape(23, 25)
    path = _pidng_dng(tmp_path / "odd.dng", mosaic, PhotometricInterpretation.Color_Filter_Array, cfa=[1, 2, 0, 1])
    back = read_raw(path)
    np.testing.assert_array_equal(back.mosaic, mosaic[:22, :24])
    assert back.cfa_pattern == "GBRG"


def test_overwrite_refused_then_allowed(tmp_path):
    path = tmp_path / "f.dng"
    first, second = random_raw("RGGB", seed=5), random_raw("BGGR", seed=6)
    write_dng(path, first)
    with pytest.raises(IsplabError, match=r"f\.dng already exists.*overwrite=True"):
        write_dng(path, second)
    np.testing.assert_array_equal(read_raw(path).mosaic, first.mosaic)  # untouched
    write_dng(path, second, overwrite=True)
    assert read_raw(path).cfa_pattern == "BGGR"


def test_write_into_missing_folder_names_file(tmp_path):
    with pytest.raises(IsplabError, match=r"cannot write DNG .*nowhere.*f\.dng"):
        write_dng(tmp_path / "nowhere" / "f.dng", random_raw("RGGB", seed=1))


def test_write_rejects_unstorable_values(tmp_path):
    raw = random_raw("RGGB", seed=2)
    with pytest.raises(IsplabError, match=r"black levels must be whole numbers"):
        write_dng(tmp_path / "a.dng", dataclasses.replace(raw, black_level=[64.5, 64, 64, 64]))
    with pytest.raises(IsplabError, match=r"ISO 70000 exceeds"):
        write_dng(tmp_path / "b.dng", dataclasses.replace(raw, iso=70000))
    with pytest.raises(IsplabError, match=r"make 'Caméra' must be ASCII"):
        write_dng(tmp_path / "c.dng", dataclasses.replace(raw, make="Caméra"))
    with pytest.raises(IsplabError, match=r"a 20x96 mosaic is smaller than 22x22"):
        write_dng(tmp_path / "e.dng", dataclasses.replace(raw, mosaic=raw.mosaic[:20]))
    with pytest.raises(IsplabError, match=r"expects a RawImage"):
        write_dng(tmp_path / "d.dng", raw.mosaic)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mosaic": np.zeros((4, 4), np.float32)}, r"2-D uint16 array, got shape \(4, 4\) dtype float32"),
        ({"mosaic": np.zeros((4, 4, 1), np.uint16)}, r"2-D uint16"),
        ({"mosaic": np.zeros((5, 4), np.uint16)}, r"even height and width, got 5x4"),
        ({"cfa_pattern": "RGBG"}, r"unknown CFA pattern 'RGBG'"),
        ({"black_level": [1, 2, 3]}, r"black_level .* must be 4 finite numbers"),
        ({"black_level": [0, 0, 0, 5000]}, r"black_level must lie in \[0, white_level=4095\)"),
        ({"white_level": 70000}, r"white_level must be an integer in 1..65535"),
        ({"as_shot_neutral": [0.5, 1.0, -1.0]}, r"as_shot_neutral must be positive"),
        ({"color_matrix": np.eye(4)}, r"color_matrix must be a finite 3x3"),
        ({"exposure_time": 0.0}, r"exposure_time must be positive"),
        ({"iso": 100.5}, r"iso must be a positive integer"),
    ],
)
def test_raw_image_validation(changes, message):
    fields = dict(
        mosaic=np.zeros((4, 4), np.uint16), cfa_pattern="RGGB", black_level=[64] * 4,
        white_level=4095, as_shot_neutral=[0.5, 1, 0.8], color_matrix=np.eye(3),
    )
    with pytest.raises(IsplabError, match=message):
        RawImage(**{**fields, **changes})


def test_raw_image_normalises():
    raw = RawImage(
        mosaic=np.zeros((2, 2), np.uint16), cfa_pattern="gbrg", black_level=(1, 2, 3, 4),
        white_level=np.int64(1023), as_shot_neutral=[1.0, 2.0, 3.0], color_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        path="x.dng",
    )
    assert raw.cfa_pattern == "GBRG"
    assert raw.black_level.dtype == np.float64 and raw.color_matrix.dtype == np.float64
    assert type(raw.white_level) is int
    np.testing.assert_allclose(raw.as_shot_neutral, [0.5, 1.0, 1.5])
    np.testing.assert_allclose(raw.wb_gains, [2.0, 1.0, 1 / 1.5])
    assert raw.path.name == "x.dng"
    with pytest.raises(dataclasses.FrozenInstanceError):
        raw.white_level = 5


# --- read errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(RawReadError, match=r"raw file not found: .*nope\.dng"):
        read_raw(tmp_path / "nope.dng")


@pytest.mark.parametrize("keep", [0.0, 0.02, 0.5, 0.99])
def test_truncated_dng(tmp_path, keep):
    data = write_dng(tmp_path / "full.dng", random_raw("RGGB", seed=8)).read_bytes()
    cut = tmp_path / "cut.dng"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(RawReadError, match=r"cut\.dng.*(truncated|not a raw file)"):
        read_raw(cut)


def test_png_and_text_are_not_raw(tmp_path):
    import cv2

    png = tmp_path / "picture.png"
    cv2.imwrite(str(png), np.zeros((8, 8, 3), np.uint8))
    text = tmp_path / "notes.txt"
    text.write_text("not a raw file\n" * 20)
    for path in (png, text):
        with pytest.raises(RawReadError, match=rf"{path.name} is not a raw file .*expected a camera raw"):
            read_raw(path)


def test_a_folder_is_not_a_raw_file(tmp_path):
    with pytest.raises(RawReadError, match=rf"^{tmp_path} is a folder: expected a camera raw file"):
        read_raw(tmp_path)


def test_raw_read_error_is_an_oserror(tmp_path):
    with pytest.raises(OSError):
        read_raw(tmp_path / "nope.dng")


def test_xtrans_dng_rejected(tmp_path):
    xtrans = [1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1,
              1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1]  # Fujifilm's 6x6 layout
    cfa = PhotometricInterpretation.Color_Filter_Array
    path = _pidng_dng(tmp_path / "xt.dng", np.zeros((48, 48), np.uint16), cfa, cfa=xtrans)
    with pytest.raises(RawReadError, match=r"xt\.dng holds an X-Trans sensor; expected a Bayer raw"):
        read_raw(path)


def test_linear_dng_rejected(tmp_path):
    path = _pidng_dng(tmp_path / "linear.dng", np.zeros((32, 32, 3), np.uint16), PhotometricInterpretation.Linear_Raw)
    with pytest.raises(RawReadError, match=r"linear\.dng holds linear \(demosaiced\).*expected a Bayer raw"):
        read_raw(path)


def _pidng_dng(path, pixels, photometric, cfa=None):
    """A minimal DNG written by pidng directly, for layouts write_dng deliberately cannot produce."""
    h, w = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    tags = DNGTags()
    tags.set(Tag.ImageWidth, w)
    tags.set(Tag.ImageLength, h)
    tags.set(Tag.TileWidth, w)
    tags.set(Tag.TileLength, h)
    tags.set(Tag.PhotometricInterpretation, photometric)
    tags.set(Tag.SamplesPerPixel, samples)
    tags.set(Tag.BitsPerSample, [16] * samples)
    tags.set(Tag.WhiteLevel, 65535)
    if cfa is not None:
        side = int(len(cfa) ** 0.5)
        tags.set(Tag.CFARepeatPatternDim, [side, side])
        tags.set(Tag.CFAPattern, cfa)
    writer = RAW2DNG()
    writer.options(tags, path="")
    path.write_bytes(writer.convert(pixels))
    return path


@pytest.mark.parametrize("ev", [-1.3219, 0.0, 0.4150375])
def test_baseline_exposure_round_trip(tmp_path, ev):
    """DNG BaselineExposure (tag 50730, SRATIONAL EV) is written and read back; LibRaw still reads the file."""
    raw = dataclasses.replace(random_raw("RGGB", seed=11), baseline_exposure=ev)
    path = write_dng(tmp_path / "exposed.dng", raw)
    back = read_raw(path)
    assert back.baseline_exposure == pytest.approx(ev, abs=1e-6)
    assert back.exposure_gain == pytest.approx(2.0**ev, rel=1e-6)
    np.testing.assert_array_equal(back.mosaic, raw.mosaic)
    with rawpy.imread(str(path)) as ref:
        np.testing.assert_array_equal(ref.raw_image_visible, raw.mosaic)
    with tifffile.TiffFile(path) as tif:
        numerator, denominator = tif.pages[0].tags[50730].value
    assert numerator / denominator == pytest.approx(ev, abs=1e-6)


def test_baseline_exposure_defaults_and_validation():
    raw = random_raw("RGGB", seed=12)
    assert raw.baseline_exposure == 0.0 and raw.exposure_gain == 1.0
    with pytest.raises(IsplabError, match="baseline_exposure must be a finite number of EV"):
        dataclasses.replace(raw, baseline_exposure=float("nan"))
