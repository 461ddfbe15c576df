"""``benchmarks/proxy.py --fidelity --fid-source``: the images it synthesises and passes to the proxy data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from isplab.data.synth import SensorSpec, synthesize_raw
from isplab.errors import IsplabError
from isplab.io.raw import read_raw

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "proxy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("proxy_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected_mosaic(index: int, sources: tuple[str, ...], size=(64, 48)) -> np.ndarray:
    """What ``isplab data synth --source ...`` puts in DNG ``index`` (generated scenes: training cameras)."""
    return synthesize_raw(index, 0, size, SensorSpec(), sources, True, camera_split="train")[0].mosaic


def test_fid_images_are_the_named_sources_and_are_reused(bench, tmp_path):
    folder = tmp_path / "images"
    assert bench.fid_images(folder, 2, (64, 48), ["texture", "deadleaves"]) == folder
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["source"] for s in manifest["samples"]] == ["texture", "deadleaves"]
    for i, source in enumerate(("texture", "deadleaves")):
        mosaic = read_raw(folder / f"synth_{i:05d}.dng").mosaic
        np.testing.assert_array_equal(mosaic, _expected_mosaic(i, ("texture", "deadleaves")))
    # the same request again: the files are kept as they are
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    bench.fid_images(folder, 2, (64, 48), ["texture", "deadleaves"])
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    # other sources: the folder is made again from them
    bench.fid_images(folder, 2, (64, 48), ["deadleaves"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["source"] for s in manifest["samples"]] == ["deadleaves", "deadleaves"]
    np.testing.assert_array_equal(read_raw(folder / "synth_00000.dng").mosaic, _expected_mosaic(0, ("deadleaves",)))


def test_unknown_fid_source_is_refused_before_any_work(bench, tmp_path, monkeypatch):
    out = tmp_path / "fid"
    argv = ["proxy.py", "--fidelity", "--backend", "builtin", "--blocks", "exposure", "--fid-dir", str(out),
            "--fid-source", "texture", "nosuch"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(IsplabError, match="unknown source 'nosuch'"):
        bench.main()
    assert not out.exists()


@pytest.mark.slow
def test_fidelity_generates_from_the_fid_source_images(bench, tmp_path, monkeypatch):
    """A tiny ``--fidelity`` run (builtin backend): the dataset's inputs are renders of the texture DNGs,
    and the source is in the budget line and the JSON."""
    out, report = tmp_path / "fid", tmp_path / "fid.json"
    argv = ["proxy.py", "--fidelity", "--backend", "builtin", "--blocks", "exposure", "--fid-dir", str(out),
            "--fid-count", "4", "--fid-images", "2", "--fid-size", "64x48", "--fid-iters", "1", "--fid-patch", "32",
            "--regress-samples", "1", "--search-renders", "3", "--fid-params", "exposure/exposure",
            "--fid-source", "texture", "--json", str(report)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    row = json.loads(report.read_text())["fidelity"][0]
    assert row["fid_source"] == ["texture"] and row["budget"].endswith("images from source texture; varied: exposure exposure")
    described = json.loads((out / "exposure-data" / "dataset.json").read_text())
    assert described["settings"]["images"]["kind"] == "folder"
    files = sorted(Path(im["file"]) for im in described["images"])
    assert files == [(out / "exposure-images" / f"synth_{i:05d}.dng").resolve() for i in range(2)]
    for i in range(2):
        np.testing.assert_array_equal(read_raw(files[i]).mosaic, _expected_mosaic(i, ("texture",)))
    assert {k: v["of"] for k, v in row["scores_changed"].items()} == {k: v["n"] for k, v in row["scores"].items()}
    assert set(row["regress_error_pct_per_param"]) == {"exposure"}
    assert row["regress_error_pct_per_param"]["exposure"] == pytest.approx(row["regress_error_pct"])


def test_changed_scores_leave_out_samples_the_block_does_not_change(bench):
    """Per group: the proxy's PSNR over the samples whose output differs from the input by more than
    50 dB's worth, their count, and the identity's PSNR over them."""
    import torch

    x = torch.full((3, 4, 4), 0.5, dtype=torch.float64)
    images = {"in": x, "same": x.clone(), "off40": x + 0.01, "off60": x + 0.001}  # identity 40 dB and 60 dB

    class Data:  # the two things changed_scores reads of a proxy dataset
        samples = [{"id": k, "input": "in", "output": k} for k in ("same", "off40", "off60")]

        def read(self, name):
            return images[name]

    scored = [{"group": "held-out images", "id": "same", "psnr": 90.0}, {"group": "held-out images", "id": "off40", "psnr": 37.0},
              {"group": "both", "id": "off60", "psnr": 70.0}]  # fmt: skip
    out = bench.changed_scores(Data(), scored)
    assert out["held-out images"]["n"] == 1 and out["held-out images"]["of"] == 2
    assert out["held-out images"]["psnr"] == 37.0
    assert out["held-out images"]["identity_psnr"] == pytest.approx(40.0, abs=1e-6)
    assert out["both"] == {"n": 0, "of": 1, "psnr": None, "identity_psnr": None}
