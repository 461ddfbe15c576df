"""The synthetic Pi-like camera: what it guarantees, and the whole `isplab awb` command chain on its captures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isplab.io import read_raw
from isplab.isp.bayer import pack
from isplab.workflows.awb import synthetic
from isplab.workflows.awb.convert import convert_folder
from isplab.workflows.awb.dataset import load_dataset
from isplab.workflows.awb.tuning import find_tuning, load_tuning

SEED = 3


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    root = tmp_path_factory.mktemp("awbsyn")
    tunings = synthetic.write_tuning_dir(root / "tunings")
    dngs = synthetic.write_captures(root / "dng", 24, seed=SEED, progress=False)
    return root, tunings, dngs


@pytest.fixture(scope="module")
def converted(captures):
    root, tunings, dngs = captures
    summary = convert_folder(root / "dng", root / "ds", "vc4", tuning_dir=tunings, workers=1, progress=False)
    assert summary.ok and summary.train == len(dngs)
    return load_dataset(root / "ds", "vc4")


def _mired(kelvin):
    return 1e6 / np.asarray(kelvin, dtype=np.float64)


def _tuning(tunings: Path, target: str = "pisp"):
    return load_tuning(find_tuning(synthetic.SENSOR, target, tunings))


def test_tuning_curve_is_the_cameras_response_to_planckian_light(captures):
    """Inverting the CT curve at the camera's neutral of a Planckian light gives that light back,
    to 1.2 mireds over the curve's range (it is sampled every 250 K and interpolated linearly)."""
    tuning = _tuning(captures[1])
    matrix = synthetic.camera_matrix(0)
    temperatures = np.linspace(2500, 8000, 56)
    found = [tuning.ct_from_rb(*synthetic.illuminant_neutral(matrix, float(t))[[0, 2]]) for t in temperatures]
    assert np.abs(_mired(found) - _mired(temperatures)).max() < 1.2


def test_converted_true_temperatures_are_the_scene_lights(captures, converted):
    assert converted.images.shape == (24, 12, 16, 3)
    lights = {s.id: synthetic.scene_light(SEED, int(s.id))[1] for s in converted.samples}
    errors = [abs(_mired(s.true_temp) - _mired(lights[s.id])) for s in converted.samples]
    # the name's gains have 4 decimals, the PNG name rounds to whole kelvin, the curve is piecewise linear
    assert max(errors) < 1.2


def test_camera_temperature_is_the_grey_world_of_the_mosaic(captures, converted):
    """The as-shot neutral is grey world (plane means after black level, over G), recomputed here
    from the mosaic; so the camera baseline's error is grey world's, tens of mireds on these scenes."""
    _, tunings, dngs = captures
    tuning = _tuning(tunings, "vc4")
    by_id = {s.id: s for s in converted.samples}
    errors = []
    for path in dngs:
        raw = read_raw(path)
        r, gr, gb, b = (pack(raw.mosaic.astype(float), "RGGB") - synthetic.BLACK_LEVEL).mean(axis=(1, 2))
        grey_world = np.array([2 * r / (gr + gb), 1.0, 2 * b / (gr + gb)])
        np.testing.assert_allclose(raw.as_shot_neutral, grey_world, rtol=1e-6)
        sample = by_id[path.stem.split(",")[2]]
        assert abs(sample.camera_temp - tuning.ct_from_rb(grey_world[0], grey_world[2])) <= 0.5 + 1e-6
        light = synthetic.scene_light(SEED, int(sample.id))[1]
        errors.append(abs(_mired(sample.camera_temp) - _mired(light)))
    camera_error = np.abs(_mired(converted.camera_temp) - _mired(converted.true_temp))
    assert camera_error.mean() == pytest.approx(np.mean(errors), abs=1.0)
    assert 30 < camera_error.mean() < 90  # measured 56: a baseline that is wrong on colourful scenes


def _ranks(values) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)


def test_lux_follows_the_scene_and_dim_scenes_are_warmer(converted):
    """Auto exposure: the converter's lux ranks the scenes as their light does (Spearman > 0.8,
    measured 0.89), and dimmer scenes are lit warmer (higher mireds)."""
    scene_lux = [synthetic.scene_light(SEED, int(s.id))[0] for s in converted.samples]
    assert np.corrcoef(_ranks(converted.lux), _ranks(scene_lux))[0, 1] > 0.8
    assert np.corrcoef(_ranks(converted.lux), _ranks(_mired(converted.true_temp)))[0, 1] < -0.5


@pytest.fixture(scope="module")
def card_captures(tmp_path_factory):
    root = tmp_path_factory.mktemp("awbcard")
    plain = synthetic.write_captures(root / "plain", 12, seed=SEED, grey_card=True, progress=False)
    shaded = synthetic.write_captures(root / "shaded", 12, seed=SEED, grey_card=True, lens_shading=True,
                                      progress=False)
    flat = synthetic.write_tuning_dir(root / "flat")
    lens = synthetic.write_tuning_dir(root / "lens", lens_shading=True)
    return root, flat, lens, plain, shaded


def test_grey_card_captures_are_named_by_the_card(card_captures):
    _, _, _, plain, _ = card_captures
    x1, y1, x2, y2 = synthetic.grey_card_box((160, 128))
    assert (x1, y1, x2, y2) == (20, 32, 70, 80)
    assert [p.name for p in plain[:2]] == [f"synth,isplabsim,{i},20,32,70,80.dng" for i in range(2)]


def test_grey_card_statistics_are_the_camera_response_at_5000k(card_captures):
    """Zones inside the grey card hold the light's camera neutral rendered as the converter renders
    every image: times the CT curve's 5000 K gains, then the 5000 K CCM (lens shading flat here)."""
    root, flat, _, plain, _ = card_captures
    convert_folder(root / "plain", root / "plain_ds", "pisp", tuning_dir=flat, workers=1, progress=False)
    dataset = load_dataset(root / "plain_ds", "pisp")
    tuning = synthetic.synthetic_tuning("pisp")
    curve = np.reshape(next(a["rpi.awb"] for a in tuning["algorithms"] if "rpi.awb" in a)["ct_curve"], (-1, 3))
    r5000, b5000 = curve[curve[:, 0] == 5000, 1:][0]
    ccm = np.reshape(next(a["rpi.ccm"] for a in tuning["algorithms"] if "rpi.ccm" in a)["ccms"][0]["ccm"], (3, 3))
    # pisp zones are 5 x 4 raw pixels (160 x 128 over 32 x 32); these lie inside the card (20..70, 32..80)
    inside = (slice(9, 19), slice(5, 13))
    for sample, image in zip(dataset.samples, dataset.images):
        light = synthetic.scene_light(SEED, int(sample.id))[1]
        neutral = synthetic.illuminant_neutral(synthetic.camera_matrix(0), light)
        expected = ccm @ (neutral / np.array([r5000, 1.0, b5000]))
        r, g, b = image[inside[0], inside[1]].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose([r / g, b / g], expected[[0, 2]] / expected[1], rtol=0.01, err_msg=sample.id)


def test_grey_card_labels_are_the_scene_light_through_the_lens(card_captures):
    """With lens shading, the card's label (gains measured after lens-shading correction) is the
    scene light to 2 mireds (noise in the card and the curve's interpolation)."""
    root, _, lens, _, shaded = card_captures
    convert_folder(root / "shaded", root / "shaded_ds", "pisp", tuning_dir=lens, workers=1, progress=False)
    dataset = load_dataset(root / "shaded_ds", "pisp")
    lights = [synthetic.scene_light(SEED, int(s.id))[1] for s in dataset.samples]
    assert np.abs(_mired(dataset.true_temp) - _mired(lights)).max() < 2.0


def test_lens_shading_darkens_the_corners_by_the_tuning_tables(card_captures):
    """The shaded capture is the unshaded one times :func:`synthetic.lens_falloff` (the same scene and
    noise seed; the noise differs only with the signal), and the falloff is the reciprocal of the
    tuning's ALSC gains there."""
    _, flat, lens, plain, shaded = card_captures
    for unshaded_path, shaded_path in zip(plain[:3], shaded[:3]):
        light = synthetic.scene_light(SEED, int(unshaded_path.stem.split(",")[2]))[1]
        unshaded, lit = (pack(read_raw(p).mosaic.astype(float), "RGGB") - synthetic.BLACK_LEVEL
                         for p in (unshaded_path, shaded_path))
        falloff = pack(synthetic.lens_falloff((128, 160), light), "RGGB")
        corner = (slice(None), slice(0, 12), slice(0, 16))  # 24 x 32 raw pixels, top left
        np.testing.assert_allclose(lit[corner].mean(axis=(1, 2)),
                                   (unshaded[corner] * falloff[corner]).mean(axis=(1, 2)), rtol=0.02)
        assert falloff[corner].mean() < 0.8
    tables = _tuning(lens).alsc_at(4000.0, (64, 80))
    falloff = pack(synthetic.lens_falloff((128, 160), 4000.0), "RGGB")[[0, 1, 3]]
    residual = np.abs(tables * falloff - 1)  # bilinear tables vs the smooth lens: worst at the corners
    assert residual.max() < 0.04 and residual.mean() < 0.005
    np.testing.assert_array_equal(_tuning(flat).alsc_at(4000.0, (64, 80)), 1.0)


@pytest.mark.slow
def test_command_chain_convert_train_export_tuning_verify(captures, isplab_ok):
    root, tunings, dngs = captures
    isplab_ok("awb", "convert", "dng", "chain", "--target", "pisp", "--tuning-dir", "tunings", "--workers", "1",
            "--no-progress", cwd=root)
    isplab_ok("awb", "train", "chain/train", "model.pt", "--target", "pisp", "--epochs", "3", "--no-progress", cwd=root)
    out = isplab_ok("awb", "export", "model.pt", "--dataset", "chain/train", cwd=root)
    assert "tolerance 1.0 mired" in out
    isplab_ok("awb", "tuning", "--sensor", synthetic.SENSOR, "--target", "pisp", "--model", "model.tflite",
            "--tuning-dir", "tunings", "-o", "tuned.json", cwd=root)
    tuned = json.loads((root / "tuned.json").read_text())
    names = [next(iter(a)) for a in tuned["algorithms"]]
    assert "rpi.nn.awb" in names and "disable.rpi.awb" in names
    block = tuned["algorithms"][names.index("rpi.nn.awb")]["rpi.nn.awb"]
    assert Path(block["model"]) == (root / "model.tflite").resolve() and 0 not in block["ccm"]
    out = isplab_ok("awb", "verify", "-i", str(dngs[0]), "--model", "model.tflite", "--tuning-dir", "tunings",
                  "--target", "pisp", cwd=root)
    assert dngs[0].name[:20] in out
