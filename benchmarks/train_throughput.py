"""Training throughput of every workflow's network: patches per second, fp32 and bf16 autocast.

    .venv/bin/python benchmarks/train_throughput.py [--device auto] [--steps 20] [--json out.json]
        [--models isp-punet isp-nafnet isp-lfnet proxy sky genisp] [--precision fp32 bf16]

One training step is forward, loss, backward and an Adam update on a batch of random tensors of
the size each workflow trains on by default (the data pipeline is not timed: this is the
network's ceiling, what a data loader must keep up with). Steps are timed after ``--warmup``
untimed ones, synchronising the device, median of ``--steps``. ``bf16`` runs the forward pass under
``torch.autocast(dtype=torch.bfloat16)`` (CPU or CUDA), as Lightning's ``bf16-mixed`` precision
does. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and is not measured on the CPU.

The numbers depend on the machine only: quote them with the device line the script prints.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from isplab.engine.trainer import resolve_accelerator


def _isp(arch: str):
    from isplab.models.isp import build_isp_model

    model = build_isp_model(arch, num_maps_base=16)

    def batch(b: int, device):
        x = torch.rand(b, 4, 128, 128, device=device)  # packed raw patch -> 256 x 256 RGB
        return (x,), torch.rand(b, 3, 256, 256, device=device)

    return model, batch, 8, F.l1_loss, "128px packed raw"


def _proxy():
    from isplab.models.proxy import build_proxy_model

    model = build_proxy_model([(-3.0, 4.0), (-0.1, 0.1)], width=32)

    def batch(b: int, device):
        return (torch.rand(b, 3, 128, 128, device=device), torch.rand(b, 2, device=device)), torch.rand(b, 3, 128, 128, device=device)

    return model, batch, 8, F.l1_loss, "128px RGB + 2 params"


def _sky():
    from isplab.workflows.sky.model import build_sky_model

    model = build_sky_model()

    def batch(b: int, device):
        return (torch.rand(b, 3, 256, 256, device=device),), (torch.rand(b, 1, 256, 256, device=device) > 0.5).float()

    return model, batch, 8, F.binary_cross_entropy_with_logits, "256px, U-Net ResNet-34"


def _genisp():
    from isplab.models.genisp import genisp

    model = genisp()

    def batch(b: int, device):
        x = torch.rand(b, 3, 512, 768, device=device)
        return (x,), x

    return model, batch, 8, F.l1_loss, "768x512 (GenISP alone, no detector)"


MODELS = {
    "isp-punet": lambda: _isp("punet"),
    "isp-nafnet": lambda: _isp("nafnet"),
    "isp-lfnet": lambda: _isp("lfnet"),
    "proxy": _proxy,
    "sky": _sky,
    "genisp": _genisp,
}


def measure(name: str, precision: str, device: torch.device, steps: int, warmup: int) -> dict:
    model, batch, b, loss_fn, what = MODELS[name]()
    model = model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), 1e-4)
    inputs, target = batch(b, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(*inputs)
        loss = loss_fn(out.float(), target)
        loss.backward()
        optimiser.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "input": what, "precision": precision, "batch": b, "step_s": seconds,
            "patches_per_s": b / seconds, "params": params, "peak_mib": peak}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(resolve_accelerator(args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    console = Console(width=160)
    console.print(f"device: {device} ({where}); torch {torch.__version__}; median of {args.steps} steps after {args.warmup}")
    rows = []
    for name in args.models:
        for precision in args.precision:
            try:
                rows.append(measure(name, precision, device, args.steps, args.warmup))
            except Exception as error:  # a model that cannot run here is a row, not the end of the table
                rows.append({"model": name, "precision": precision, "error": f"{type(error).__name__}: {error}"})
    table = Table(title=f"training throughput on {device}")
    for column in ("model", "input", "precision", "batch", "step ms", "patches/s", "params", "peak MiB"):
        table.add_column(column)
    for r in rows:
        if "error" in r:
            table.add_row(r["model"], "", r["precision"], "", "", "", "", r["error"][:60])
            continue
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        table.add_row(r["model"], r["input"], r["precision"], str(r["batch"]), f"{1000 * r['step_s']:.1f}",
                      f"{r['patches_per_s']:.1f}", f"{r['params']:,}", peak)  # fmt: skip
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "where": where, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
