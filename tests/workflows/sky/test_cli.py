"""``isplab sky synth / train / predict`` end to end, as a user runs them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from isplab.io.image import read_image, write_image
from isplab.workflows.sky.hdr import read_sky_image, tone_map

TINY = ["--encoder", "resnet18", "--encoder-depth", "3", "--patch", "32", "--batch-size", "4",
        "--patches-per-epoch", "8", "--device", "cpu", "--no-progress", "--val-fraction", "0.34"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic dataset and a 1-epoch model, made through the CLI."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("skycli")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "isplab.cli", *map(str, args)], capture_output=True, text=True)

    result = cli("sky", "synth", root / "data", "-n", "3", "--size", "128x64", "--seed", "2")
    assert result.returncode == 0, result.stderr
    result = cli("sky", "train", root / "data", root / "model", "--epochs", "1", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    return root, cli


@pytest.mark.slow
def test_train_writes_the_run_folder_and_resumes(run):
    root, cli = run
    model = root / "model"
    for name in ("model.pt", "config.json", "log.txt", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (model / name).is_file(), name
    config = json.loads((model / "config.json").read_text())
    assert config["encoder"] == "resnet18" and config["encoding"]["log_epsilon"] == 1e-3
    assert len(config["val_images"]) == 1 and len(config["train_images"]) == 2
    assert set(config["val_images"]).isdisjoint(config["train_images"])  # split by image
    rows = list(csv.DictReader((model / "logs/csv/version_0/metrics.csv").open()))
    ious = [float(r["val_iou"]) for r in rows if r.get("val_iou")]
    assert len(ious) == 1 and 0 <= ious[0] <= 1
    from isplab.errors import IsplabError
    from isplab.workflows.sky.train import SkyTrainConfig, train_sky

    with pytest.raises(IsplabError, match=r"already holds .*pass --overwrite"):  # refused before any work
        train_sky(root / "data", model, SkyTrainConfig(encoder="resnet18", encoder_depth=3, patch=32, device="cpu"))
    resumed = cli("sky", "train", root / "data", model, "--epochs", "2", "--resume", *TINY)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (model / "log.txt").read_text()
    assert "resumed from" in log and "epoch 1 step 4" in log
    other = SkyTrainConfig(encoder="resnet18", encoder_depth=2, patch=32, device="cpu")
    with pytest.raises(IsplabError, match="cannot resume from .*last.ckpt: it was trained as"):
        train_sky(root / "data", model, other, resume=True)


@pytest.mark.slow
def test_predict_writes_mask_alpha_overlay(run, tmp_path):
    root, cli = run
    image = root / "data/images/sky_00000.exr"
    junk = tmp_path / "junk.exr"
    junk.write_bytes(b"not an exr")
    out = tmp_path / "pred"
    result = cli("sky", "predict", image, junk, "-m", root / "model/model.pt", "-o", out, "--tile", "64", "--overlap", "48", "--margin", "16")
    assert result.returncode == 1  # one failure reported, the other file still done
    assert "junk.exr" in result.stderr and "done" in result.stderr
    mask, alpha, overlay = (read_image(out / f"sky_00000{s}") for s in ("_mask.png", "_alpha.png", "_overlay.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert alpha.dtype == np.uint16 and mask.shape == alpha.shape == (64, 128)
    np.testing.assert_array_equal(mask == 255, alpha >= 32768)
    sky = read_sky_image(image)
    preview = tone_map(sky.pixels, sky.hdr).astype(int)
    a = alpha.astype(float)[..., None] / 65535 * 0.5
    expected = np.rint(preview * (1 - a) + np.array([0, 160, 255]) * a)
    inner = (overlay != [255, 0, 0]).any(-1)  # away from the drawn boundary
    assert np.abs(overlay[inner] - expected[inner]).max() <= 1
    again = cli("sky", "predict", image, "-m", root / "model/model.pt", "-o", out)
    assert again.returncode == 1 and "already exists" in again.stderr and "sky_00000_mask.png" in again.stderr


def test_cli_errors_are_one_line(tmp_path, isplab_cli):
    write_image(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    result = isplab_cli("sky", "predict", tmp_path / "x.png", "-m", tmp_path / "none.pt", "-o", tmp_path / "o")
    assert result.returncode == 1 and "none.pt' does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    from isplab.errors import IsplabError
    from isplab.workflows.sky.synth import parse_size

    with pytest.raises(IsplabError, match="at least 32"):
        parse_size("10x10")


@pytest.mark.slow
def test_test_command_reports_iou_boundary_f_and_overlays(run, tmp_path):
    root, cli = run
    out = tmp_path / "report"
    result = cli("sky", "test", root / "data", "-m", root / "model/model.pt", "-o", out, "--held-out", "--tile", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    held_out = json.loads((root / "model/config.json").read_text())["val_images"]
    assert [r["image"] for r in rows] == held_out and metrics["images"] == 1
    assert metrics["iou"] == pytest.approx(float(rows[0]["iou"]), abs=1e-5)
    assert (out / "overlays" / f"{held_out[0]}.png").is_file()
    # the numbers are those of the predicted mask against the COCO label
    from isplab.workflows.sky.data import open_dataset
    from isplab.workflows.sky.evaluate import boundary_f, iou
    from isplab.workflows.sky.model import load_sky_model
    from isplab.workflows.sky.predict import TileOptions, predict_alpha

    (sample,) = [s for s in open_dataset(root / "data") if s.name == held_out[0]]
    image, gt = sample.load()
    pred = predict_alpha(load_sky_model(root / "model/model.pt"), image.pixels, True, TileOptions(tile=0)) >= 0.5
    assert float(rows[0]["iou"]) == pytest.approx(iou(pred, gt), abs=1e-5)
    assert float(rows[0]["boundary_f"]) == pytest.approx(boundary_f(pred, gt), abs=1e-5)


@pytest.mark.slow
def test_export_onnx_matches_pytorch(run, tmp_path):
    import onnxruntime
    import torch

    from isplab.workflows.sky.model import load_sky_model

    root, cli = run
    out = tmp_path / "sky.onnx"
    result = cli("sky", "export", root / "model/model.pt", "-o", out)
    assert result.returncode == 0, result.stderr[-2000:]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)
    (onnx_out,) = session.run(None, {"image": x})
    with torch.no_grad():
        expected = torch.sigmoid(load_sky_model(root / "model/model.pt")(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4)


def test_ctrl_c_saves_last_ckpt_and_resume_finishes(run, tmp_path):
    import signal

    import lightning as L
    import torch

    from isplab.engine import TrainingInterrupted
    from isplab.workflows.sky.train import SkyTrainConfig, train_sky

    class CtrlC(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 3:
                raise KeyboardInterrupt

    root, _ = run
    config = SkyTrainConfig(encoder="resnet18", encoder_depth=3, decoder_channels=[8, 8, 8], patch=32, batch_size=4,
                            epochs=3, patches_per_epoch=8, device="cpu", val_fraction=0.34)
    model_dir = tmp_path / "m"
    with pytest.raises(TrainingInterrupted) as stop:
        train_sky(root / "data", model_dir, config, progress=False, callbacks=[CtrlC()])
    assert (stop.value.checkpoint, stop.value.done, stop.value.total) == (model_dir / "checkpoints/last.ckpt", 3, 6)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not (model_dir / "model.pt").exists()
    assert (model_dir / "log.txt").read_text().splitlines()[-1].startswith("interrupted at step 3;")
    train_sky(root / "data", model_dir, config, resume=True, progress=False)
    assert torch.load(model_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 6
    assert (model_dir / "model.pt").is_file()


@pytest.mark.slow
def test_predict_alpha_exr_and_sky_replacement_through_the_cli(tmp_path, isplab_cli):
    import OpenEXR
    import torch

    from isplab.workflows.sky.model import build_sky_model, load_sky_model, save_sky_model
    from isplab.workflows.sky.predict import TileOptions, predict_alpha, replace_sky
    from isplab.workflows.sky.synth import make_sample

    torch.manual_seed(0)
    save_sky_model(build_sky_model("resnet18", 3, [8, 8, 8]), tmp_path / "m.pt")
    image, *_ = make_sample(1, 0, (96, 64))
    write_image(tmp_path / "pano.exr", image)
    sky = np.full((32, 64, 3), (0.2, 0.5, 2.0), np.float32)  # another size: resized to the image
    write_image(tmp_path / "sky.exr", sky)
    out = tmp_path / "out"
    args = ("sky", "predict", tmp_path / "pano.exr", "-m", tmp_path / "m.pt", "-o", out, "--device", "cpu", "--tile", "64",
            "--overlap", "48", "--margin", "16", "--alpha", "exr", "--replace-sky", tmp_path / "sky.exr")
    result = isplab_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    alpha = predict_alpha(load_sky_model(tmp_path / "m.pt"), image, True, TileOptions(64, 48, 16))
    with OpenEXR.File(str(out / "pano_alpha.exr")) as exr:
        np.testing.assert_allclose(exr.channels()["Y"].pixels, alpha, atol=1e-6)
    expected = replace_sky(image, alpha, sky)
    np.testing.assert_allclose(read_image(out / "pano_replaced.exr"), expected, rtol=1e-5, atol=1e-6)
    assert not (out / "pano_alpha.png").exists()
    bad = isplab_cli(*args[:-1], tmp_path / "gone.exr", "--match-exposure", "--overwrite")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "replacement sky panorama" in bad.stderr
    lonely = isplab_cli(*args[:-2], "--match-exposure", "--overwrite")
    assert lonely.returncode == 1 and "--match-exposure needs --replace-sky" in lonely.stderr
