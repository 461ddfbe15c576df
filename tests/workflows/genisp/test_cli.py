"""``isplab genisp ...`` as a user runs it: synth, detector train, train, test, run, export, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isplab.io.image import read_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset, detector and GenISP made through the CLI (one epoch each)."""
    import subprocess
    import sys

    def ok(*args):
        result = subprocess.run([sys.executable, "-m", "isplab.cli", *args], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    root = tmp_path_factory.mktemp("genisp_cli")
    ok("genisp", "synth", str(root / "data"), "-n", "10", "--size", "96x64", "--workers", "1", "--no-progress")
    ok("genisp", "detector", "train", str(root / "data"), str(root / "det"), "--short", "32", "--long", "48", "--epochs", "1",
       "--batch-size", "4", "--device", "cpu", "--no-progress")
    ok("genisp", "train", str(root / "data"), str(root / "model"), "--detector", str(root / "det" / "detector.pt"), "--epochs", "1",
       "--batch-size", "4", "--device", "cpu", "--no-progress")
    return root


@pytest.mark.slow
def test_test_writes_the_ap_table_and_images(trained, isplab_cli):
    out = trained / "report"
    args = ("genisp", "test", str(trained / "data"), "-m", str(trained / "model" / "model.pt"), "--detector",
            str(trained / "det" / "detector.pt"), "-o", str(out), "--device", "cpu", "--keep", "1")
    result = isplab_cli(*args)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())["inputs"]
    assert set(metrics) == {"raw", "classical", "genisp", "normal"}
    assert all(0 <= m["AP"] <= 1 and set(m) == {"AP", "AP50", "AP75", "per_class"} for m in metrics.values())
    assert "(c) GenISP" in result.stdout and f"{100 * metrics['genisp']['AP']:.1f}" in result.stdout
    assert len(list((out / "images").glob("*.png"))) == 4
    again = isplab_cli(*args)
    assert again.returncode == 1 and "already" in again.stderr and again.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_run_and_export(trained, isplab_cli):
    raws = sorted((trained / "data" / "raw" / "cam-b").glob("*.dng"))[:2]
    broken = trained / "broken.dng"
    broken.write_bytes(b"nothing")
    out = trained / "out"
    result = isplab_cli("genisp", "run", *map(str, raws), str(broken), "-m", str(trained / "model" / "model.pt"), "-o", str(out),
                        "--short", "0", "--format", "png,exr", "--device", "cpu")
    assert result.returncode == 1  # one raw failed: reported, the others written
    assert result.stderr.count("done") == 2 and "failed" in result.stderr and "broken.dng" in result.stderr
    png = read_image(out / f"{raws[0].stem}.png")
    exr = read_image(out / f"{raws[0].stem}.exr")
    assert png.dtype == np.uint16 and png.shape == (32, 48, 3) and exr.shape == (32, 48, 3)
    np.testing.assert_allclose(png / 65535.0, np.clip(exr, 0, 1), atol=1 / 65535)

    result = isplab_cli("genisp", "export", str(trained / "model" / "model.pt"), "-o", str(trained / "g.onnx"))
    assert result.returncode == 0, result.stderr
    assert (trained / "g.onnx").is_file() and "max difference" in result.stderr


def test_bad_input_is_one_line(tmp_path, isplab_cli):
    result = isplab_cli("genisp", "train", str(tmp_path / "nodata"), str(tmp_path / "m"), "--detector", str(tmp_path / "d.pt"),
                        "--device", "cpu")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = isplab_cli("genisp", "synth", str(tmp_path / "s"), "--size", "big")
    assert result.returncode == 1 and "bad --size" in result.stderr


def test_help_shows_the_shared_options(isplab_cli):
    result = isplab_cli("genisp", "train", "--help")
    assert result.returncode == 0
    for option in ("--detector", "--camera", "--device", "--devices", "--strategy", "--num-nodes", "--resume", "--overwrite", "--seed"):
        assert option in result.stdout
