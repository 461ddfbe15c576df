"""Latency table: rows per (arch, backend), failures reported in the row."""

from __future__ import annotations

import shutil

import pytest
import torch

from isplab.errors import IsplabError
from isplab.models.isp import build_isp_model
from isplab.workflows.isp.bench import latency_table


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler, and this platform has none")
def test_latency_rows_with_a_real_torch_compile() -> None:
    rows = latency_table(["lfnet"], size=(32, 48), runs=2, backends=("eager", "compile", "onnxruntime"), num_maps_base=4)
    assert [(r["arch"], r["backend"]) for r in rows] == [("lfnet", "eager"), ("lfnet", "compile"), ("lfnet", "onnxruntime")]
    for row in rows:  # torch.compile really compiled (inductor, C++) and ran: no error, a time
        assert row["error"] == "" and row["median_ms"] > 0, row
    model = build_isp_model("lfnet", 4)
    assert rows[0]["params"] == sum(p.numel() for p in model.parameters())
    # The first layer alone is a lower bound on the frame's MACs: a 3x3 conv from 4 channels.
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert rows[0]["gmacs"] * 1e9 >= 16 * 24 * first.out_channels * 4 * 9


def test_a_failing_backend_is_reported_in_its_row(monkeypatch) -> None:
    # What a platform without a C++ toolchain does to torch.compile (this one has a compiler, see
    # the test above): the row carries the error's first line and the other backends still run.
    def broken_compile(model, *args, **kwargs):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    rows = latency_table(["lfnet"], size=(32, 48), runs=1, backends=("compile", "eager"), num_maps_base=4)
    compiled, eager = rows
    assert compiled["median_ms"] is None and compiled["error"] == "RuntimeError: no C++ compiler"
    assert eager["error"] == "" and eager["median_ms"] > 0


def test_invalid_requests() -> None:
    with pytest.raises(IsplabError, match="backends must be among eager, compile, onnxruntime"):
        latency_table(["lfnet"], backends=("tensorrt",))
    with pytest.raises(IsplabError, match="punet needs height and width divisible by 32"):
        latency_table(["punet"], size=(48, 64), backends=("eager",), num_maps_base=4)
