"""Tuning files: CT curve, CCM/ALSC interpolation, lux, lookup, rpi.nn.awb generation, compact writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.workflows.awb.tuning import (
    dumps_tuning,
    find_tuning,
    generate_tuning,
    load_tuning,
    write_tuning,
)

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "awb-rpi"


@pytest.fixture
def tunings() -> Path:
    folder = SHARED / "tunings"
    if not folder.is_dir():
        pytest.skip("../shared/data/awb-rpi/tunings not present")
    return folder


def _block(data: dict, name: str) -> dict:
    return next(a[name] for a in data["algorithms"] if name in a)


@pytest.mark.parametrize("target", ["pisp", "vc4"])
@pytest.mark.parametrize("sensor", ["imx708", "imx219", "imx477", "imx500"])
def test_ct_round_trip_on_real_curves(tunings, target, sensor):
    tuning = load_tuning(tunings / target / f"{sensor}.json")
    curve = tuning.ct_curve
    for t in np.linspace(curve[0, 0] + 5, curve[-1, 0] - 5, 9):
        assert tuning.ct_from_rb(*tuning.gains_at(t)) == pytest.approx(t, abs=1.0)


def test_gains_at_applies_sensitivities_at_curve_nodes(tunings):
    data = json.loads((tunings / "vc4" / "imx708.json").read_text())
    awb = _block(data, "rpi.awb")
    assert awb["sensitivity_r"] != 1.0  # the case worth testing
    tuning = load_tuning(tunings / "vc4" / "imx708.json")
    t, r, b = awb["ct_curve"][3:6]
    assert tuning.gains_at(t) == pytest.approx((r * awb["sensitivity_r"], b * awb["sensitivity_b"]), rel=1e-12)


def test_ct_from_rb_off_curve_point_lands_on_its_perpendicular(tunings):
    tuning = load_tuning(tunings / "pisp" / "imx708.json")
    t = 4200.0
    r, b = tuning.gains_at(t)
    r1, b1 = tuning.gains_at(t + 1)
    tangent = np.array([r1 - r, b1 - b])
    normal = np.array([tangent[1], -tangent[0]]) / np.hypot(*tangent)
    point = np.array([r, b]) + 0.01 * normal  # off the curve, along its normal
    assert tuning.ct_from_rb(*point) == pytest.approx(t, abs=2.0)


def test_ccm_at_interpolates_between_nearest_ccms(tunings):
    path = tunings / "pisp" / "imx708.json"
    ccms = _block(json.loads(path.read_text()), "rpi.ccm")["ccms"]
    tuning = load_tuning(path)
    lo, hi = ccms[2], ccms[3]  # 4640 K and 5910 K bracket 5000 K
    assert lo["ct"] < 5000 < hi["ct"]
    w = (5000 - lo["ct"]) / (hi["ct"] - lo["ct"])
    expected = (1 - w) * np.array(lo["ccm"]) + w * np.array(hi["ccm"])
    np.testing.assert_allclose(tuning.ccm_at(5000), expected.reshape(3, 3), rtol=1e-12)
    np.testing.assert_allclose(tuning.ccm_at(1000), np.reshape(ccms[0]["ccm"], (3, 3)))  # clamped below
    np.testing.assert_allclose(tuning.ccm_at(20000), np.reshape(ccms[-1]["ccm"], (3, 3)))


@pytest.mark.parametrize("target, shape", [("pisp", (32, 32)), ("vc4", (12, 16))])
def test_alsc_at_calibration_node_is_tables_over_minimum(tunings, target, shape):
    path = tunings / target / "imx708.json"
    alsc = _block(json.loads(path.read_text()), "rpi.alsc")
    node = alsc["calibrations_Cr"][0]
    luminance = (np.array(alsc["luminance_lut"]) - 1) * alsc.get("luminance_strength", 1.0) + 1
    cb = next(c for c in alsc["calibrations_Cb"] if c["ct"] == node["ct"])
    gains = load_tuning(path).alsc_at(node["ct"], shape)
    assert gains.shape == (3, *shape)
    for got, table in zip(gains, (np.array(node["table"]), np.ones(luminance.size), np.array(cb["table"]))):
        expected = (table * luminance).reshape(shape)
        np.testing.assert_allclose(got, expected / expected.min(), rtol=1e-6)
    assert gains.reshape(3, -1).min(axis=1) == pytest.approx([1, 1, 1], abs=1e-6)


def test_lux_formula_and_defaults(tmp_path):
    data = {"algorithms": [{"rpi.lux": {
        "reference_shutter_speed": 20000, "reference_gain": 2.0, "reference_aperture": 2.0,
        "reference_lux": 800, "reference_Y": 10000,
    }}]}
    tuning = load_tuning(_write(tmp_path / "t.json", data))
    # half the Y, twice the exposure, half the gain, aperture 1 (4x the light of f/2)
    expected = 800 * 0.5 * (20000 / 40000) * (2.0 / 1.0) * (2.0 / 1.0) ** 2
    assert tuning.lux(5000, exposure_time=0.04, analogue_gain=1.0, aperture=1.0) == pytest.approx(expected)
    assert tuning.lux(10000) == pytest.approx(800)


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_find_tuning_order_and_error(tmp_path):
    (tmp_path / "pisp").mkdir()
    nested = _write(tmp_path / "pisp" / "imx999.json", {"algorithms": []})
    flat = _write(tmp_path / "imx998.json", {"algorithms": []})
    assert find_tuning("imx999", "pisp", tmp_path) == nested
    assert find_tuning("imx998", "pisp", tmp_path) == flat
    searched = r"searched .*imx997\.json.*/usr/local/share/libcamera/ipa/rpi/vc4/imx997\.json.*/usr/share/"
    with pytest.raises(IsplabError, match=searched):
        find_tuning("imx997", "vc4", tmp_path)
    with pytest.raises(IsplabError, match="unknown target 'pi5'"):
        find_tuning("imx708", "pi5")


def test_malformed_tuning_errors_name_file_and_missing_part(tmp_path):
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"algorithms": [')
    with pytest.raises(IsplabError, match=r"malformed tuning file .*broken\.json: invalid JSON"):
        load_tuning(bad_json)
    with pytest.raises(IsplabError, match=r"malformed tuning file .*noalg\.json: expected an 'algorithms' list"):
        load_tuning(_write(tmp_path / "noalg.json", {"version": 2.0}))
    tuning = load_tuning(_write(tmp_path / "nocurve.json", {"algorithms": [{"rpi.awb": {"bayes": 1}}]}))
    with pytest.raises(IsplabError, match=r"nocurve\.json: 'rpi.awb' has no 'ct_curve'"):
        tuning.gains_at(5000)
    with pytest.raises(IsplabError, match=r"nocurve\.json: no 'rpi.ccm' algorithm"):
        tuning.ccm_at(5000)
    no_awb = _write(tmp_path / "noawb.json", {"algorithms": [{"rpi.lux": {}}]})
    with pytest.raises(IsplabError, match=r"malformed tuning file .*noawb\.json: no 'rpi.awb' or 'disable.rpi.nn.awb'"):
        generate_tuning("x", "pisp", "m.tflite", base=no_awb)

def test_generate_tuning_adds_nn_block_and_leaves_the_rest(tunings, tmp_path):
    model = tmp_path / "model.tflite"
    out = generate_tuning("imx708", "pisp", model, tuning_dir=tunings)
    original = json.loads((tunings / "pisp" / "imx708.json").read_text())
    names = [next(iter(a)) for a in out["algorithms"]]
    original_names = [next(iter(a)) for a in original["algorithms"]]
    i = original_names.index("rpi.awb")
    assert names == original_names[:i] + ["disable.rpi.awb", "rpi.nn.awb"] + original_names[i + 1 :]
    nn = out["algorithms"][i + 1]["rpi.nn.awb"]
    assert nn["model"] == str(model.resolve())
    assert nn["ct_curve"] == original["algorithms"][i]["rpi.awb"]["ct_curve"]
    np.testing.assert_allclose(nn["ccm"], load_tuning(tunings / "pisp" / "imx708.json").ccm_at(5000).ravel(), atol=5e-6)
    assert all(v != 0 for v in nn["ccm"])
    assert out["algorithms"][i]["disable.rpi.awb"] == original["algorithms"][i]["rpi.awb"]
    rest = out["algorithms"][:i] + out["algorithms"][i + 2 :]
    assert rest == original["algorithms"][:i] + original["algorithms"][i + 1 :]
    assert (out["version"], out["target"]) == (original["version"], original["target"])


def test_generate_tuning_renames_disabled_block_and_fills_zero_ccm(tmp_path):
    curve = [2800, 0.8, 0.4, 6000, 0.4, 0.7]
    base = {"version": 2.0, "target": "pisp", "algorithms": [
        {"rpi.lux": {"reference_lux": 1}},
        {"rpi.awb": {"ct_curve": curve}},
        {"disable.rpi.nn.awb": {"ct_curve": curve, "ccm": [1, 0, 0, 0, 1, 0, 0, 0, 1]}},
        {"rpi.ccm": {"ccms": [{"ct": 3000, "ccm": [2, -0.5, -0.5, -0.5, 2, -0.5, -0.5, -0.5, 2]},
                              {"ct": 7000, "ccm": [1.5, -0.25, -0.25, -0.25, 1.5, -0.25, -0.25, -0.25, 1.5]}]}},
    ]}
    out = generate_tuning("x", "pisp", "m.tflite", base=_write(tmp_path / "base.json", base))
    assert [next(iter(a)) for a in out["algorithms"]] == ["rpi.lux", "disable.rpi.awb", "rpi.nn.awb", "rpi.ccm"]
    assert out["algorithms"][2]["rpi.nn.awb"]["ccm"] == pytest.approx([
        1.75, -0.375, -0.375, -0.375, 1.75, -0.375, -0.375, -0.375, 1.75])
    # a valid ccm is kept as it is
    base["algorithms"][2]["disable.rpi.nn.awb"]["ccm"] = [1.1] * 9
    out = generate_tuning("x", "pisp", "m.tflite", base=_write(tmp_path / "base.json", base))
    assert out["algorithms"][2]["rpi.nn.awb"]["ccm"] == [1.1] * 9


def test_compact_writer_reproduces_reference_layout(tunings, tmp_path):
    for name in ("pisp/imx415.json", "vc4/imx462.json"):
        text = (tunings / name).read_text()
        assert dumps_tuning(json.loads(text)).rstrip() == text.rstrip()
    data = generate_tuning("imx708", "vc4", tmp_path / "m.tflite", tuning_dir=tunings)
    path = write_tuning(data, tmp_path / "out.json")
    assert json.loads(path.read_text()) == data
    text = path.read_text()
    # tables printed compactly (VC4 ALSC tables 16 numbers a row), not one number per line
    assert len(text.splitlines()) < len(json.dumps(data, indent=4).splitlines()) / 2
    assert "            \"rpi.nn.awb\":\n" in text
    with pytest.raises(IsplabError, match="already exists"):
        write_tuning(data, path)
    assert not list(tmp_path.glob(".*partial"))
