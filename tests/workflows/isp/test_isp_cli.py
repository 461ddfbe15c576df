"""`isplab isp` end to end on synthetic DNG pairs: train, resume, test, run, export, output safety."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from isplab.cli import app
from isplab.data.synth import synthesize_dataset
from isplab.errors import IsplabError
from isplab.io import read_image

TINY = ["--arch", "lfnet", "--num-maps-base", "4", "--patch", "64", "--batch-size", "2", "--eval-every", "2",
        "--lr", "1e-3", "--no-progress", "--device", "cpu"]


def one_line_error(result) -> str:
    """The CLI's error: exit status 1 and a single ``error: ...`` line."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


def refused(*args: str, cwd) -> str:
    """Run ``isplab ARGS`` in this process (cheaper than a subprocess); return the IsplabError's message.

    (How the CLI prints it, one ``error:`` line and exit 1, is checked once in a subprocess below.)
    """
    import os

    previous = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(previous)
    assert isinstance(result.exception, IsplabError), (result.exception, result.output)
    return str(result.exception)


def snapshot(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_train_resume_test_run_export(tmp_path, isplab_ok, isplab_cli, monkeypatch):
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        synthesize_dataset(tmp_path / "data" / split, 2, seed=seed, size=(128, 96), progress=False)
    isplab_ok("isp", "train", "data", "m", *TINY, "--iters", "2", cwd=tmp_path)

    # train: an existing run folder is refused before any work, nothing changes
    before = snapshot(tmp_path / "m")
    error = one_line_error(isplab_cli("isp", "train", "data", "m", *TINY, "--iters", "4", cwd=tmp_path))
    assert re.fullmatch(r"error: model folder m already holds model\.pt, config\.json, log\.txt, \.\.\.: pass "
                        r"--overwrite to replace them, or choose another folder", error)
    assert snapshot(tmp_path / "m") == before
    isplab_ok("isp", "train", "data", "m", *TINY, "--iters", "4", "--resume", cwd=tmp_path)
    assert (tmp_path / "m/model.pt").read_bytes() != before["model.pt"]
    log = (tmp_path / "m/log.txt").read_text()
    assert log.count("=== new run") == 1 and log.count("=== resumed from") == 1

    # test -o: refused when its outputs exist, replaced with --overwrite
    out = isplab_ok("isp", "test", "data", "--model", "m/model.pt", "-o", "res", cwd=tmp_path)
    assert "psnr_pooled (challenge" in out and "psnr_mean (per-image)" in out
    report = (tmp_path / "res/report.html").read_bytes()
    error = refused("isp", "test", "data", "--model", "m/model.pt", "-o", "res", cwd=tmp_path)
    assert error.startswith("output folder res already holds report.html, synth_00000.png")
    assert (tmp_path / "res/report.html").read_bytes() == report
    mtime = (tmp_path / "res/report.html").stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    CliRunner().invoke(app, ["isp", "test", "data", "-m", "m/model.pt", "-o", "res", "--overwrite"], catch_exceptions=False)
    assert (tmp_path / "res/report.html").stat().st_mtime_ns != mtime

    # run -o
    isplab_ok("isp", "run", "data/test/synth_00000.dng", "--model", "m/model.pt", "-o", "out", "--device", "cpu",
              cwd=tmp_path)
    rendered = read_image(tmp_path / "out" / "synth_00000.png")
    assert rendered.shape == (96, 128, 3) and rendered.dtype == np.uint8
    png = (tmp_path / "out/synth_00000.png").read_bytes()
    error = refused("isp", "run", "data/test/synth_00001.dng", "data/test/synth_00000.dng", "--model", "m/model.pt",
                    "-o", "out", cwd=tmp_path)
    assert error == ("output folder out already holds synth_00000.png: pass --overwrite to replace it, "
                     "or choose another folder")
    assert (tmp_path / "out/synth_00000.png").read_bytes() == png
    assert not (tmp_path / "out/synth_00001.png").exists()  # refused before the first file

    # export MODEL (positional), refused when the files exist
    out = isplab_ok("isp", "export", "m/model.pt", "--format", "onnx", cwd=tmp_path)
    assert "lfnet_dynamic.onnx" in out and "lfnet_544x960.onnx" in out
    onnx = (tmp_path / "m/lfnet_dynamic.onnx").read_bytes()
    error = refused("isp", "export", "m/model.pt", cwd=tmp_path)
    assert error == "export m/lfnet_dynamic.onnx already exists: pass --overwrite to replace it, or choose another path"
    assert (tmp_path / "m/lfnet_dynamic.onnx").read_bytes() == onnx


@pytest.mark.slow
def test_old_spellings_still_work(tmp_path, monkeypatch):
    synthesize_dataset(tmp_path / "data" / "train", 1, seed=0, size=(64, 64), progress=False)
    synthesize_dataset(tmp_path / "data" / "val", 1, seed=1, size=(64, 64), progress=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    runner.invoke(app, ["isp", "train", "--data", "data", "--model-dir", "old", *TINY, "--patch", "32", "--iters", "1",
                        "--train-size", "2"], catch_exceptions=False)
    assert (tmp_path / "old/model.pt").is_file()
    out = runner.invoke(app, ["isp", "test", "--data", "data", "--model", "old/model.pt", "--split", "val", "--out",
                              "res"], catch_exceptions=False).output
    assert "1 images" in out and (tmp_path / "res/report.html").is_file()
    out = runner.invoke(app, ["isp", "export", "--model", "old/model.pt", "-o", "x", "--quantize", "fp16"],
                        catch_exceptions=False).output
    assert "lfnet_dynamic_float16.onnx" in out and (tmp_path / "x/lfnet_544x960_float16.onnx").is_file()


def test_help_shows_the_new_shapes_and_every_default(isplab_ok, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    train = isplab_ok("isp", "train", "--help")
    assert "[DATASET] [MODEL_DIR]" in train
    assert "--data " not in train and "--model-dir" not in train  # hidden aliases
    for option in ("--device", "--devices", "--strategy", "--num-nodes", "--overwrite", "--resume", "--progress",
                   "--seed"):
        assert option in train
    for default in ("[default: punet]", "[default: 100000]", "[default: 20.0]", "[default: auto]", "[default: 1]"):
        assert default in train
    export = isplab_ok("isp", "export", "--help")
    assert "[MODEL]" in export and "--quantize" in export and "--overwrite" in export
    assert "[default: onnx]" in export and "Default: float32" in export


def test_missing_arguments_and_bad_values_are_refused(tmp_path):
    assert refused("isp", "train", cwd=tmp_path) == "missing DATASET: expected the dataset folder as the first argument"
    assert refused("isp", "train", "data", cwd=tmp_path) == (
        "missing MODEL_DIR: expected the run folder as the second argument")
    assert refused("isp", "export", "--quantize", "int4", "nowhere.pt", cwd=tmp_path) == (
        "bad --quantize 'int4': expected float16 or int8")
    assert refused("isp", "export", "nowhere.pt", cwd=tmp_path) == "ISP model file 'nowhere.pt' does not exist"


def test_test_command_reports_delta_e_worst_images_and_baselines(tmp_path):
    """`isp test` on the held-out set prints ΔE2000, the worst images and the classical baselines."""
    from isplab.models.isp import build_isp_model, save_isp_model
    from isplab.workflows.isp.data import heldout_set

    data = heldout_set(tmp_path / "heldout", 2, size=(64, 48))
    model = save_isp_model(build_isp_model("punet", 4), tmp_path / "model.pt")
    result = CliRunner().invoke(app, ["isp", "test", str(data), "-m", str(model), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "delta_e2000 (per-image mean of pixel means)" in result.output
    assert "worst images by ΔE2000: synth_0000" in result.output
    for name in ("model", "oracle", "greyworld", "libraw"):
        assert re.search(rf"^{name} +\d+\.\d\d  \d\.\d{{4}} +\d+\.\d\d", result.output, flags=re.MULTILINE), name
    quiet = CliRunner().invoke(app, ["isp", "test", str(data), "-m", str(model), "--device", "cpu", "--no-baselines"])
    assert quiet.exit_code == 0 and "oracle" not in quiet.output
