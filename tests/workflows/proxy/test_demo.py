"""The `proxy` demo section: generate, train, regress and sweep end to end, at a tiny size."""

from __future__ import annotations

import json
import shutil

import pytest

from isplab.engine.report import Report
from isplab.workflows.proxy.dataset import load_dataset


@pytest.mark.slow
def test_demo_section(tmp_path):
    from isplab.workflows.proxy.demo import section

    report = Report("demo", tmp_path)
    section(tmp_path, report, seed=0, device="cpu", iters=10, count=4, images=2, size=(64, 48), steps=2, search_renders=2)
    html = report.write().read_text()
    folder = tmp_path / "proxy"
    backend = "darktable" if shutil.which("darktable-cli") else "builtin"
    assert load_dataset(folder / "data").info["backend"] == backend
    assert ("Rendered with darktable-cli" if backend == "darktable" else "darktable-cli is not installed") in html
    saved = json.loads((folder / "regress" / "regress.json").read_text())
    sample = next(s for s in load_dataset(folder / "data").samples if s["params"]["exposure"] == saved["truth"]["exposure"])
    assert sample["split"] == "val"  # a held-out image
    assert f"{saved['truth']['exposure']:.3f}" in html and saved["search"]["renders"] == 2
    for name in ("model/report.html", "model/report_grid.png", "sweep/sweep.mp4", "sweep/sweep.gif", "sweep/frames/frame_0001.png"):
        assert (folder / name).is_file(), name
    assert "<h2>Neural proxy of darktable" in html and 'src="proxy/sweep/sweep.gif"' in html
