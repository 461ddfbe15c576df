"""Foundation benchmark: raw I/O, ISP ops and synthetic data speed, round-trip accuracy.

    .venv/bin/python benchmarks/foundation.py [--size 4000x3000] [--device auto] [--json out.json]
    .venv/bin/python benchmarks/foundation.py --raw-render-only [--device cuda]   # only the rawpy comparison
    .venv/bin/python benchmarks/foundation.py --demo [--device cpu]   # time `isplab demo` instead

Prints a table (median of --repeat runs) and optionally writes it as JSON. ``--demo`` runs the
whole demo (what ``make demo`` runs) in a temporary folder and reports each section's wall time:
the figure the README quotes.

The classical pipeline against LibRaw: one DNG of ``--size`` (12 MP by default) is read and
rendered to sRGB by isplab (``read_raw``, ``normalize_mosaic``, ``render`` with bilinear and with
Malvar demosaicing, on ``--device``; the result stays there as float32) and by LibRaw through
rawpy (``postprocess`` with LINEAR and with AHD demosaicing, 8-bit sRGB, on the CPU), best of
``--repeat`` runs, interleaved so that both see the same machine load. The table gives the ratio
isplab / rawpy and whether it is within the target of 1.5x (bilinear against LINEAR, Malvar
against AHD). The scene has a horizontal ramp from black, so every row also takes the slow
branch of the sRGB curve (its linear segment near black).
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
import rawpy
import torch
from rich.console import Console
from rich.table import Table

from isplab.data.sources import load_source
from isplab.data.synth import parse_size, synthesize_dataset
from isplab.data.unprocess import sample_params, unprocess
from isplab.engine.metrics import psnr
from isplab.engine.trainer import resolve_accelerator
from isplab.io.dng import write_dng
from isplab.io.raw import RawImage, read_raw
from isplab.isp.color import camera_to_srgb_matrix
from isplab.isp.demosaic import demosaic_bilinear, demosaic_malvar
from isplab.isp.levels import normalize_mosaic
from isplab.isp.pipeline import render
from isplab.isp.white_balance import gains_from_neutral


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
    parser.add_argument("--raw-render-only", action="store_true", help="only the read + render comparison with rawpy")
    args = parser.parse_args()
    if args.demo:
        return demo_benchmark(args.device, args.json)

    device = torch.device(resolve_accelerator(args.device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    w, h = parse_size(args.size)
    comparison = raw_render_comparison(w, h, device, args.repeat, sync)
    if args.raw_render_only:
        if args.json:
            args.json.write_text(json.dumps(_run_info(device) | {"raw_render": comparison}, indent=2))
        return None
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
        args.json.write_text(json.dumps(_run_info(device) | {"rows": rows, "raw_render": comparison}, indent=2))


def _run_info(device: torch.device) -> dict:
    import os

    info = {"device": device.type, "torch": torch.__version__, "rawpy": rawpy.__version__,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# The target: isplab within 1.5x of LibRaw, bilinear against LINEAR and Malvar against AHD.
TARGET_RATIO = 1.5
PAIRS = (("bilinear", "LINEAR"), ("malvar", "AHD"))


def _bench_dng(path: Path, w: int, h: int) -> None:
    """A 14-bit RGGB DNG: a horizontal ramp from black times a colourful pattern, with shot-like noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    scene = (x / w) * (0.55 + 0.4 * np.sin(x / 37.0) * np.cos(y / 53.0))
    mosaic = np.clip(512 + scene * 15000 + rng.normal(0, 30, (h, w)), 0, 16383).astype(np.uint16)
    image = RawImage(path=None, mosaic=mosaic, cfa_pattern="RGGB", black_level=np.full(4, 512.0), white_level=16383,
                     as_shot_neutral=np.array([0.5, 1.0, 0.62]), exposure_time=0.01, iso=100, aperture=2.8,
                     color_matrix=np.array([[0.71, -0.12, -0.06], [-0.42, 1.21, 0.22], [-0.05, 0.16, 0.62]]),
                     make="isplab", model="bench", unique_camera_model="isplab bench")
    write_dng(path, image, overwrite=True)


def isplab_read_render(path: Path, method: str, device: torch.device) -> torch.Tensor:
    """Read a raw file and render it to sRGB ``(1, 3, H, W)`` on ``device`` with isplab's classical ISP."""
    raw = read_raw(path)
    mosaic = torch.from_numpy(raw.mosaic)[None, None].to(device)
    black = torch.tensor(raw.black_level, dtype=torch.float32, device=device)
    normalised = normalize_mosaic(mosaic, black, float(raw.white_level), raw.cfa_pattern)
    gains = gains_from_neutral(torch.tensor(raw.as_shot_neutral, dtype=torch.float32, device=device))
    ccm = camera_to_srgb_matrix(torch.tensor(raw.color_matrix, dtype=torch.float32, device=device))
    return render(normalised, raw.cfa_pattern, gains, ccm, demosaic_method=method)


def rawpy_read_render(path: Path, algorithm: str) -> np.ndarray:
    """LibRaw's read + render of the same file: 8-bit sRGB ``(H, W, 3)``."""
    with rawpy.imread(str(path)) as raw:
        return raw.postprocess(demosaic_algorithm=rawpy.DemosaicAlgorithm[algorithm], output_bps=8)


def raw_render_comparison(w: int, h: int, device: torch.device, repeat: int, sync) -> list[dict]:
    """Best-of-``repeat`` read + render times of isplab and rawpy on one DNG, interleaved; prints a table."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.dng"
        _bench_dng(path, w, h)
        runs = {}
        for method, algorithm in PAIRS:
            runs[method] = lambda method=method: isplab_read_render(path, method, device)
            runs[algorithm] = lambda algorithm=algorithm: rawpy_read_render(path, algorithm)
        best = dict.fromkeys(runs, float("inf"))
        with torch.no_grad():
            for name, fn in runs.items():  # warm-up (CUDA context, kernels, file cache)
                fn()
                sync()
            for _ in range(max(1, repeat)):
                for name, fn in runs.items():
                    sync()
                    start = time.perf_counter()
                    fn()
                    sync()
                    best[name] = min(best[name], time.perf_counter() - start)
    results = []
    mp = w * h / 1e6
    table = Table(title=f"read + render of a {w}x{h} ({mp:.1f} MP) DNG, best of {max(1, repeat)} — isplab on "
                        f"{device.type} ({torch.get_num_threads()} torch threads), rawpy {rawpy.__version__} on the CPU")
    for column in ("isplab", "isplab s", "rawpy", "rawpy s", "ratio", f"within {TARGET_RATIO}x"):
        table.add_column(column)
    for method, algorithm in PAIRS:
        ratio = best[method] / best[algorithm]
        results.append({"isplab_demosaic": method, "isplab_s": best[method], "rawpy_demosaic": algorithm,
                        "rawpy_s": best[algorithm], "ratio": ratio, "target_ratio": TARGET_RATIO,
                        "target_met": ratio <= TARGET_RATIO, "device": device.type, "megapixels": mp})
        table.add_row(method, f"{best[method]:.3f}", algorithm, f"{best[algorithm]:.3f}", f"{ratio:.2f}",
                      "yes" if ratio <= TARGET_RATIO else "NO")
    Console().print(table)
    return results


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
