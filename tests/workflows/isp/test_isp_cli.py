"""`isplab isp` end to end on synthetic DNG pairs: train, resume, test, run, export."""

from __future__ import annotations


import numpy as np
import pytest

from isplab.data.synth import synthesize_dataset
from isplab.io import read_image



@pytest.mark.slow
def test_train_resume_test_run_export(tmp_path, isplab_ok):
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        synthesize_dataset(tmp_path / "data" / split, 2, seed=seed, size=(128, 96), progress=False)
    common = ["--data", "data", "--model-dir", "m", "--arch", "lfnet", "--num-maps-base", "4", "--patch", "64",
              "--batch-size", "2", "--eval-every", "2", "--lr", "1e-3", "--no-progress", "--device", "cpu"]
    isplab_ok("isp", "train", *common, "--iters", "2", cwd=tmp_path)
    isplab_ok("isp", "train", *common, "--iters", "4", "--resume", cwd=tmp_path)
    assert (tmp_path / "m" / "model.pt").is_file()
    out = isplab_ok("isp", "test", "--data", "data", "--model", "m/model.pt", "-o", "res", cwd=tmp_path)
    assert "psnr_pooled (challenge" in out and "psnr_mean (per-image)" in out
    isplab_ok("isp", "run", "data/test/synth_00000.dng", "--model", "m/model.pt", "-o", "out", "--device", "cpu",
            cwd=tmp_path)
    rendered = read_image(tmp_path / "out" / "synth_00000.png")
    assert rendered.shape == (96, 128, 3) and rendered.dtype == np.uint8
    out = isplab_ok("isp", "export", "--model", "m/model.pt", "--format", "onnx", cwd=tmp_path)
    assert "lfnet_dynamic.onnx" in out and "lfnet_544x960.onnx" in out
