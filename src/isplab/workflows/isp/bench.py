"""Latency of learned-ISP models on one frame: PyTorch eager, ``torch.compile`` and ONNX Runtime.

Each backend gets one untimed warm-up call (``torch.compile`` compiles there; ONNX Runtime plans
its memory), then ``runs`` timed calls on the same input; the median is reported. Models have
random weights: latency does not depend on their values. A backend that fails (``torch.compile``
without a working C++ toolchain, an export the exporter rejects) is reported in its row's
``error`` instead of stopping the table.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from isplab.errors import IsplabError
from isplab.export import export_onnx
from isplab.models.isp import build_isp_model, count_macs, count_parameters

BACKENDS = ("eager", "compile", "onnxruntime")


def latency_table(
    archs: Sequence[str],
    size: tuple[int, int] = (1088, 1920),
    device: str = "cpu",
    runs: int = 5,
    backends: Sequence[str] = BACKENDS,
    num_maps_base: int = 16,
) -> list[dict]:
    """Time one ``size`` output frame (input ``(1, 4, H/2, W/2)``) per architecture and backend.

    Args:
        archs: architectures of :func:`~isplab.models.isp.build_isp_model`.
        size: output ``(H, W)``; the challenge times 1088 x 1920.
        device: ``"cpu"``, ``"cuda"``...; ONNX Runtime always runs on the CPU provider.
        runs: timed calls per backend.
        backends: any of :data:`BACKENDS`.
        num_maps_base: model width.

    Returns:
        One dict per (arch, backend): ``arch``, ``backend``, ``device``, ``median_ms`` (``None`` on
        failure), ``params``, ``gmacs`` (multiply-accumulates per frame / 1e9, convolutions and
        linear layers), ``error`` (``""`` when it ran).

    Raises:
        IsplabError: unknown backend or arch, ``runs < 1``, or ``size`` not a multiple of the
            model's ``2 * size_multiple``.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or runs < 1:
        raise IsplabError(f"backends must be among {', '.join(BACKENDS)} and runs >= 1; got {list(backends)}, runs={runs}")
    height, width = size
    rows = []
    for arch in archs:
        model = build_isp_model(arch, num_maps_base).eval().to(device)
        multiple = 2 * model.size_multiple
        if height % multiple or width % multiple:
            raise IsplabError(f"--size {height}x{width}: {arch} needs height and width divisible by {multiple}")
        x = torch.rand(1, 4, height // 2, width // 2, generator=torch.Generator().manual_seed(0)).to(device)
        common = {"arch": arch, "device": str(device), "params": count_parameters(model),
                  "gmacs": count_macs(model, (height // 2, width // 2)) / 1e9}
        for backend in backends:
            try:
                median_ms, error = _median_ms(_runner(backend, model, x), runs, device), ""
            except Exception as e:  # one failing backend must not hide the others' numbers
                median_ms, error = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            rows.append({"arch": arch, "backend": backend, "median_ms": median_ms, **common, "error": error})
    return rows


def _runner(backend: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    if backend == "eager":
        return lambda: model(x)
    if backend == "compile":
        compiled = torch.compile(model)
        return lambda: compiled(x)
    return _onnx_runner(model, x)


def _onnx_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """Export to a temporary ONNX file, load one session and return a call reusing it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        cpu_model, cpu_x = model.cpu(), x.cpu()
        try:
            export_onnx(cpu_model, (cpu_x,), path, input_names=["raw"])
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        finally:
            model.to(x.device)
    feed = {"raw": cpu_x.numpy().astype(np.float32)}
    return lambda: session.run(None, feed)


def _median_ms(call: Callable[[], object], runs: int, device: str) -> float:
    synchronize = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        call()  # warm-up: compilation, allocator and thread-pool start-up are not latency
        synchronize()
        for _ in range(runs):
            start = time.perf_counter()
            call()
            synchronize()
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
