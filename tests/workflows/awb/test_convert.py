"""DNG -> AWB statistics conversion, on DNGs written by isplab with known labels.

The scene is lit at a known colour temperature T: after black level, a grey's R/G and B/G equal the
test tuning's CT curve at T, and the file is named with the gains 1/r, 1/b. Expected statistics are
recomputed here with plain numpy/OpenCV from the documented steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.io import RawImage, read_image, read_raw, write_dng
from isplab.workflows.awb.convert import convert_dng, convert_folder, label_gains, parse_annotated_name

CURVE = [2800.0, 0.80, 0.35, 4000.0, 0.60, 0.48, 5000.0, 0.52, 0.55, 7600.0, 0.38, 0.70]
CCMS = [
    {"ct": 3000, "ccm": [1.9, -0.6, -0.3, -0.4, 1.7, -0.3, 0.1, -0.9, 1.8]},
    {"ct": 6000, "ccm": [1.5, -0.3, -0.2, -0.2, 1.5, -0.3, 0.0, -0.4, 1.4]},
]
LUX = {"reference_shutter_speed": 10000, "reference_gain": 1.0, "reference_aperture": 1.0,
       "reference_lux": 1000, "reference_Y": 10000}
BLACK, WHITE = 256, 4095
T_SCENE, T_CAMERA = 4500.0, 6000.0
PATTERN = "GRBG"  # a non-RGGB layout, to check the planes are picked by colour
SENSOR = "testcam"


def _alsc(h: int, w: int) -> dict:
    y, x = np.mgrid[0:h, 0:w]
    radius2 = ((y - (h - 1) / 2) / h) ** 2 + ((x - (w - 1) / 2) / w) ** 2
    lum = 1 + 2 * radius2  # vignetting correction, strongest in the corners
    tables = {3000: (1.6 + 0.3 * x / w, 1.1 + 0.2 * y / h), 6000: (1.3 + 0.1 * y / h, 1.4 + 0.2 * x / w)}
    return {
        "luminance_strength": 0.8,
        "calibrations_Cr": [{"ct": ct, "table": np.round(cr, 3).ravel().tolist()} for ct, (cr, _) in tables.items()],
        "calibrations_Cb": [{"ct": ct, "table": np.round(cb, 3).ravel().tolist()} for ct, (_, cb) in tables.items()],
        "luminance_lut": np.round(lum, 3).ravel().tolist(),
    }


def _tuning_dict(target: str) -> dict:
    h, w = (32, 32) if target == "pisp" else (12, 16)
    return {"version": 2.0, "target": "pisp" if target == "pisp" else "bcm2835", "algorithms": [
        {"rpi.black_level": {"black_level": 4096}},
        {"rpi.lux": LUX},
        {"rpi.awb": {"ct_curve": CURVE, "sensitivity_r": 1.0, "sensitivity_b": 1.0}},
        {"rpi.alsc": _alsc(h, w)},
        {"rpi.contrast": {"gamma_curve": [0, 0, 16384, 40000, 65535, 65535]}},
        {"rpi.ccm": {"ccms": CCMS}},
    ]}


@pytest.fixture(scope="module")
def tuning_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tunings")
    for target in ("pisp", "vc4"):
        (root / target).mkdir()
        (root / target / f"{SENSOR}.json").write_text(json.dumps(_tuning_dict(target)))
    return root


def _curve_rb(t: float) -> tuple[float, float]:
    c = np.reshape(CURVE, (-1, 3))
    return float(np.interp(t, c[:, 0], c[:, 1])), float(np.interp(t, c[:, 0], c[:, 2]))


def _scene_mosaic(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """Mosaic of a scene lit at T_SCENE: smooth grey-level variation plus a grey patch, with a
    coloured square; R = r * G and B = b * G for the grey parts, r, b from the CT curve."""
    r, b = _curve_rb(T_SCENE)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    level = 800 + 1200 * (x / w) + 300 * np.sin(y / 9) + rng.uniform(0, 40, (h, w))
    rgb = np.stack([level * r, level, level * b])
    rgb[:, 60:80, 90:120] *= np.array([1.6, 0.7, 0.5])[:, None, None]  # a coloured object
    rgb[:, 10:40, 10:50] = np.array([r, 1.0, b])[:, None, None] * 1500  # the grey card
    colour = {"R": 0, "G": 1, "B": 2}
    mosaic = np.empty((h, w))
    for i, c in enumerate(PATTERN):
        dy, dx = divmod(i, 2)
        mosaic[dy::2, dx::2] = rgb[colour[c], dy::2, dx::2]
    return np.clip(np.round(mosaic + BLACK), 0, WHITE).astype(np.uint16)


def _write_scene(folder: Path, name: str, **overrides) -> Path:
    r_cam, b_cam = _curve_rb(T_CAMERA)
    fields = dict(
        mosaic=_scene_mosaic(), cfa_pattern=PATTERN, black_level=[BLACK] * 4, white_level=WHITE,
        as_shot_neutral=[r_cam, 1.0, b_cam], color_matrix=None, exposure_time=0.02, iso=200,
        make="Raspberry Pi", model=SENSOR,
    )
    fields.update(overrides)
    return write_dng(folder / name, RawImage(**fields))


def _gain_name(user: str = "alice", id_: str = "7") -> str:
    r, b = _curve_rb(T_SCENE)
    return f"{user},{SENSOR},{id_},{1 / r:.5f},{1 / b:.5f}.dng"


# --- independent reference computation ---------------------------------------------------------


def _planes_rgb(mosaic: np.ndarray, subtract_black: bool = True) -> np.ndarray:
    """GRBG mosaic -> (h, w, 3) uint16 as documented (greens averaged, black, /white, x65535, truncate)."""
    m = mosaic.astype(np.float64)
    g1, red, blue, g2 = m[0::2, 0::2], m[0::2, 1::2], m[1::2, 0::2], m[1::2, 1::2]
    rgb = np.stack([red, (g1 + g2) / 2, blue], axis=-1) - (BLACK if subtract_black else 0)
    return (np.clip(rgb / WHITE, 0, 1) * 65535).astype(np.uint16)


def _alsc_tables(target: str, ct: float, size_wh: tuple[int, int]) -> np.ndarray:
    alsc = _tuning_dict(target)["algorithms"][3]["rpi.alsc"]
    shape = (32, 32) if target == "pisp" else (12, 16)
    w = float(np.clip((ct - 3000) / 3000, 0, 1))
    cr = (1 - w) * np.array(alsc["calibrations_Cr"][0]["table"]) + w * np.array(alsc["calibrations_Cr"][1]["table"])
    cb = (1 - w) * np.array(alsc["calibrations_Cb"][0]["table"]) + w * np.array(alsc["calibrations_Cb"][1]["table"])
    lum = (np.array(alsc["luminance_lut"]) - 1) * 0.8 + 1
    out = []
    for t in (cr * lum, lum, cb * lum):
        t = t.reshape(shape) / t.min()
        out.append(cv2.resize(t, size_wh, interpolation=cv2.INTER_LINEAR))
    return np.stack(out, axis=-1)


def _render(small: np.ndarray, target: str, ct: float, gains=None) -> np.ndarray:
    x = np.clip(small * _alsc_tables(target, ct, small.shape[1::-1]), 0, 65535)
    if gains is None:
        r, b = _curve_rb(ct)
        gains = (1 / r, 1 / b)
    x = np.clip(x * [gains[0], 1, gains[1]], 0, 65535)
    w = float(np.clip((ct - 3000) / 3000, 0, 1))
    ccm = ((1 - w) * np.array(CCMS[0]["ccm"]) + w * np.array(CCMS[1]["ccm"])).reshape(3, 3)
    x = np.einsum("ij,hwj->hwi", ccm, x)
    return np.clip(x / 65535, 0, 1)


def _expected_lux(rgb16: np.ndarray, gains) -> float:
    y = np.mean(0.299 * gains[0] * rgb16[..., 0] + 0.587 * rgb16[..., 1] + 0.114 * gains[1] * rgb16[..., 2])
    # exposure 0.02 s vs 10000 us reference, ISO 200 (gain 2) vs 1, no aperture recorded
    return 1000 * y / 10000 * (10000 / 20000) * (1 / 2) * 1.05


# --- tests ---------------------------------------------------------------------------------------


def test_pisp_stats_labels_and_values(tmp_path, tuning_dir):
    path = _write_scene(tmp_path, _gain_name())
    stats, true_temp, lux, camera_temp, sensor = convert_dng(path, "pisp", tuning_dir=tuning_dir)
    assert sensor == SENSOR
    assert stats.shape == (32, 32, 3) and stats.dtype == np.uint16
    assert true_temp == pytest.approx(T_SCENE, abs=3)
    assert camera_temp == pytest.approx(T_CAMERA, abs=3)

    mosaic = read_raw(path).mosaic
    rgb16 = _planes_rgb(mosaic)
    gains = tuple(float(g) for g in parse_annotated_name(path).gains)
    assert lux == pytest.approx(_expected_lux(rgb16, gains), rel=1e-9)
    small = cv2.resize(rgb16, (32, 32), interpolation=cv2.INTER_AREA)
    expected = (_render(small, "pisp", 5000.0) * 65535).astype(np.uint16)
    np.testing.assert_allclose(stats.astype(int), expected.astype(int), atol=1)


def test_vc4_lux_uses_lens_shading_at_true_temperature(tmp_path, tuning_dir):
    path = _write_scene(tmp_path, _gain_name())
    stats, true_temp, lux, _, _ = convert_dng(path, "vc4", tuning_dir=tuning_dir)
    assert stats.shape == (12, 16, 3) and stats.dtype == np.uint16

    mosaic = read_raw(path).mosaic.astype(np.float32) - BLACK
    mosaic = np.clip(mosaic, 0, WHITE)
    tables = _alsc_tables("vc4", true_temp, (64, 48))  # bilinear up to the half-resolution planes
    g1, red, blue, g2 = (0, 0), (0, 1), (1, 0), (1, 1)
    for (dy, dx), channel in ((g1, 1), (red, 0), (blue, 2), (g2, 1)):
        mosaic[dy::2, dx::2] *= tables[..., channel]
    shaded = np.clip(mosaic, 0, WHITE).astype(np.uint16)
    gains = parse_annotated_name(path).gains
    assert lux == pytest.approx(_expected_lux(_planes_rgb(shaded, subtract_black=False), gains), rel=1e-9)
    pisp_lux = convert_dng(path, "pisp", tuning_dir=tuning_dir)[2]
    assert lux > pisp_lux * 1.1  # the shading gains brighten the image

    small = cv2.resize(_planes_rgb(read_raw(path).mosaic), (16, 12), interpolation=cv2.INTER_AREA)
    expected = (_render(small, "vc4", 5000.0) * 65535).astype(np.uint16)
    np.testing.assert_allclose(stats.astype(int), expected.astype(int), atol=1)


def test_lux_matches_analytic_value_for_flat_grey(tmp_path, tuning_dir):
    r, b = _curve_rb(T_SCENE)
    flat = np.empty((48, 64), dtype=np.uint16)
    values = {"G": 2000, "R": round(2000 * r), "B": round(2000 * b)}
    for i, c in enumerate(PATTERN):
        flat[i // 2 :: 2, i % 2 :: 2] = BLACK + values[c]
    path = _write_scene(tmp_path, _gain_name(), mosaic=flat)
    _, _, lux, _, _ = convert_dng(path, "pisp", tuning_dir=tuning_dir)
    y = 2000 / WHITE * 65535  # grey balanced by the label: luma Y = G, in 16-bit units
    assert lux == pytest.approx(1000 * y / 10000 * 0.5 * 0.5 * 1.05, rel=2e-3)


def test_grey_rectangle_label(tmp_path, tuning_dir):
    path = _write_scene(tmp_path, f"bob,{SENSOR},3,11,11,49,39.dng")  # odd corners round down to even
    name = parse_annotated_name(path)
    assert name.grey_box == (10, 10, 48, 38) and name.gains is None
    red_gain, blue_gain = label_gains(read_raw(path), name)
    r, b = _curve_rb(T_SCENE)
    assert (red_gain, blue_gain) == pytest.approx((1 / r, 1 / b), rel=2e-3)
    assert convert_dng(path, "pisp", tuning_dir=tuning_dir)[1] == pytest.approx(T_SCENE, abs=5)


def test_resize_and_colour_test_preview(tmp_path, tuning_dir):
    path = _write_scene(tmp_path, _gain_name())
    stats, *_ = convert_dng(path, "pisp", tuning_dir=tuning_dir, resize=(20, 10))
    assert stats.shape == (10, 20, 3)
    preview, true_temp, *_ = convert_dng(path, "pisp", tuning_dir=tuning_dir, resize=(64, 48), colour_test=True)
    small = _planes_rgb(read_raw(path).mosaic)  # already 64x48
    gains = parse_annotated_name(path).gains
    linear = (_render(small, "pisp", true_temp, gains) * 65535).astype(np.uint16)
    gamma = np.interp(np.arange(65536), [0, 16384, 65535], [0, 40000, 65535]).astype(np.uint16)
    np.testing.assert_allclose(preview.astype(int), gamma[linear].astype(int), atol=2)


def test_parse_errors_name_file_and_patterns(tmp_path):
    pattern = r"<user>,<sensor>,<id>,<red_gain>,<blue_gain>\.dng or <user>,<sensor>,<id>,<x1>,<y1>,<x2>,<y2>\.dng"
    with pytest.raises(IsplabError, match=rf"'alice,imx708\.dng'.*{pattern}"):
        parse_annotated_name("alice,imx708.dng")
    with pytest.raises(IsplabError, match=r"'a,imx708,1,red,1\.5\.dng'.*positive numbers"):
        parse_annotated_name("a,imx708,1,red,1.5.dng")
    with pytest.raises(IsplabError, match=r"'a,imx708,1,10,10,4,20\.dng' is empty"):
        parse_annotated_name("a,imx708,1,10,10,4,20.dng")


def test_missing_tuning_lists_paths(tmp_path, tuning_dir):
    path = _write_scene(tmp_path, "alice,imx999,1,1.5,1.8.dng")
    with pytest.raises(IsplabError, match=r"no pisp tuning file for sensor 'imx999'; searched .*imx999\.json"):
        convert_dng(path, "pisp", tuning_dir=tuning_dir)


def test_convert_folder_skips_bad_files_and_splits(tmp_path, tuning_dir):
    src = tmp_path / "dngs"
    (src / "sub").mkdir(parents=True)
    good = _write_scene(src / "sub", _gain_name("alice", "1"))
    _write_scene(src, _gain_name("bob", "2"))
    (src / f"carol,{SENSOR},3,1.5,1.8.dng").write_bytes(b"II*\x00 not really a dng")
    _write_scene(src, "misnamed.dng")
    out = tmp_path / "out"
    summary = convert_folder(src, out, "pisp", tuning_dir=tuning_dir, workers=2, progress=False)
    assert len(summary.written) == 2 and summary.train == 2 and summary.test == 0
    failed = {p.name: message for p, message in summary.failed}
    assert set(failed) == {f"carol,{SENSOR},3,1.5,1.8.dng", "misnamed.dng"}
    assert "misnamed.dng" in failed["misnamed.dng"] and "expected" in failed["misnamed.dng"]
    assert not summary.ok and "2 failed" in str(summary)
    stats, true_temp, lux, camera_temp, _ = convert_dng(good, "pisp", tuning_dir=tuning_dir)
    expected = out / "train" / f"alice,{SENSOR},1,{round(true_temp)},{round(lux)},{round(camera_temp)}.png"
    assert expected in summary.written
    np.testing.assert_array_equal(read_image(expected), stats)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(p.name for p in summary.written)

    summary = convert_folder(src, tmp_path / "all_test", "vc4", split=1.0, tuning_dir=tuning_dir, workers=1,
                             progress=False)
    assert summary.test == 2 and summary.train == 0
    assert read_image(summary.written[0]).shape == (12, 16, 3)


def test_convert_folder_argument_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IsplabError, match=r"no \.dng files in .*empty"):
        convert_folder(tmp_path / "empty", tmp_path / "out", "pisp", progress=False)
    with pytest.raises(IsplabError, match="split must be a proportion between 0 and 1, got 1.5"):
        convert_folder(tmp_path / "empty", tmp_path / "out", "pisp", split=1.5, progress=False)
    with pytest.raises(IsplabError, match="unknown target 'pi4'"):
        convert_folder(tmp_path / "empty", tmp_path / "out", "pi4", progress=False)
