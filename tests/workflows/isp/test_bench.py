"""Latency table: rows per (arch, backend), failures reported in the row."""

from __future__ import annotations

import pytest
import torch

from isplab.errors import IsplabError
from isplab.models.isp import build_isp_model
from isplab.workflows.isp.bench import latency_table


def test_latency_rows_and_failed_backend_reported(monkeypatch) -> None:
    def broken_compile(model, *args, **kwargs):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    rows = latency_table(["lfnet"], size=(32, 48), runs=2, backends=("eager", "compile", "onnxruntime"), num_maps_base=4)
    assert [(r["arch"], r["backend"]) for r in rows] == [("lfnet", "eager"), ("lfnet", "compile"), ("lfnet", "onnxruntime")]
    eager, compiled, onnx = rows
    assert eager["error"] == "" and eager["median_ms"] > 0
    assert onnx["error"] == "" and onnx["median_ms"] > 0
    assert compiled["median_ms"] is None and compiled["error"] == "RuntimeError: no C++ compiler"
    model = build_isp_model("lfnet", 4)
    assert eager["params"] == sum(p.numel() for p in model.parameters())
    # The first layer alone is a lower bound on the frame's MACs: a 3x3 conv from 4 channels.
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert eager["gmacs"] * 1e9 >= 16 * 24 * first.out_channels * 4 * 9


def test_invalid_requests() -> None:
    with pytest.raises(IsplabError, match="backends must be among eager, compile, onnxruntime"):
        latency_table(["lfnet"], backends=("tensorrt",))
    with pytest.raises(IsplabError, match="punet needs height and width divisible by 32"):
        latency_table(["punet"], size=(48, 64), backends=("eager",), num_maps_base=4)
