"""Tests for isplab.workflows.awb.verify: PNG/DNG files, .pt/.tflite models, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.export import run_tflite
from isplab.io import read_image, write_image
from isplab.workflows.awb.model import build_awb_model, save_awb_model
from isplab.workflows.awb import verify as verify_module
from isplab.workflows.awb.verify import Predictor, VerifyRow, load_predictor, verify

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "awb-rpi"


def numpy_mired_error(pred, true):
    return abs(1e6 / pred - 1e6 / min(max(true, 2800), 7600))


def write_png(folder: Path, name: str, size=(32, 32), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.integers(2000, 60000, size=(*size, 3), dtype=np.uint16)
    return write_image(folder / name, image)


@pytest.fixture(scope="module")
def pisp_model(tmp_path_factory):
    torch.manual_seed(0)
    model = build_awb_model("pisp").eval()
    path = save_awb_model(model, tmp_path_factory.mktemp("model") / "model.pt")
    return model, path


def torch_kelvin(model, png: Path, lux: float) -> float:
    image = torch.from_numpy(read_image(png).astype(np.float32) / 65535)[None]
    with torch.no_grad():
        return float(model(image, torch.tensor([lux], dtype=torch.float32))[0])


def test_verify_pngs_with_pt_model(pisp_model, tmp_path):
    model, path = pisp_model
    first = write_png(tmp_path, "anna,imx708,12,4200,350,4500.png", seed=1)
    second = write_png(tmp_path, "ben,imx219,3,9000,20.5,6100.png", seed=2)
    rows = verify([first, second], path)

    assert [row.path for row in rows] == [first, second]
    assert rows[0] == VerifyRow(first, pytest.approx(torch_kelvin(model, first, 350), rel=1e-5), 4200, 4500, 350)
    assert rows[1].lux == 20.5 and rows[1].true_temp == 9000 and rows[1].camera_temp == 6100
    assert rows[1].predicted_temp == pytest.approx(torch_kelvin(model, second, 20.5), rel=1e-5)
    # 9000 K is clamped to 7600 K, as in training.
    assert rows[1].error_mired == pytest.approx(numpy_mired_error(rows[1].predicted_temp, 9000))
    assert rows[1].camera_error_mired == pytest.approx(abs(1e6 / 6100 - 1e6 / 7600))


def test_verify_bad_files_are_reported_and_others_continue(pisp_model, tmp_path):
    _, path = pisp_model
    misnamed = write_png(tmp_path, "holiday.png")
    wrong_size = write_png(tmp_path, "anna,ov5647,1,5000,100,5100.png", size=(12, 16))
    eight_bit = write_image(tmp_path / "anna,imx708,2,5000,100,5100.png", np.full((32, 32, 3), 128, np.uint8))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    good = write_png(tmp_path, "anna,imx708,9,5000,100,5100.png")
    missing = tmp_path / "anna,imx708,10,5000,100,5100.png"

    rows = verify([misnamed, wrong_size, eight_bit, text, good, missing], path)
    assert [row.failure is None for row in rows] == [False, False, False, False, True, False]
    assert "holiday.png" in rows[0].failure and "<user>,<sensor>,<id>,<true_temp>,<lux>,<camera_temp>.png" in rows[0].failure
    assert "shape (12, 16, 3)" in rows[1].failure and "32 wide x 32 high for pisp" in rows[1].failure
    assert "uint8" in rows[2].failure and "16-bit" in rows[2].failure
    assert "expected a statistics .png or an annotated .dng, not '.txt'" in rows[3].failure
    assert "not found" in rows[5].failure
    assert rows[0].predicted_temp is None and rows[0].error_mired is None
    assert rows[4].predicted_temp > 0


def test_verify_target_mismatch_and_bad_model(pisp_model, tmp_path):
    _, path = pisp_model
    with pytest.raises(IsplabError, match="is for pisp, not for the requested target vc4"):
        verify([], path, target="vc4")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a model")
    with pytest.raises(IsplabError, match="junk.pt' is not an isplab AWB model"):
        load_predictor(junk)


def test_verify_dng_goes_through_convert(pisp_model, tmp_path, monkeypatch):
    model, path = pisp_model
    stats = np.random.default_rng(3).integers(0, 65535, size=(32, 32, 3), dtype=np.uint16)
    calls = []

    def fake_convert(dng, target, tuning_dir=None, resize=None, colour_test=False):
        calls.append((Path(dng).name, target, tuning_dir))
        if "broken" in Path(dng).name:
            raise IsplabError(f"cannot read raw file {dng}: corrupt")
        return stats, 3900.0, 250.0, 4100.0, "imx708"

    monkeypatch.setattr(verify_module, "convert_dng", fake_convert)
    dngs = [tmp_path / "a,imx708,1,1.8,1.6.dng", tmp_path / "broken.DNG"]
    for dng in dngs:
        dng.write_bytes(b"II*\x00")
    rows = verify(dngs, path, tuning_dir="tunings")
    assert calls == [("a,imx708,1,1.8,1.6.dng", "pisp", "tunings"), ("broken.DNG", "pisp", "tunings")]
    with torch.no_grad():
        expected = float(model(torch.from_numpy(stats.astype(np.float32) / 65535)[None], torch.tensor([250.0]))[0])
    assert rows[0].predicted_temp == pytest.approx(expected, rel=1e-5)
    assert (rows[0].true_temp, rows[0].lux, rows[0].camera_temp) == (3900.0, 250.0, 4100.0)
    assert rows[1].failure == "cannot read raw file " + str(tmp_path / "broken.DNG") + ": corrupt"


def test_verify_corrupt_dng_through_real_converter(pisp_model, tmp_path):
    _, path = pisp_model
    corrupt = tmp_path / "anna,imx708,1,1.8,1.6.dng"
    corrupt.write_bytes(b"II*\x00" + b"garbage" * 20)
    good = write_png(tmp_path, "anna,imx708,2,5000,100,5100.png")
    rows = verify([corrupt, good], path)
    assert str(corrupt) in rows[0].failure and "raw" in rows[0].failure
    assert rows[1].failure is None and rows[1].predicted_temp > 0


@pytest.mark.shared_data
def test_verify_with_reference_tflite():
    if not SHARED.is_dir():
        pytest.skip(f"shared AWB data not found at {SHARED}")
    model = SHARED / "reference-models" / "model_vc4.tflite"
    pngs = sorted((SHARED / "vc4" / "train").glob("*.png"))[:3]
    predictor = load_predictor(model)
    assert isinstance(predictor, Predictor) and predictor.target == "vc4"
    rows = verify(pngs, predictor)
    for png, row in zip(pngs, rows):
        lux = float(png.stem.split(",")[4])
        image = read_image(png).astype(np.float32)[None] / 65535
        expected = run_tflite(model, [image, np.array([lux], np.float32)])[0][0]
        assert row.predicted_temp == pytest.approx(float(expected), rel=1e-6)
        assert row.error_mired < 15  # the reference model was trained on these images
    with pytest.raises(IsplabError, match=r"is for vc4 \(16 wide x 12 high zones\), got images of shape \(32, 32, 3\)"):
        predictor(np.zeros((1, 32, 32, 3)), np.ones(1))
