"""The synthetic Pi-like camera and the whole `isplab awb` command chain on its captures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isplab.workflows.awb import synthetic
from isplab.workflows.awb.convert import convert_folder
from isplab.workflows.awb.dataset import load_dataset
from isplab.workflows.awb.tuning import find_tuning, load_tuning


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    root = tmp_path_factory.mktemp("awbsyn")
    tunings = synthetic.write_tuning_dir(root / "tunings")
    dngs = synthetic.write_captures(root / "dng", 24, seed=3, progress=False)
    return root, tunings, dngs


def test_tuning_curve_is_the_cameras_response_to_planckian_light(captures):
    _, tunings, _ = captures
    tuning = load_tuning(find_tuning(synthetic.SENSOR, "pisp", tunings))
    neutral = synthetic.illuminant_neutral(synthetic.camera_matrix(0), 4321.0)
    assert tuning.ct_from_rb(neutral[0], neutral[2]) == pytest.approx(4321.0, abs=5)


def test_converted_true_temperatures_are_the_scene_lights(captures):
    root, tunings, dngs = captures
    summary = convert_folder(root / "dng", root / "ds", "vc4", tuning_dir=tunings, workers=1, progress=False)
    assert summary.ok and summary.train == len(dngs)
    dataset = load_dataset(root / "ds", "vc4")
    assert dataset.images.shape == (len(dngs), 12, 16, 3)
    by_id = {s.id: s.true_temp for s in dataset.samples}
    for index in range(len(dngs)):
        _, temperature = synthetic._scene_light(np.random.default_rng([3, index, 7]))
        # within 1 mired: the PNG name rounds to whole kelvin, the CT curve is piecewise linear
        assert abs(1e6 / by_id[str(index)] - 1e6 / temperature) < 1.0
    # grey world is a real but imperfect baseline
    camera_error = np.abs(1e6 / dataset.camera_temp - 1e6 / dataset.true_temp)
    assert 1 < camera_error.mean() < 100



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
