"""read_image / write_image and the dtype helpers, checked against independent readers/writers."""

from __future__ import annotations

import numpy as np
import OpenEXR
import pytest
import tifffile
from PIL import Image

from isplab.errors import IsplabError
from isplab.io import read_image, to_float, to_uint8, to_uint16, write_image

SHAPES = [(6, 10), (6, 10, 3), (6, 10, 4)]
LOSSLESS = [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint8), (".tiff", np.uint16),
            (".tif", np.float32), (".exr", np.float32)]


def random_image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.uniform(-0.5, 4.0, shape).astype(np.float32)  # HDR range survives TIFF/EXR
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("suffix", "dtype"), LOSSLESS)
def test_lossless_round_trip(tmp_path, suffix, dtype, shape):
    image = random_image(shape, dtype)
    path = write_image(tmp_path / f"img{suffix}", image)
    back = read_image(path)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, image)


def test_channel_order_is_rgb_in_png_and_jpeg(tmp_path):
    """Pillow (RGB natively) sees red where we wrote red, and we read Pillow's red back as red."""
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 200  # red
    image[..., 2] = 30
    for suffix in (".png", ".jpg"):
        path = write_image(tmp_path / f"red{suffix}", image)
        np.testing.assert_allclose(np.asarray(Image.open(path).convert("RGB")), image, atol=3)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "pil.png")
    np.testing.assert_array_equal(read_image(tmp_path / "pil.png"), rgba)


def test_jpeg_round_trip_is_close(tmp_path):
    y, x = np.mgrid[0:32, 0:48]
    image = np.stack([x * 5, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)  # smooth: JPEG-friendly
    back = read_image(write_image(tmp_path / "a.jpeg", image, jpeg_quality=100))
    assert back.dtype == np.uint8 and back.shape == image.shape
    assert np.abs(back.astype(int) - image).mean() < 2.0
    grey = read_image(write_image(tmp_path / "g.jpg", image[..., 1]))
    assert grey.shape == (32, 48)


def test_tiff_read_by_tifffile_and_planar_tiff_read(tmp_path):
    image = random_image((5, 7, 3), np.float32)
    write_image(tmp_path / "a.tif", image)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), image)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), image)


def test_exr_read_by_openexr_and_half_exr_read(tmp_path):
    image = random_image((5, 7, 3), np.float32)
    write_image(tmp_path / "a.exr", image)
    with OpenEXR.File(str(tmp_path / "a.exr"), separate_channels=True) as exr:
        channels = exr.channels()
        for i, name in enumerate("RGB"):
            np.testing.assert_array_equal(channels[name].pixels, image[..., i])
    half = image.astype(np.float16)
    with OpenEXR.File({"type": OpenEXR.scanlineimage}, {"RGB": half}) as exr:
        exr.write(str(tmp_path / "half.exr"))
    back = read_image(tmp_path / "half.exr")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, half.astype(np.float32))


def test_overwrite_refused_then_allowed(tmp_path):
    path = write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(IsplabError, match=r"a\.png already exists; pass overwrite=True"):
        write_image(path, np.ones((4, 4), np.uint8))
    np.testing.assert_array_equal(read_image(path), 0)
    write_image(path, np.ones((4, 4), np.uint8), overwrite=True)
    np.testing.assert_array_equal(read_image(path), 1)


def test_single_channel_3d_written_as_grey(tmp_path):
    image = random_image((4, 6, 1), np.uint16)
    back = read_image(write_image(tmp_path / "g.png", image))
    np.testing.assert_array_equal(back, image[..., 0])


@pytest.mark.parametrize(
    ("name", "image", "message"),
    [
        ("a.png", np.zeros((4, 4), np.float32), r"a\.png: \.png takes uint8, uint16 images, got float32"),
        ("a.jpg", np.zeros((4, 4), np.uint16), r"a\.jpg: \.jpg takes uint8 images, got uint16"),
        ("a.exr", np.zeros((4, 4), np.uint8), r"\.exr takes float32 images, got uint8"),
        ("a.tif", np.zeros((4, 4), np.float64), r"\.tif takes uint8, uint16, float32 images, got float64"),
        ("a.jpg", np.zeros((4, 4, 4), np.uint8), r"a\.jpg: expected an \(H, W\), \(H, W, 3\).*got shape \(4, 4, 4\)"),
        ("a.png", np.zeros((4, 4, 2), np.uint8), r"got shape \(4, 4, 2\)"),
        ("a.png", np.zeros((2, 4, 4, 3), np.uint8), r"got shape \(2, 4, 4, 3\)"),
        ("a.gif", np.zeros((4, 4), np.uint8), r"a\.gif: unknown image extension '\.gif'"),
    ],
)
def test_write_errors(tmp_path, name, image, message):
    with pytest.raises(IsplabError, match=message):
        write_image(tmp_path / name, image)


def test_write_into_missing_folder(tmp_path):
    for name, image in (("x.png", np.zeros((4, 4), np.uint8)), ("x.tif", np.zeros((4, 4), np.uint8)),
                        ("x.exr", np.zeros((4, 4), np.float32))):
        with pytest.raises(IsplabError, match=rf"cannot write image .*nowhere.*{name}"):
            write_image(tmp_path / "nowhere" / name, image)


def test_read_errors(tmp_path):
    with pytest.raises(IsplabError, match=r"image file not found: .*missing\.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(IsplabError, match=r"folder\.png is a folder: expected an image file"):
        read_image(tmp_path / "folder.png")
    for name in ("junk.png", "junk.tif", "junk.exr", "empty.jpg"):
        (tmp_path / name).write_bytes(b"" if name.startswith("empty") else b"definitely not an image" * 10)
        with pytest.raises(IsplabError, match=rf"cannot (read|decode) image .*{name}"):
            read_image(tmp_path / name)


def test_to_float():
    np.testing.assert_array_equal(to_float(np.array([0, 51, 255], np.uint8)), np.array([0, 0.2, 1], np.float32))
    np.testing.assert_allclose(to_float(np.array([0, 257, 65535], np.uint16)), [0, 257 / 65535, 1], rtol=1e-7)
    assert to_float(np.zeros(2, np.uint16)).dtype == np.float32
    hdr = np.array([-0.5, 2.0], np.float64)
    np.testing.assert_array_equal(to_float(hdr), hdr.astype(np.float32))  # floats are not clipped
    with pytest.raises(IsplabError, match=r"to_float expects a uint8, uint16 or float image, got int32"):
        to_float(np.zeros(2, np.int32))


def test_to_uint_rounds_and_clips():
    x = np.array([-1.0, 0.0, 0.5 / 255, 0.6 / 255, 0.3, 1.0, 7.0], np.float32)
    np.testing.assert_array_equal(to_uint8(x), np.rint(np.clip(x.astype(np.float64), 0, 1) * 255).astype(np.uint8))
    np.testing.assert_array_equal(to_uint8(x)[[0, 3, 5, 6]], [0, 1, 255, 255])
    np.testing.assert_array_equal(to_uint16(x), np.rint(np.clip(x.astype(np.float64), 0, 1) * 65535).astype(np.uint16))
    assert to_uint16(x)[4] == 19661  # float32(0.3) * 65535 = 19660.5008
    # Integer input is rescaled between ranges.
    np.testing.assert_array_equal(to_uint16(np.array([0, 1, 255], np.uint8)), [0, 257, 65535])
    np.testing.assert_array_equal(to_uint8(np.array([0, 257, 65535, 65407], np.uint16)), [0, 1, 255, 255])
    assert to_uint8(np.zeros(1, np.uint16)).dtype == np.uint8


def test_to_uint8_round_trip_exact():
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(to_float(values)), values)
    values16 = np.arange(0, 65536, 7, dtype=np.uint16)
    np.testing.assert_array_equal(to_uint16(to_float(values16)), values16)
