"""HDR log encoding (the seed's formulas and their inverse) and reading sky images."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile

from isplab.errors import IsplabError
from isplab.io.image import write_image
from isplab.workflows.sky.hdr import LogEncoding, log_decode, log_encode, network_input, read_sky_image, tone_map


# --- the seed's code, verbatim except dnnlib.EasyDict -> SimpleNamespace -------------------------
def seed_log_transform(x, transform_cfg):
    if transform_cfg.input_mul != 1.0:
        x = x * transform_cfg.input_mul
    x = x + transform_cfg.log_epsilon

    log_x = np.log(x)
    pow_x = np.power(x, 1.0 / transform_cfg.log_pow) - 1.0

    if transform_cfg.log_split_around1:
        x = np.where(x < 1.0, log_x, pow_x)
    else:
        x = log_x
    return (x + transform_cfg.output_bias) * transform_cfg.output_scale


def seed_invert_log_transform(y, transform_cfg):
    y = y / transform_cfg.output_scale - transform_cfg.output_bias

    exp_y = np.exp(y)
    pow_y = np.power(y + 1.0, transform_cfg.log_pow)

    if transform_cfg.log_split_around1:
        y = np.where(y < 0.0 / transform_cfg.input_mul, exp_y, pow_y)
    else:
        y = exp_y
    y = y - transform_cfg.log_epsilon

    if transform_cfg.input_mul != 1.0:
        y = y / transform_cfg.input_mul
    return y


ENCODINGS = [
    LogEncoding(),
    LogEncoding(log_split_around1=True),
    LogEncoding(input_mul=2.0**8, log_epsilon=1e-4, log_split_around1=True, log_pow=5.0, output_bias=1.0, output_scale=0.3),
    LogEncoding(input_mul=0.5, output_bias=0.0, output_scale=1.0),
]
HDR_VALUES = np.concatenate([[0.0, 1e-6, 0.5, 0.999, 1.0, 1.001, 2.0, 1e3, 5e4, 1e5], np.geomspace(1e-5, 1e5, 200)])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the seed computes both branches everywhere
@pytest.mark.parametrize("enc", ENCODINGS)
def test_encode_matches_the_seeds_formulas(enc):
    cfg = SimpleNamespace(**enc.to_dict())
    np.testing.assert_allclose(log_encode(HDR_VALUES, enc), seed_log_transform(HDR_VALUES, cfg), rtol=1e-6, atol=1e-6)
    y = seed_log_transform(HDR_VALUES, cfg)
    np.testing.assert_allclose(log_decode(y, enc), seed_invert_log_transform(y, cfg), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("enc", ENCODINGS)
def test_round_trip(enc):
    back = log_decode(log_encode(HDR_VALUES, enc), enc)
    np.testing.assert_allclose(back, HDR_VALUES, rtol=2e-5, atol=1e-7)


def test_known_values():
    # default: (log(x + 1e-3) + 2.5) / 4.4
    assert log_encode(np.array([0.0]))[0] == pytest.approx((np.log(1e-3) + 2.5) / 4.4, abs=1e-6)
    assert log_encode(np.array([1.0 - 1e-3]))[0] == pytest.approx(2.5 / 4.4, abs=1e-6)
    split = LogEncoding(log_split_around1=True)
    # above 1 the split uses the power curve: (x'^(1/7.5) - 1 + 2.5) / 4.4
    x = 127.999
    assert log_encode(np.array([x]), split)[0] == pytest.approx((128.0 ** (1 / 7.5) - 1 + 2.5) / 4.4, rel=1e-6)
    assert log_encode(np.array([x]))[0] == pytest.approx((np.log(128.0) + 2.5) / 4.4, rel=1e-6)
    # the split compresses highlights far more than the log does
    assert log_encode(np.array([1e5]), split)[0] < log_encode(np.array([1e5]))[0] - 0.5


def test_network_input_hdr_is_encoded_ldr_is_not():
    pixels = np.full((2, 2, 3), 0.5, np.float32)
    np.testing.assert_allclose(network_input(pixels, hdr=False), 0.5)
    np.testing.assert_allclose(network_input(pixels, hdr=True), (np.log(0.501) + 2.5) / 4.4, rtol=1e-6)


def _rgb(h=8, w=12):
    image = np.zeros((h, w, 3), np.float32)
    image[..., 0] = 4.0  # red dominant: a channel swap is visible
    image[..., 1] = np.linspace(0, 1, w)[None]
    image[..., 2] = 0.25
    return image


def test_reads_exr_tiff_npy_as_hdr(tmp_path):
    image = _rgb()
    image[0, 0] = (5e4, 1e-4, 0)
    write_image(tmp_path / "a.exr", image)
    tifffile.imwrite(tmp_path / "a.tif", image, photometric="rgb")
    np.save(tmp_path / "a.npy", image)
    for name in ("a.exr", "a.tif", "a.npy"):
        read = read_sky_image(tmp_path / name)
        assert read.hdr
        np.testing.assert_array_equal(read.pixels, image)


def test_reads_radiance_hdr_in_rgb_order(tmp_path):
    image = _rgb()
    cv2.imwrite(str(tmp_path / "a.hdr"), image[..., ::-1].copy())  # OpenCV writes BGR
    read = read_sky_image(tmp_path / "a.hdr")
    assert read.hdr
    np.testing.assert_allclose(read.pixels, image, rtol=0.01, atol=4.0 / 128)  # RGBE: 8-bit mantissas, shared exponent


def test_reads_ldr_scaled_to_unit_range(tmp_path):
    rgb8 = np.zeros((4, 6, 3), np.uint8)
    rgb8[..., 0], rgb8[..., 2] = 255, 51
    write_image(tmp_path / "a.png", rgb8)
    read = read_sky_image(tmp_path / "a.png")
    assert not read.hdr
    np.testing.assert_allclose(read.pixels[0, 0], [1.0, 0.0, 0.2], atol=1e-6)
    rgb16 = (rgb8.astype(np.uint16) * 257)
    write_image(tmp_path / "b.tif", rgb16)
    np.testing.assert_allclose(read_sky_image(tmp_path / "b.tif").pixels[0, 0], [1.0, 0.0, 0.2], atol=1e-6)
    write_image(tmp_path / "c.jpg", np.full((8, 8, 3), 128, np.uint8))
    assert read_sky_image(tmp_path / "c.jpg").pixels == pytest.approx(128 / 255, abs=2 / 255)
    np.save(tmp_path / "d.npy", np.full((3, 3), 255, np.uint8))  # grey -> 3 channels
    grey = read_sky_image(tmp_path / "d.npy")
    assert grey.pixels.shape == (3, 3, 3) and not grey.hdr and np.all(grey.pixels == 1.0)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 255, 7
    write_image(tmp_path / "e.png", rgba)
    np.testing.assert_array_equal(read_sky_image(tmp_path / "e.png").pixels[0, 0], [0, 1, 0])


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-1.0, "negative")])
def test_bad_hdr_values_are_refused_naming_the_file(tmp_path, bad, word):
    image = _rgb()
    image[2, 3, 1] = bad
    write_image(tmp_path / "bad.exr", image)
    with pytest.raises(IsplabError, match=rf"bad\.exr.*1 {word}"):
        read_sky_image(tmp_path / "bad.exr")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.exr").write_bytes(b"not an exr at all")
    with pytest.raises(IsplabError, match=r"junk\.exr"):
        read_sky_image(tmp_path / "junk.exr")
    (tmp_path / "junk.hdr").write_bytes(b"nope")
    with pytest.raises(IsplabError, match=r"junk\.hdr.*Radiance"):
        read_sky_image(tmp_path / "junk.hdr")
    with pytest.raises(IsplabError, match="not found"):
        read_sky_image(tmp_path / "missing.exr")
    with pytest.raises(IsplabError, match="unknown image extension"):
        read_sky_image(tmp_path / "x.gif")


def test_tone_map_values():
    hdr = np.ones((4, 4, 3), np.float32)  # median 1 -> scaled to 0.18, Reinhard, gamma 1/2.2
    expected = round((0.18 / 1.18) ** (1 / 2.2) * 255)
    assert np.all(tone_map(hdr, True) == expected)
    assert np.all(tone_map(np.full((2, 2, 3), 2.0, np.float32), False) == 255)


@pytest.mark.parametrize("enc", ENCODINGS)
def test_torch_encoding_equals_the_numpy_one(enc):
    import torch

    from isplab.workflows.sky.hdr import log_encode_torch

    got = log_encode_torch(torch.from_numpy(HDR_VALUES.astype(np.float32)), enc).numpy()
    np.testing.assert_allclose(got, log_encode(HDR_VALUES.astype(np.float32), enc), rtol=1e-5, atol=2e-6)
