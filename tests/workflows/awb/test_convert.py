"""DNG -> AWB statistics conversion, on DNGs written by isplab with known labels.

The scene is lit at a known colour temperature T: after black level, a grey's R/G and B/G equal the
test tuning's CT curve at T, and the file is named with the gains 1/r, 1/b. Expected statistics are
recomputed here with plain numpy/OpenCV from the documented steps; at the end, isplab's converter is
compared with the numbers Raspberry Pi's own converter.py gave on isplab's synthetic Pi-like captures.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.io import RawImage, read_image, read_raw, write_dng
from isplab.isp.bayer import pack
from isplab.workflows.awb import synthetic
from isplab.workflows.awb.convert import convert_dng, convert_folder, label_gains, parse_annotated_name
from isplab.workflows.awb.tuning import find_tuning, load_tuning

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
    path = _write_scene(tmp_path, _gain_name(), mosaic=_flat_grey())
    _, _, lux, _, _ = convert_dng(path, "pisp", tuning_dir=tuning_dir)
    y = 2000 / WHITE * 65535  # grey balanced by the label: luma Y = G, in 16-bit units
    assert lux == pytest.approx(1000 * y / 10000 * 0.5 * 0.5 * 1.05, rel=2e-3)


def _shaded(mosaic: np.ndarray, target: str, ct: float) -> np.ndarray:
    """``mosaic`` seen through the lens the test tuning describes at ``ct``: the signal above black
    divided by the ALSC gains (what the tuning's lens-shading correction undoes)."""
    signal = mosaic.astype(np.float64) - BLACK
    h, w = signal.shape
    tables = _alsc_tables(target, ct, (w // 2, h // 2))
    for i, c in enumerate(PATTERN):
        dy, dx = divmod(i, 2)
        signal[dy::2, dx::2] /= tables[..., "RGB".index(c)]
    return np.clip(np.round(signal + BLACK), 0, WHITE).astype(np.uint16)


def _flat_grey(level: float = 2000.0) -> np.ndarray:
    """A frame-filling grey card lit at T_SCENE: G = ``level`` above black, R = r G, B = b G."""
    r, b = _curve_rb(T_SCENE)
    flat = np.empty((48, 64))
    values = {"G": level, "R": level * r, "B": level * b}
    for i, c in enumerate(PATTERN):
        flat[i // 2 :: 2, i % 2 :: 2] = values[c]
    return np.round(flat + BLACK).astype(np.uint16)


def _load_test_tuning(tuning_dir: Path, target: str):
    return load_tuning(tuning_dir / target / f"{SENSOR}.json")


@pytest.mark.parametrize("target", ["pisp", "vc4"])
def test_grey_rectangle_gains_are_measured_after_lens_shading_correction(tmp_path, tuning_dir, target):
    """A grey card seen through the lens the tuning describes: its gains are the light's (the CT
    curve's at T_SCENE) once the lens shading is corrected; on the raw mosaic, as Raspberry Pi's
    converter measures them, they also carry the lens's colour shading at the card."""
    mosaic = _shaded(_scene_mosaic(), target, T_SCENE)
    path = _write_scene(tmp_path, f"bob,{SENSOR},3,11,11,49,39.dng", mosaic=mosaic)  # odd corners round down
    name = parse_annotated_name(path)
    assert name.grey_box == (10, 10, 48, 38) and name.gains is None
    raw, tuning = read_raw(path), _load_test_tuning(tuning_dir, target)
    r, b = _curve_rb(T_SCENE)
    assert label_gains(raw, name, tuning) == pytest.approx((1 / r, 1 / b), rel=2e-3)
    assert convert_dng(path, target, tuning_dir=tuning_dir)[1] == pytest.approx(T_SCENE, abs=3)

    uncorrected = label_gains(raw, name)  # no tuning: the raw medians, 3% too low in red and in blue
    assert uncorrected[0] * r < 0.975 and uncorrected[1] * b < 0.975

    # The colour test renders lens shading, then the label's gains: the card comes out grey.
    preview = convert_dng(path, target, tuning_dir=tuning_dir, resize=(64, 48), colour_test=True)[0]
    red, green, blue = preview[6:19, 6:24].reshape(-1, 3).astype(float).mean(axis=0)  # inside the card
    assert red / green == pytest.approx(1, abs=0.005) and blue / green == pytest.approx(1, abs=0.005)


@pytest.mark.parametrize("target", ["pisp", "vc4"])
def test_grey_rectangle_in_a_shaded_corner_is_corrected_at_its_own_temperature(tmp_path, tuning_dir, target):
    """Grey at 6000 K boxed in the bottom-right corner, where the lens shades colour most: the raw
    medians' gains point to about 5810 K, and tables at that temperature still leave red 0.3% off;
    correcting again at each new temperature until it settles gives the light's gains."""
    r, b = _curve_rb(6000.0)
    flat = np.empty((96, 128))
    for i, c in enumerate(PATTERN):
        flat[i // 2 :: 2, i % 2 :: 2] = {"G": 1500, "R": 1500 * r, "B": 1500 * b}[c]
    mosaic = _shaded(np.round(flat + BLACK).astype(np.uint16), target, 6000.0)
    path = _write_scene(tmp_path, f"bob,{SENSOR},4,100,70,126,94.dng", mosaic=mosaic)
    raw, name, tuning = read_raw(path), parse_annotated_name(path), _load_test_tuning(tuning_dir, target)
    assert label_gains(raw, name, tuning) == pytest.approx((1 / r, 1 / b), rel=1.5e-3)
    uncorrected = label_gains(raw, name)
    assert tuning.ct_from_rb(1 / uncorrected[0], 1 / uncorrected[1]) < 5850


def test_grey_rectangle_without_lens_shading_uses_the_raw_medians(tmp_path):
    """A tuning without ``rpi.alsc``: the rectangle's gains are the raw medians' G/R, G/B."""
    flat_dir = tmp_path / "flat"
    (flat_dir / "pisp").mkdir(parents=True)
    tuning = _tuning_dict("pisp")
    tuning["algorithms"] = [a for a in tuning["algorithms"] if "rpi.alsc" not in a]
    (flat_dir / "pisp" / f"{SENSOR}.json").write_text(json.dumps(tuning))
    mosaic = _scene_mosaic()
    mosaic[12:36:3, 12:46:3] = WHITE  # specular highlights: the median ignores them
    path = _write_scene(tmp_path, f"bob,{SENSOR},3,10,10,48,38.dng", mosaic=mosaic)
    r, b = _curve_rb(T_SCENE)
    gains = label_gains(read_raw(path), parse_annotated_name(path), _load_test_tuning(flat_dir, "pisp"))
    assert gains == pytest.approx((1 / r, 1 / b), rel=2e-3)
    assert gains == label_gains(read_raw(path), parse_annotated_name(path))


# Raspberry Pi's converter.py (run as described at REFERENCE below) on the two files of the next test,
# target vc4: named by the gains, lux 840 (the right value); named by the rectangle, lux 888, because
# it recomputes the rectangle's gains after its lens-shading step has removed the black level, and so
# subtracts black twice (on PiSP: 676 and 678).
REFERENCE_VC4_LUX = {"gains": 840, "rectangle": 888}


def test_vc4_lux_of_a_grey_rectangle_is_the_lux_of_its_gains(tmp_path, tuning_dir):
    """A frame-filling grey card through the vc4 lens: corrected for lens shading the image is flat
    grey again, so luma balanced by the label is G and the lux is known exactly; naming the file by
    a rectangle or by the gains must not change it."""
    mosaic = _shaded(_flat_grey(), "vc4", T_SCENE)
    boxed = _write_scene(tmp_path, f"alice,{SENSOR},9,8,8,56,40.dng", mosaic=mosaic)
    typed = _write_scene(tmp_path, _gain_name("alice", "9"), mosaic=mosaic)
    lux_boxed = convert_dng(boxed, "vc4", tuning_dir=tuning_dir)[2]
    lux_typed = convert_dng(typed, "vc4", tuning_dir=tuning_dir)[2]
    y = 2000 / WHITE * 65535  # 16-bit green level: the luma of balanced grey
    expected = 1000 * y / 10000 * 0.5 * 0.5 * 1.05  # 0.02 s vs 10000 us, ISO 200 vs gain 1
    assert lux_boxed == pytest.approx(expected, rel=2e-3)
    assert lux_typed == pytest.approx(expected, rel=2e-3)
    assert round(lux_typed) == REFERENCE_VC4_LUX["gains"]
    assert REFERENCE_VC4_LUX["rectangle"] / expected > 1.05


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


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_convert_into_a_previous_dataset_is_refused_then_replaced(tmp_path, tuning_dir, isplab_cli):
    """A second conversion with another split must not leave the first split's test images in
    test/ (they are in train/ now): refused without --overwrite, replaced with it, other files kept."""
    src = tmp_path / "dngs"
    src.mkdir()
    for i in range(6):
        _write_scene(src, _gain_name("alice", str(i)))
    out = tmp_path / "dataset"
    options = ["--target", "pisp", "--tuning-dir", str(tuning_dir), "--workers", "1", "--no-progress"]
    first = isplab_cli("awb", "convert", str(src), str(out), "--split", "0.5", *options, "--workers", "2")
    assert first.returncode == 0, first.stderr
    assert "(3 train, 3 test)" in first.stdout
    rng = random.Random(0)  # the documented rule: seed 0, one draw per file in sorted order
    expected = {p.stem.split(",")[2] for p in sorted(src.glob("*.dng")) if rng.random() < 0.5}
    assert {p.stem.split(",")[2] for p in (out / "test").glob("*.png")} == expected
    (out / "train" / "notes.txt").write_text("mine")
    (out / "test" / "picked.png").write_bytes(b"a user's png, not a statistics image")
    before = _tree(out)

    refused = isplab_cli("awb", "convert", str(src), str(out), *options)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: dataset folder {out} already holds alice,{SENSOR},")
    assert "pass --overwrite" in lines[0]
    assert _tree(out) == before  # nothing converted, nothing deleted

    replaced = isplab_cli("awb", "convert", str(src), str(out), "--overwrite", *options)
    assert replaced.returncode == 0, replaced.stderr
    train = {p.name for p in (out / "train").glob("*.png")}
    test = {p.name for p in (out / "test").glob("*.png")}
    assert len(train) == 6 and test == {"picked.png"} and not train & test
    assert (out / "train" / "notes.txt").read_text() == "mine"


def test_overwrite_removes_partial_files_of_an_interrupted_run(tmp_path, tuning_dir):
    src = tmp_path / "dngs"
    src.mkdir()
    _write_scene(src, _gain_name("alice", "1"))
    out = tmp_path / "dataset"
    (out / "train").mkdir(parents=True)
    partial = out / "train" / f".alice,{SENSOR},0,4500,600,6000.partial123.png"
    partial.write_bytes(b"half a png")
    with pytest.raises(IsplabError, match=r"already holds \.alice.*partial123\.png: pass --overwrite"):
        convert_folder(src, out, "pisp", tuning_dir=tuning_dir, workers=1, progress=False)
    summary = convert_folder(src, out, "pisp", tuning_dir=tuning_dir, workers=1, progress=False, overwrite=True)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [summary.written[0].name]


def test_convert_folder_argument_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IsplabError, match=r"no \.dng files in .*empty"):
        convert_folder(tmp_path / "empty", tmp_path / "out", "pisp", progress=False)
    with pytest.raises(IsplabError, match="split must be a proportion between 0 and 1, got 1.5"):
        convert_folder(tmp_path / "empty", tmp_path / "out", "pisp", split=1.5, progress=False)
    with pytest.raises(IsplabError, match="unknown target 'pi4'"):
        convert_folder(tmp_path / "empty", tmp_path / "out", "pi4", progress=False)


# --- Raspberry Pi's converter.py on isplab's synthetic Pi-like camera ---------------------------
#
# REFERENCE: numbers from Raspberry Pi's converter.py (repository raspberrypi/awb_nn, commit a21e142,
# unmodified) run outside this repository on the captures of `pi_like_captures` and on the files of
# test_vc4_lux_of_a_grey_rectangle_is_the_lux_of_its_gains: `process_folder(dng, out, "PISP"|"VC4",
# (32, 32)|(16, 12), 0.0, False)` with the tuning files in its search path. Its `pyexiv2` (py3exiv2,
# a C++ extension not installable here) was replaced by a stand-in answering the same three calls
# (ExposureTime, ISOSpeedRatings, aperture) from `exiftool -n`, i.e. with the exact tag values.
# To regenerate after the synthetic camera changes: benchmarks/awb_reference_converter.py runs it; copy
# the PNG names and values it writes.

#: (target, "<user>,<id>") -> ((true_temp, lux, camera_temp) of its PNG name, per-channel mean of the
#: statistics, the statistics at zones (0, 0), (H/2, W/2) and (H-1, W-1)).
REFERENCE_STATS = {
    ("pisp", "synth,0"): ((3154, 120, 3177), (11891.8, 7433.3, 3547.6), [(12389, 8696, 3957), (569, 1053, 1083), (11984, 8562, 5210)]),
    ("pisp", "synth,1"): ((5550, 4593, 4978), (12840.3, 11794.0, 12256.8), [(1862, 1473, 704), (20674, 18151, 19725), (638, 0, 235)]),
    ("pisp", "synth,2"): ((7501, 4576, 6016), (5207.4, 8074.7, 9675.5), [(5239, 12623, 10428), (12609, 6104, 7135), (5680, 12345, 9632)]),
    ("pisp", "synth,3"): ((3048, 57, 2500), (33685.1, 10647.5, 2640.9), [(33813, 7929, 669), (65535, 26518, 5159), (21533, 5630, 1499)]),
    ("pisp", "synth,4"): ((3413, 40, 3226), (16696.0, 7470.3, 6484.3), [(12076, 3376, 5134), (19684, 8681, 7397), (8470, 7591, 5058)]),
    ("pisp", "synth,5"): ((5848, 2633, 3910), (12918.8, 8914.2, 7171.2), [(21092, 17377, 20661), (15699, 11401, 10394), (12760, 9399, 8348)]),
    ("pisp", "card,0"): ((3178, 144, 3230), (13402.0, 8708.8, 4150.0), [(12389, 8696, 3957), (569, 1053, 1083), (11984, 8562, 5210)]),
    ("pisp", "card,1"): ((5545, 4605, 5049), (12582.8, 11824.0, 12434.8), [(1862, 1473, 704), (20674, 18151, 19725), (638, 0, 235)]),
    ("pisp", "card,2"): ((7400, 5038, 6205), (5811.1, 8611.1, 10724.0), [(5239, 12623, 10428), (12609, 6104, 7135), (5680, 12345, 9632)]),
    ("pisp", "card,3"): ((3067, 60, 2500), (32448.0, 11561.8, 3497.2), [(33813, 7929, 669), (65535, 26518, 5159), (21533, 5630, 1499)]),
    ("vc4", "synth,0"): ((3154, 151, 3177), (11886.0, 7433.6, 3536.9), [(12622, 8445, 4439), (4341, 2293, 2652), (11205, 8455, 4892)]),
    ("vc4", "synth,1"): ((5550, 5407, 4978), (12830.2, 11790.0, 12257.1), [(7320, 6131, 4334), (19158, 17794, 19230), (3733, 2504, 1935)]),
    ("vc4", "synth,2"): ((7501, 5574, 6016), (5200.2, 8068.9, 9666.0), [(7655, 11564, 7545), (9648, 6107, 4895), (5127, 11084, 8528)]),
    ("vc4", "synth,3"): ((3048, 70, 2500), (34120.8, 10649.5, 2639.0), [(30737, 7406, 1152), (30680, 7996, 1268), (25659, 6322, 1232)]),
    ("vc4", "synth,4"): ((3413, 49, 3226), (16688.5, 7466.4, 6480.0), [(13608, 3519, 5290), (19692, 8703, 7420), (9239, 7934, 5185)]),
    ("vc4", "synth,5"): ((5848, 3209, 3910), (12905.9, 8907.4, 7162.9), [(18817, 14744, 15125), (15831, 11418, 10418), (11247, 8019, 7423)]),
    ("vc4", "card,0"): ((3178, 206, 3230), (13397.7, 8709.4, 4140.0), [(12622, 8445, 4439), (4341, 2293, 2652), (11205, 8455, 4892)]),
    ("vc4", "card,1"): ((5545, 6885, 5049), (12571.3, 11818.8, 12433.0), [(7320, 6131, 4334), (19158, 17794, 19230), (3733, 2504, 1935)]),
    ("vc4", "card,2"): ((7400, 8348, 6205), (5803.0, 8605.2, 10713.5), [(7655, 11564, 7545), (9648, 6107, 4895), (5127, 11084, 8528)]),
    ("vc4", "card,3"): ((3067, 80, 2500), (32773.9, 11563.2, 3495.4), [(30737, 7406, 1152), (30680, 7996, 1268), (25659, 6322, 1232)]),
}
#: First 16 hex digits of the SHA-256 of each capture's mosaic: the numbers above hold for these only.
REFERENCE_MOSAICS = {
    "synth,0": "3a22e99dd74df9f0", "synth,1": "54c0d173c50c6b65", "synth,2": "5c219cde77b3994f",
    "synth,3": "5e916a10bb0f19c2", "synth,4": "b70983bbb6ee5d5d", "synth,5": "dc4d8814dcae92e2",
    "card,0": "0cb3b6211808e88a", "card,1": "723364947dd7aa9e", "card,2": "b15c630d261ce64c",
    "card,3": "379fa57373f07f9b",
}
CAPTURE_SEED = 5  # scenes at 3045..7500 K; two dim enough for ISO 146 and 151, the rest ISO 100
# A PNG name rounds to an integer, so the same value is within half a unit of it (plus float noise).
ROUNDED = 0.5 + 1e-6


def _key(path: Path) -> str:
    user, _, id_ = path.stem.split(",")[:3]
    return f"{user},{id_}"


@pytest.fixture(scope="module")
def pi_like_captures(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Lens-shaded synthetic captures: six named by their light's gains, four by a grey card."""
    root = tmp_path_factory.mktemp("pi_like")
    tunings = synthetic.write_tuning_dir(root / "tunings", lens_shading=True)
    paths = synthetic.write_captures(root / "dng", 6, seed=CAPTURE_SEED, lens_shading=True, progress=False)
    paths += synthetic.write_captures(root / "dng", 4, seed=CAPTURE_SEED, lens_shading=True, grey_card=True,
                                      user="card", progress=False)
    return tunings, paths


def test_reference_numbers_are_for_these_captures(pi_like_captures):
    _, paths = pi_like_captures
    for path in paths:
        digest = hashlib.sha256(read_raw(path).mosaic.tobytes()).hexdigest()[:16]
        assert digest == REFERENCE_MOSAICS[_key(path)], (
            f"the synthetic capture {path.name} changed: regenerate REFERENCE_STATS as described at REFERENCE")


def _assert_same_statistics(stats: np.ndarray, key: tuple[str, str]) -> None:
    _, means, zones = REFERENCE_STATS[key]
    h, w = stats.shape[:2]
    got = [stats[y, x] for y, x in ((0, 0), (h // 2, w // 2), (h - 1, w - 1))]
    np.testing.assert_allclose(np.array(got, dtype=int), np.array(zones), atol=1)  # truncation to 16 bits
    np.testing.assert_allclose(stats.reshape(-1, 3).mean(axis=0), means, atol=0.1)


@pytest.mark.parametrize("target", ["pisp", "vc4"])
def test_gains_named_captures_match_the_reference_converter(pi_like_captures, target):
    """Names (true temperature, lux, camera temperature) and statistics agree with converter.py's."""
    tunings, paths = pi_like_captures
    for path in paths[:6]:
        stats, true_temp, lux, camera_temp, _ = convert_dng(path, target, tuning_dir=tunings)
        (ref_true, ref_lux, ref_camera), *_ = REFERENCE_STATS[(target, _key(path))]
        assert abs(true_temp - ref_true) <= ROUNDED and abs(camera_temp - ref_camera) <= ROUNDED, path.name
        assert abs(lux - ref_lux) <= ROUNDED, path.name
        _assert_same_statistics(stats, (target, _key(path)))


def _unshaded_card_temperature(path: Path, tuning) -> float:
    """Temperature of the grey card's gains with the lens's exact falloff removed (the generator's
    own shading, not the tuning's tables): the right label for this capture, noise included."""
    raw = read_raw(path)
    index = int(path.stem.split(",")[2])
    falloff = synthetic.lens_falloff(raw.mosaic.shape, synthetic.scene_light(CAPTURE_SEED, index)[1])
    planes = (pack(raw.mosaic.astype(float), "RGGB") - synthetic.BLACK_LEVEL) / pack(falloff, "RGGB")
    x1, y1, x2, y2 = synthetic.grey_card_box(raw.mosaic.shape[::-1])
    r, gr, gb, b = np.median(planes[:, y1 // 2 : y2 // 2, x1 // 2 : x2 // 2], axis=(1, 2))
    return tuning.ct_from_rb(r * 2 / (gr + gb), b * 2 / (gr + gb))


@pytest.mark.parametrize("target", ["pisp", "vc4"])
def test_grey_card_captures_differ_from_the_reference_only_in_labels(pi_like_captures, target):
    """Named by the grey card: same statistics and camera temperature as converter.py; the true
    temperature is the card's without the lens (the reference's carries the lens's colour shading,
    up to 2 mireds here); VC4 lux is that of the same capture named by its gains (the reference's
    is 10-40% higher)."""
    tunings, paths = pi_like_captures
    tuning = load_tuning(find_tuning(synthetic.SENSOR, target, tunings))
    reference_errors = []
    for path in paths[6:]:
        key = (target, _key(path))
        stats, true_temp, lux, camera_temp, _ = convert_dng(path, target, tuning_dir=tunings)
        (ref_true, ref_lux, ref_camera), *_ = REFERENCE_STATS[key]
        _assert_same_statistics(stats, key)
        assert abs(camera_temp - ref_camera) <= ROUNDED

        right = 1e6 / _unshaded_card_temperature(path, tuning)
        assert abs(1e6 / true_temp - right) < 0.25, path.name  # mireds; the VC4 tables are coarser
        reference_errors.append(abs(1e6 / ref_true - right))

        gains = label_gains(read_raw(path), parse_annotated_name(path), tuning)
        typed = path.with_name(f"typed,{synthetic.SENSOR},{path.stem.split(',')[2]},{gains[0]:.8f},{gains[1]:.8f}.dng")
        typed.write_bytes(path.read_bytes())
        assert convert_dng(typed, target, tuning_dir=tunings)[2] == pytest.approx(lux, rel=1e-6)
        if target == "vc4":
            assert ref_lux > lux * 1.08, path.name
        else:  # same black-level handling; only the label gains weighting R and B differ
            assert ref_lux == pytest.approx(lux, rel=0.01)
    assert max(reference_errors) > 1.8
