"""`isplab awb` as a user runs it: outputs checked before any work, one-line errors, nothing lost,
resume, defaults shown in --help.

Most commands run in-process through ``isplab.cli.main`` (the real entry point: argument parsing,
the one-line error printer, exit codes); Ctrl-C needs a real process and runs in a subprocess.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main

from isplab.io import write_image
from isplab.models.isp import build_isp_model, save_isp_model
from isplab.workflows.awb.cli import app
from isplab.workflows.awb.dataset import load_dataset
from isplab.workflows.awb.model import build_awb_model, load_awb_model, save_awb_model

FAST = ["--epochs", "1", "--ensemble", "1", "--arch", "reference", "--device", "cpu", "--no-progress"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one ``error: ...`` line (asserting it is the only thing on stderr besides log lines)."""
        lines = [line for line in self.err.splitlines() if line.startswith("error:")]
        assert self.code == 1 and len(lines) == 1, (self.code, self.err)
        assert "Traceback" not in self.err and "Errno" not in self.err, self.err
        return lines[0]


@pytest.fixture
def awb(awb_cli):
    """Run ``isplab awb ARGS`` in ``cwd`` through the real entry point; returns code, stdout, stderr."""

    def run(*args: str, cwd: Path) -> Result:
        return Result(*awb_cli(cwd, *args))

    return run


def write_dataset(folder: Path, n: int = 12, seed: int = 0) -> Path:
    """vc4 statistics PNGs of grey scenes lit so that R/B follows the temperature."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        temp = rng.uniform(2800, 7600)
        light = np.array([0.4 * 5000 / temp, 0.4, 0.4 * temp / 5000])
        image = np.round(np.clip(rng.uniform(0.3, 1.0, (12, 16, 1)) * light, 0, 1) * 65535).astype(np.uint16)
        write_image(folder / f"u{i % 3},imx708,{i},{temp:.0f},{rng.uniform(10, 900):.0f},{temp * 1.05:.0f}.png", image)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("awbcli")
    write_dataset(root / "ds")
    torch.manual_seed(0)
    save_awb_model(build_awb_model("vc4"), root / "vc4.pt")
    return root


@pytest.fixture
def work(root, tmp_path) -> Path:
    """A fresh folder holding the dataset (a link) and a trained-looking vc4 model."""
    (tmp_path / "ds").symlink_to(root / "ds")
    (tmp_path / "vc4.pt").write_bytes((root / "vc4.pt").read_bytes())
    return tmp_path


# --- train -----------------------------------------------------------------------------------------


def test_train_refuses_existing_output_and_keeps_it(awb, work):
    (work / "m.pt").write_bytes(b"precious")
    line = awb("train", "ds", "m.pt", "-t", "vc4", *FAST, cwd=work).error_line()
    assert "model m.pt already exists: pass --overwrite" in line
    assert (work / "m.pt").read_bytes() == b"precious" and not (work / "m-run").exists()


def test_train_unwritable_output_fails_before_training(awb, work):
    (work / "blocker").write_text("a file where a folder should be")
    started = time.perf_counter()
    line = awb("train", "ds", "blocker/m.pt", "-t", "vc4", *FAST, cwd=work).error_line()
    assert "cannot write into blocker: it exists and is not a folder" in line
    assert time.perf_counter() - started < 5 and not list(work.glob("**/*.ckpt"))


def test_train_overwrite_resume_and_run_folder(awb, work):
    assert awb("train", "ds", "m.pt", "-t", "vc4", *FAST, cwd=work).code == 0
    first = load_awb_model(work / "m.pt").state_dict()
    assert (work / "m-run" / "checkpoints" / "last.ckpt").is_file() and (work / "m-run" / "config.json").is_file()
    # The model is gone but its run folder is not: refused too, nothing deleted.
    (work / "m.pt").rename(work / "kept.pt")
    line = awb("train", "ds", "m.pt", "-t", "vc4", *FAST, cwd=work).error_line()
    assert "run folder m-run already holds" in line and "--overwrite" in line
    assert (work / "m-run" / "checkpoints" / "last.ckpt").is_file()
    # --resume continues to 3 epochs in total, writing a second metrics version.
    assert awb("train", "ds", "m.pt", "-t", "vc4", *FAST[2:], "--epochs", "3", "--resume", cwd=work).code == 0
    last = torch.load(work / "m-run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2
    versions = sorted(p.parent.name for p in (work / "m-run" / "logs" / "csv").glob("*/metrics.csv"))
    assert versions == ["version_0", "version_1"]
    resumed = load_awb_model(work / "m.pt").state_dict()
    assert any(not torch.equal(first[k], resumed[k]) for k in first)
    # --overwrite starts afresh: the earlier run's logs are deleted, not merged.
    assert awb("train", "ds", "m.pt", "-t", "vc4", *FAST, "--overwrite", cwd=work).code == 0
    versions = sorted(p.parent.name for p in (work / "m-run" / "logs" / "csv").glob("*/metrics.csv"))
    assert versions == ["version_0"]
    assert torch.load(work / "m-run" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0


def test_train_the_hybrid_arch(awb, work):
    fast = ["--epochs", "1", "--ensemble", "2", "--arch", "hybrid", "--device", "cpu", "--no-progress"]
    assert awb("train", "ds", "m.pt", "-t", "vc4", *fast, cwd=work).code == 0
    model = load_awb_model(work / "m.pt")
    assert model.awb_config["arch"] == "hybrid" and model.awb_config["ensemble"] == 2
    for member in model.members:  # the feature normalisation's running statistics were learned and saved
        assert int(member.feature_norm.num_batches_tracked) >= 1
        assert float(member.feature_norm.running_mean.abs().max()) > 0


def test_train_the_blend_arch(awb, work):
    fast = ["--epochs", "1", "--ensemble", "2", "--arch", "blend", "--device", "cpu", "--no-progress"]
    assert awb("train", "ds", "m.pt", "-t", "vc4", *fast, cwd=work).code == 0
    model = load_awb_model(work / "m.pt")
    assert model.awb_config["arch"] == "blend" and len(model.members) == len(model.feature_heads) == 2
    assert int(model.feature_norm.num_batches_tracked) >= 1 and float(model.feature_norm.running_mean.abs().max()) > 0


def test_train_option_errors_are_one_line(awb, work):
    cases = [
        (["--resume"], "cannot resume: checkpoint m-run/checkpoints/last.ckpt does not exist"),
        (["--devices", "two"], "bad --devices 'two'"),
        (["--loss", "huber"], "bad --loss 'huber': expected one of mse, l1"),
        (["--epochs", "0"], "bad --epochs 0: expected 1 or more"),
        (["--model", "vc4.pt", "--resume"], "--resume continues the run's own model: drop --model"),
        (["--model", "missing.pt"], "AWB model file 'missing.pt' does not exist"),
        (["--overwrite", "--resume"], "choose one"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "device 'cuda' was requested but no cuda device is available"))
    for extra, expected in cases:
        assert expected in awb("train", "ds", "m.pt", "-t", "vc4", *FAST, *extra, cwd=work).error_line(), extra
    assert not (work / "m.pt").exists()


def test_train_from_a_model_with_its_old_option_spelling(awb, work):
    assert awb("train", "ds", "m.pt", "-t", "vc4", *FAST, "--input-model", "vc4.pt", cwd=work).code == 0
    assert load_awb_model(work / "m.pt").awb_config["arch"] == "reference"


@pytest.mark.slow
def test_ctrl_c_keeps_the_last_epoch_and_resume_continues(root, tmp_path):
    write_dataset(tmp_path / "ds", n=8, seed=1)
    args = [sys.executable, "-m", "isplab.cli", "awb", "train", "ds", "m.pt", "-t", "vc4", "--ensemble", "1",
            "--arch", "reference", "--device", "cpu", "--no-progress", "--early-stopping", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*args, "--epochs", "100000"], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last = tmp_path / "m-run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "the same command with --resume (not --overwrite) continues from it" in err and "m-run/checkpoints/last.ckpt holds epoch" in err
    assert "Traceback" not in err and not (tmp_path / "m.pt").exists()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    done = saved["epoch"] + 1
    resumed = subprocess.run([*args, "--epochs", str(done + 2), "--resume"], cwd=tmp_path, env=env, text=True,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == done + 1
    log = (tmp_path / "m-run" / "log.txt").read_text()
    assert f"epoch {done}:" in log and f"epoch {done + 1}:" in log and log.count("resumed from") == 1
    assert load_awb_model(tmp_path / "m.pt").awb_config["target"] == "vc4"


# --- auto-train ------------------------------------------------------------------------------------


def _counts(path: Path) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[1]) for line in path.read_text().splitlines() if not line.startswith("#")}


def test_auto_train_writes_everything_under_its_folder_and_resumes(awb, work):
    common = ["--iterations", "2", "--weight", "3", *FAST]
    assert awb("auto-train", "ds", "out", "-t", "vc4", *common, cwd=work).code == 0
    assert not (work / "duplicates.txt").exists()
    runs = sorted((work / "out").glob("verification_*.txt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert [p.stem.rsplit("_", 1)[1] for p in runs] == ["0", "1"]
    # Each run adds --weight to its worst image's prefix (a count is total inclusions: 1 + 3 per time worst).
    expected: dict[str, int] = {}
    for path in runs:
        worst = path.read_text().split()[0]
        prefix = ",".join(worst.split(",")[:3])
        expected[prefix] = expected.get(prefix, 1) + 3
    assert _counts(work / "out" / "duplicates.txt") == expected
    before = {p.name: p.read_bytes() for p in (work / "out").iterdir()}

    line = awb("auto-train", "ds", "out", "-t", "vc4", *common, cwd=work).error_line()
    assert "auto-train folder out already holds" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in (work / "out").iterdir()} == before

    assert awb("auto-train", "ds", "out", "-t", "vc4", *common, "--resume", cwd=work).code == 0
    numbers = sorted(int(p.stem.rsplit("_", 1)[1]) for p in (work / "out").glob("model_*.pt"))
    assert numbers == [0, 1, 2, 3]
    assert sum(_counts(work / "out" / "duplicates.txt").values()) == sum(expected.values()) + 2 * 3

    assert awb("auto-train", "ds", "out", "-t", "vc4", *common[:2], "--iterations", "1", *FAST, "--overwrite",
               cwd=work).code == 0
    assert sorted(int(p.stem.rsplit("_", 1)[1]) for p in (work / "out").glob("model_*.pt")) == [0]


# --- evaluate --------------------------------------------------------------------------------------


def test_evaluate_checks_its_report_folder_first(awb, work):
    (work / "rep").mkdir()
    (work / "rep" / "report.html").write_text("earlier report")
    started = time.perf_counter()
    line = awb("evaluate", "ds", "--cv", "2", "-o", "rep", *FAST, cwd=work).error_line()
    assert "report folder rep already holds report.html: pass --overwrite" in line
    assert time.perf_counter() - started < 5 and (work / "rep" / "report.html").read_text() == "earlier report"
    (work / "file").write_text("x")
    assert "cannot create folder file/rep: Not a directory" in awb(
        "evaluate", "ds", "-m", "vc4.pt", "-o", "file/rep", cwd=work).error_line()
    assert "give either --model M" in awb("evaluate", "ds", cwd=work).error_line()


def test_evaluate_model_report_numbers(awb, work):
    result = awb("evaluate", "ds", "-m", "vc4.pt", "-o", "rep", cwd=work)
    assert result.code == 0, result.err
    data = load_dataset(work / "ds", "vc4")
    with torch.no_grad():
        kelvin = load_awb_model(work / "vc4.pt")(torch.from_numpy(data.images), torch.from_numpy(data.lux)).double()
    errors = np.abs(1e6 / kelvin.numpy() - 1e6 / np.clip(data.true_temp.astype(float), 2800, 7600))
    rows = list(csv.DictReader((work / "rep" / "errors.csv").open()))
    assert sorted(float(r["error_mired"]) for r in rows) == pytest.approx(sorted(errors), rel=1e-5)
    assert f"{errors.mean():.2f}" in result.out
    # Without --overwrite a second evaluation into the same folder is refused.
    assert "--overwrite" in awb("evaluate", "ds", "-m", "vc4.pt", "-o", "rep", cwd=work).error_line()
    assert awb("evaluate", "ds", "-m", "vc4.pt", "-o", "rep", "--overwrite", cwd=work).code == 0


# --- export, tuning, verify: bad inputs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p.write_bytes(os.urandom(300)), "PyTorch cannot read it as a weights file"),
        (lambda p: torch.save({"weights": torch.zeros(2)}, p), "a bare state dict without isplab's model configuration"),
        (lambda p: torch.save({"epoch": 3, "note": "x"}, p), "a PyTorch file holding a dict with keys epoch, note"),
        (lambda p: save_isp_model(build_isp_model("punet", 4), p), "it is an isplab ISP model"),
        (lambda p: torch.save({"awb_config": {"target": "pi3", "arch": "reference"}, "state_dict": {}}, p),
         "its configuration is unusable (no Raspberry Pi target (pisp or vc4) recorded, found 'pi3')"),
    ],
)
def test_export_of_a_file_that_is_not_an_awb_model(awb, work, make, expected):
    make(work / "bad.pt")
    line = awb("export", "bad.pt", cwd=work).error_line()
    assert "'bad.pt' is not an isplab AWB model" in line and expected in line and "expected an isplab AWB model" in line
    assert "KeyError" not in line and not (work / "bad.tflite").exists()


def test_export_output_checked_before_loading(awb, work):
    (work / "vc4.tflite").write_bytes(b"earlier export")
    line = awb("export", "vc4.pt", cwd=work).error_line()
    assert "TFLite model vc4.tflite already exists: pass --overwrite" in line
    assert (work / "vc4.tflite").read_bytes() == b"earlier export"
    (work / "blocker").write_text("x")
    assert "cannot write into blocker" in awb("export", "vc4.pt", "-o", "blocker/m.tflite", cwd=work).error_line()
    assert "bad --quantize 'int4': expected float16 or int8" in awb("export", "vc4.pt", "--quantize", "int4", cwd=work).error_line()


def test_tuning_refuses_a_model_libcamera_cannot_load(awb, work):
    (work / "text.dng").write_text("not a model")
    line = awb("tuning", "-s", "imx708", "-t", "vc4", "-m", "text.dng", cwd=work).error_line()
    assert "'text.dng' is not a TFLite model the LiteRT interpreter can load" in line
    assert "TFLite model file not found: 'nope.tflite'" in awb("tuning", "-s", "imx708", "-t", "vc4", "-m", "nope.tflite",
                                                                cwd=work).error_line()
    (work / "imx708.json").write_text("{}")
    line = awb("tuning", "-s", "imx708", "-t", "vc4", "-m", "text.dng", cwd=work).error_line()
    assert "tuning file imx708.json already exists: pass --overwrite" in line and "overwrite=True" not in line
    assert (work / "imx708.json").read_text() == "{}"


def test_verify_missing_file_is_not_found_and_others_continue(awb, work):
    good = next((work / "ds").glob("*.png"))
    result = awb("verify", "-i", "/missing.dng", "-i", str(good), "-m", "vc4.pt", cwd=work)
    assert result.code == 1
    assert "'/missing.dng' not found" in result.err and "cannot parse" not in result.err
    assert f"{good.name}: predicted" in result.out


# --- help ----------------------------------------------------------------------------------------


def test_every_option_shows_its_default(awb, tmp_path):
    import click

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden or param.name == "help":
                continue
            if param.is_flag and not param.secondary_opts and param.default is False:
                continue  # a plain on-switch: absent means off
            shown = param.required or (param.default is not None and param.show_default is not False)
            assert shown or "default" in (param.help or ""), f"awb {name} {param.opts[0]}"
    shown = awb("train", "--help", cwd=tmp_path)
    assert shown.code == 0 and "[default: 240]" in shown.out and "--input-model" not in shown.out
    # The training defaults the README states, and the same training options on all three commands.
    train = {p.name: p.default for p in group.commands["train"].params}
    assert {k: train[k] for k in ("epochs", "batch_size", "lr", "arch", "ensemble", "early_stopping")} == {
        "epochs": 240, "batch_size": 64, "lr": 2e-3, "arch": "blend", "ensemble": 3, "early_stopping": 30}
    shared = {"epochs", "batch_size", "lr", "arch", "ensemble", "loss", "relight", "early_stopping", "tuning_dir",
              "seed", "device", "devices", "strategy", "num_nodes"}
    for name in ("train", "auto-train", "evaluate"):
        assert shared <= {p.name for p in group.commands[name].params}, name
