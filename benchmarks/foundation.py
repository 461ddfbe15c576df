"""Foundation benchmark: raw I/O, ISP ops and synthetic data speed, round-trip accuracy.

    .venv/bin/python benchmarks/foundation.py [--size 4000x3000] [--device auto] [--json out.json]
    .venv/bin/python benchmarks/foundation.py --demo [--device cpu]   # time `isplab demo` instead

Prints a table (median of --repeat runs) and optionally writes it as JSON. ``--demo`` runs the
whole demo (what ``make demo`` runs) in a temporary folder and reports each section's wall time:
the figure the README quotes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from isplab.data.synth import parse_size, synthesize_dataset
from isplab.data.sources import load_source
from isplab.data.unprocess import sample_params, unprocess
from isplab.engine.metrics import psnr
from isplab.engine.trainer import resolve_accelerator
from isplab.io.dng import write_dng
from isplab.io.raw import RawImage, read_raw
from isplab.isp.demosaic import demosaic_bilinear, demosaic_malvar
from isplab.isp.pipeline import render


def timed(fn, repeat: int, sync) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4000x3000", help="mosaic size for the op timings (12 MP default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--demo", action="store_true", help="time the demo's sections instead of the ops")
    args = parser.parse_args()
    if args.demo:
        return demo_benchmark(args.device, args.json)

    device = torch.device(resolve_accelerator(args.device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    w, h = parse_size(args.size)
    rows = []

    def add(name, seconds, unit_count, unit):
        rows.append({"benchmark": name, "median_s": seconds, "throughput": unit_count / seconds, "unit": unit})

    mp = w * h / 1e6
    raw = torch.rand(1, 1, h, w, device=device)
    gains = torch.tensor([[2.0, 1.0, 1.6]], device=device)
    ccm = torch.eye(3, device=device)[None]
    with torch.no_grad():
        add(f"demosaic bilinear {w}x{h}", timed(lambda: demosaic_bilinear(raw, "RGGB"), args.repeat, sync), mp, "MP/s")
        add(f"demosaic Malvar {w}x{h}", timed(lambda: demosaic_malvar(raw, "RGGB"), args.repeat, sync), mp, "MP/s")
        add(f"render (full pipeline) {w}x{h}", timed(lambda: render(raw, "RGGB", gains, ccm), args.repeat, sync), mp, "MP/s")

    mosaic = (np.random.default_rng(0).random((h, w)) * 16383).astype(np.uint16)
    image = RawImage(path=None, mosaic=mosaic, cfa_pattern="RGGB", black_level=np.full(4, 512.0), white_level=16383,
                     as_shot_neutral=np.array([0.5, 1.0, 0.6]), color_matrix=np.eye(3), exposure_time=0.01, iso=100.0,
                     aperture=2.8, make="isplab", model="bench", unique_camera_model="isplab bench")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.dng"
        add(f"write DNG {w}x{h}", timed(lambda: write_dng(path, image, overwrite=True), args.repeat, sync), mp, "MP/s")
        add(f"read raw (rawpy) {w}x{h}", timed(lambda: read_raw(path), args.repeat, sync), mp, "MP/s")
        count = 16
        start = time.perf_counter()
        synthesize_dataset(Path(tmp) / "synth", count, size=(512, 384), progress=False)
        add("synthesise 16 DNGs 512x384", time.perf_counter() - start, count, "files/s")

    rng = np.random.default_rng(0)
    values = []
    for source in ("chart", "gradient", "texture", "coffee", "astronaut", "rocket"):
        srgb = torch.from_numpy(load_source(source, (512, 384), rng)).permute(2, 0, 1)[None].double()
        p = sample_params(rng, noise=False)
        ccm_s, gains_s = torch.from_numpy(p.ccm)[None], torch.from_numpy(p.wb_gains)[None]
        bright = torch.tensor([p.brightness_gain], dtype=torch.float64)
        out = render(unprocess(srgb, ccm_s, gains_s, bright, "RGGB"), "RGGB", gains_s * bright, ccm_s)
        values.append(float(psnr(out.float(), srgb.float())))
    rows.append({"benchmark": "round trip unprocess->render, 6 sources", "median_s": None,
                 "throughput": float(np.mean(values)), "unit": f"dB mean (min {min(values):.1f})"})

    table = Table(title=f"isplab foundation benchmark — {device.type}, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    for column in ("benchmark", "median s", "result", "unit"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["benchmark"], "" if row["median_s"] is None else f"{row['median_s']:.3f}", f"{row['throughput']:.2f}", row["unit"])
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"device": device.type, "torch": torch.__version__, "rows": rows}, indent=2))


def demo_benchmark(device: str, json_path: Path | None) -> None:
    """Wall time of each demo section and of the whole demo, as ``make demo`` runs it."""
    import os
    import re

    from isplab.demo import SECTIONS, run_demo

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = run_demo(Path(tmp) / "demo", device=device)
        total = time.perf_counter() - start
        page = report.read_text()
    # The report's "Time per stage" table is the measurement: section name -> wall time.
    rows = [{"benchmark": f"demo section {name}", "wall": wall}
            for name, wall in re.findall(r"<tr><td>(\w+)</td><td class=\"num\">([^<]+)</td>", page) if name in SECTIONS]
    rows.append({"benchmark": "demo, all sections (incl. report)", "wall": f"{total:.1f} s"})
    threads = re.search(r"<td>CPU threads</td><td>([^<]+)</td>", page)
    table = Table(title=f"isplab demo — {device}, {os.cpu_count()} CPUs, {threads.group(1) if threads else '?'}, "
                        f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    table.add_column("benchmark")
    table.add_column("wall time")
    for row in rows:
        table.add_row(row["benchmark"], row["wall"])
    Console().print(table)
    if json_path:
        json_path.write_text(json.dumps({"device": device, "cpus": os.cpu_count(),
                                         "threads": threads.group(1) if threads else None, "rows": rows}, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
