"""AWB export: libcamera's contract, parity enforced for float32/float16 and reported for int8,
nothing written on failure, one predict for .pt and .tflite, and tuning files only for models that fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from isplab.errors import ParityError
from isplab.workflows.awb.export import export_awb
from isplab.workflows.awb.model import build_awb_model, load_awb_model, save_awb_model
from isplab.workflows.awb.predict import load_predictor, predict

pytest.importorskip("litert_torch")
pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def vc4(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("awbexport")
    torch.manual_seed(0)
    save_awb_model(build_awb_model("vc4", "chroma", ensemble=2), folder / "vc4.pt")
    return folder


def _statistics(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.02, 0.9, (n, 12, 16, 3)).astype(np.float32), rng.uniform(5, 3000, n).astype(np.float32)


def test_float32_export_matches_pytorch_through_one_predict(vc4, monkeypatch, capsys, awb_cli):
    code, out, err = awb_cli(vc4, "export", "vc4.pt", "-o", "vc4.tflite")
    assert code == 0, err
    match = re.search(r"max ([\d.]+), mean ([\d.]+) mireds from PyTorch over 200 images \(tolerance 1.0 mired\)", out)
    assert match and float(match.group(1)) < 1.0, out
    images, lux = _statistics(12)
    model = load_awb_model(vc4 / "vc4.pt")
    torch_kelvin = predict(model, images, lux)
    with torch.no_grad():
        direct = model(torch.from_numpy(images), torch.from_numpy(lux)).double().numpy()
    np.testing.assert_allclose(torch_kelvin, direct, rtol=1e-6)
    np.testing.assert_allclose(predict(vc4 / "vc4.pt", images, lux), torch_kelvin, rtol=1e-6)
    tflite = load_predictor(vc4 / "vc4.tflite")
    assert tflite.target == "vc4"
    assert np.abs(1e6 / tflite(images, lux) - 1e6 / torch_kelvin).max() < 1.0
    # Exporting again is refused without --overwrite, and the file is kept.
    before = (vc4 / "vc4.tflite").read_bytes()
    code, _, err = awb_cli(vc4, "export", "vc4.pt", "-o", "vc4.tflite")
    assert code == 1 and "already exists: pass --overwrite" in err and (vc4 / "vc4.tflite").read_bytes() == before


def test_parity_failure_raises_and_writes_nothing(vc4):
    out = vc4 / "strict.tflite"
    with pytest.raises(ParityError, match=r"strict\.tflite: TFLite \(fp16\) differs from PyTorch by [\d.]+ mireds on image \d+ "
                                          r"\(tolerance 1e-06 mired\)"):
        export_awb(load_awb_model(vc4 / "vc4.pt"), "vc4", out, quantize="float16", random_checks=20, tolerance=1e-6)
    assert not out.exists() and not list(vc4.glob(".strict*"))


def test_int8_differences_are_reported_not_enforced(vc4, monkeypatch, capsys, awb_cli):
    code, out, err = awb_cli(vc4, "export", "vc4.pt", "--quantize", "int8")
    assert code == 0, err
    match = re.search(r"vc4_int8\.tflite .*int8\): max ([\d.]+), .* over 200 images \(reported, not enforced\)", out)
    assert match and float(match.group(1)) > 0, out
    assert load_predictor(vc4 / "vc4_int8.tflite").target == "vc4"


def _base_tuning(path: Path) -> Path:
    path.write_text(json.dumps({"version": 2.0, "target": "bcm2835", "algorithms": [
        {"rpi.awb": {"ct_curve": [2800, 0.9, 0.4, 7600, 0.4, 0.9]}},
        {"rpi.ccm": {"ccms": [{"ct": 5000, "ccm": [1.5, -0.3, -0.2, -0.2, 1.4, -0.2, 0.0, -0.5, 1.5]}]}},
    ]}))
    return path


def test_tuning_checks_the_model_against_the_target(vc4, monkeypatch, capsys, awb_cli):
    if not (vc4 / "vc4.tflite").is_file():
        export_awb(load_awb_model(vc4 / "vc4.pt"), "vc4", vc4 / "vc4.tflite", random_checks=5)
    base = _base_tuning(vc4 / "base.json")
    code, _, err = awb_cli(vc4, "tuning", "-s", "imx708", "-t", "pisp", "-m", "vc4.tflite", "--base", str(base))
    assert code == 1 and err.count("error:") == 1
    assert "vc4.tflite is a vc4 model (image input [1, 12, 16, 3]) but the target is pisp" in err
    assert not (vc4 / "imx708.json").exists()
    code, out, err = awb_cli(vc4, "tuning", "-s", "imx708", "-t", "vc4", "-m", "vc4.tflite", "--base", str(base))
    assert code == 0, err
    tuned = json.loads((vc4 / "imx708.json").read_text())  # next to the model by default
    block = next(a["rpi.nn.awb"] for a in tuned["algorithms"] if "rpi.nn.awb" in a)
    assert block["model"] == str((vc4 / "vc4.tflite").resolve())
    assert block["ccm"] == [1.5, -0.3, -0.2, -0.2, 1.4, -0.2, 0, -0.5, 1.5]


def test_flip_average_and_calibration_travel_inside_the_tflite(tmp_path):
    from isplab.models.awb import calibrated

    torch.manual_seed(0)
    net = build_awb_model("vc4", "small", width=4, hidden=8).eval()
    model = calibrated(net, flip=True, scale=0.7, offset=60.0).eval()
    result = export_awb(model, "vc4", tmp_path / "tta.tflite", random_checks=50)
    assert result.max_mired_difference < 1.0
    images, lux = _statistics(8)
    tflite = predict(tmp_path / "tta.tflite", images, lux)
    net_kelvin = predict(net, images, lux)
    mirrored = predict(net, images[:, :, ::-1].copy(), lux)
    expected = 60.0 + 0.7 * (1e6 / net_kelvin + 1e6 / mirrored) / 2  # mireds
    assert np.abs(1e6 / tflite - expected).max() < 1.0
    assert np.abs(1e6 / tflite - 1e6 / net_kelvin).max() > 10  # the file is not the bare network
    # The saved model exports the same file's numbers.
    save_awb_model(model, tmp_path / "tta.pt")
    np.testing.assert_allclose(predict(tmp_path / "tta.pt", images, lux), predict(model, images, lux), rtol=1e-6)


def _trained_feature_norm(model: torch.nn.Module, images: np.ndarray, lux: np.ndarray) -> None:
    """Eval mode, with the feature normalisation's statistics as training leaves them: the features' mean and variance
    (a blend's histogram bins after the features)."""
    from isplab.models.awb import log_chroma_histogram
    from isplab.models.awb_features import colour_constancy_features

    model.eval()
    features = colour_constancy_features(torch.from_numpy(images), torch.from_numpy(lux))
    bins = getattr(model, "histogram_bins", 0)
    if bins:
        features = torch.cat([features, log_chroma_histogram(torch.from_numpy(images), bins=bins).flatten(1)], dim=1)
    model.feature_norm.running_mean.copy_(features.mean(dim=0))
    model.feature_norm.running_var.copy_(features.var(dim=0) + 1e-4)  # constant (empty) bins: no division by 0


def test_hybrid_export_runs_in_litert_and_matches_pytorch(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    torch.manual_seed(0)
    model = build_awb_model("vc4", "hybrid", width=4, hidden=8)
    images, lux = _statistics(16, seed=2)
    _trained_feature_norm(model, images, lux)
    result = export_awb(model, "vc4", tmp_path / "hybrid.tflite", random_checks=20)
    assert result.max_mired_difference < 1.0
    interpreter = Interpreter(model_path=str(tmp_path / "hybrid.tflite"))
    interpreter.allocate_tensors()
    inputs = {tuple(d["shape"]): d["index"] for d in interpreter.get_input_details()}
    output = interpreter.get_output_details()[0]["index"]
    tflite = []
    for image, value in zip(images, lux):
        interpreter.set_tensor(inputs[(1, 12, 16, 3)], image[None])
        interpreter.set_tensor(inputs[(1,)], np.array([value], np.float32))
        interpreter.invoke()
        tflite.append(float(interpreter.get_tensor(output)[0]))
    with torch.no_grad():
        torch_kelvin = model(torch.from_numpy(images), torch.from_numpy(lux)).double().numpy()
    assert np.abs(1e6 / np.array(tflite) - 1e6 / torch_kelvin).max() < 0.5
    # The normalisation's running statistics are inside the file: the model without them differs.
    model.feature_norm.reset_running_stats()
    with torch.no_grad():
        reset = model(torch.from_numpy(images), torch.from_numpy(lux)).double().numpy()
    assert np.abs(1e6 / np.array(tflite) - 1e6 / reset).max() > 1.0


def test_blend_export_runs_in_litert_and_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    # With the MLPs' log-chroma histogram (4 x 4 bins): its graph is in the file and in the estimate.
    model = build_awb_model("vc4", "blend", ensemble=2, width=4, hidden=8, feature_hidden=8, histogram_bins=4)
    images, lux = _statistics(16, seed=3)
    _trained_feature_norm(model, images, lux)
    result = export_awb(model, "vc4", tmp_path / "blend.tflite", random_checks=20)
    assert result.max_mired_difference < 1.0
    tflite = predict(tmp_path / "blend.tflite", images, lux)
    with torch.no_grad():
        rows = model.member_mireds(torch.from_numpy(images), torch.from_numpy(lux)).double().numpy()
    assert np.abs(1e6 / tflite - rows.mean(axis=0)).max() < 0.5
    # Both kinds are in the file: neither the CNNs' mean nor the MLPs' mean alone is what it gives.
    assert np.abs(1e6 / tflite - rows[:2].mean(axis=0)).max() > 1.0
    assert np.abs(1e6 / tflite - rows[2:].mean(axis=0)).max() > 1.0
    # The search's size estimate (weights, a graph per CNN, the features' and the histogram's graphs) is within 3 KB.
    from isplab.workflows.awb.search import tflite_size_estimate

    parameters = sum(p.numel() for p in model.parameters())
    assert abs(result.size_bytes - tflite_size_estimate(parameters, 2, "blend", 4)) < 3 * 1024
    assert result.size_bytes - tflite_size_estimate(parameters, 2, "chroma") > 100 * 1024
