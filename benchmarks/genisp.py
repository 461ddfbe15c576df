"""GenISP benchmark: AP of one frozen detector on (a) packed raw, (b) a classical ISP, (c) GenISP and
(d) normal-light images, on the camera GenISP was trained on and on a second camera without
retraining; GenISP's parameter count, latency per 12 MP frame and peak memory.

    .venv/bin/python benchmarks/genisp.py [--images 800] [--size 320x224] [--detector-epochs 24]
        [--genisp-epochs 15] [--batch-size 8] [--device cpu|cuda] [--threads 2] [--workers 0]
        [--out runs/bench-genisp] [--quick] [--json out.json]

Steps (data from ``isplab genisp synth``: ``--images`` scenes, 60/20/20 % train/val/test, cameras
cam-a and cam-b):

1. train the small detector (``retinanet_resnet18_fpn``, random init) on the normal-light train
   renders for ``--detector-epochs`` (``isplab genisp detector train``);
2. freeze it and train GenISP on cam-a's raw train split with the paper's schedule squeezed into
   ``--genisp-epochs`` (Adam 1e-2, x0.1 at 1/3 and 2/3 of the epochs; ``isplab genisp train``);
3. AP / AP50 / AP75 (COCO, torchmetrics) of the same detector on cam-a's and cam-b's test raws for
   inputs (a)-(d) (``isplab genisp test``);
4. GenISP's parameters, the time and peak resident memory (``ru_maxrss`` of a fresh process) of
   running it on one 4000 x 3000 (12 MP) camera-XYZ frame with the default 1024-pixel tiles, on the
   CPU (and CUDA when ``--device cuda``).

The training budget (epochs, steps, wall time) is printed with the table. ``--quick`` (24 tiny
images, one epoch each, a 1 MP frame) is a smoke test of the script, not a measurement.

Measured (2026-11-30, one H200 with 16 CPU cores, ``--device cuda --threads 14 --workers 8`` and the
defaults: 800 scenes, 480 for training, 161 test scenes per camera; detector 24 epochs = 1440
steps, GenISP 15 epochs = 900 steps, about 9 minutes up to the latency step). AP / AP50 / AP75 in %:

=================================  ==================  ==================
input                              cam-a (trained on)  cam-b (unseen)
=================================  ==================  ==================
(a) packed raw                     0.1 / 0.3 / 0.0     0.1 / 0.3 / 0.0
(b) classical ISP                  1.1 / 3.5 / 0.3     0.4 / 1.7 / 0.1
(c) GenISP                         23.1 / 52.6 / 15.4  17.9 / 43.6 / 12.2
(d) normal light (upper bound)     35.3 / 67.6 / 34.3  35.3 / 67.6 / 34.3 (the same renders)
=================================  ==================  ==================

GenISP has 116,015 parameters; one 4000 x 3000 frame took 0.055 s on the H200 in 1024-pixel tiles
(peak GPU memory 1.8 GB; 0.026 s and 6.2 GB untiled) and 9.3 s on its 16 CPU threads (tiled, peak
RSS 3.2 GB); on the project's 2-core CPU machine, shared with other jobs at the time, 108 s with
2 threads (peak RSS 2.7 GB). The classical ISP's auto exposure amplifies the dark raws' noise and
the detector was trained on clean renders: (b) is barely above (a) on this data.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from isplab.models.genisp import load_genisp
from isplab.workflows.genisp.detector import load_detector
from isplab.workflows.genisp.evaluate import SOURCE_TITLES, SOURCES, evaluate_inputs
from isplab.workflows.genisp.synth import synthesize
from isplab.workflows.genisp.train import (
    DetectorTrainConfig,
    GenISPTrainConfig,
    open_split,
    train_detector,
    train_genisp,
)


def frame_run(model_path: str, size: tuple[int, int], tile: int, device: str, threads: int) -> dict:
    """In a child process: GenISP on one ``size`` (width, height) XYZ frame; time and peak memory."""
    from isplab.workflows.genisp.predict import apply_genisp

    torch.set_num_threads(threads)
    model = load_genisp(model_path).to(device)
    w, h = size
    x = (torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 0.05).to(device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    with torch.no_grad():
        for _ in range(2):  # the first run warms up
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
            start = time.perf_counter()
            apply_genisp(model, x, tile=tile)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    result = {"seconds": times[-1], "first_seconds": times[0], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "rss_before_mb": before, "frame_mb": x.numel() * 4 / 2**20, "tile": tile, "device": device, "threads": threads}
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _in_child(*args) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(frame_run, *args).result()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--size", default="320x224", help="synthetic sensor size WIDTHxHEIGHT")
    parser.add_argument("--detector", default="retinanet_resnet18_fpn")
    parser.add_argument("--detector-epochs", type=int, default=24)
    parser.add_argument("--genisp-epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--frame", default="4000x3000", help="latency frame WIDTHxHEIGHT (12 MP)")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-genisp"))
    parser.add_argument("--reuse", action="store_true", help="reuse the dataset and detector already in --out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size, args.detector_epochs, args.genisp_epochs, args.frame = 24, "128x96", 1, 1, "1024x1024"
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    short, long = sorted((height // 2, width // 2))  # the packed raw's size: no resizing
    out = args.out
    timings = {}

    data = out / "data"
    start = time.perf_counter()
    if not (args.reuse and (data / "manifest.json").is_file()):
        synthesize(data, count=args.images, seed=args.seed, size=(width, height), workers=args.threads, overwrite=True)
    timings["synth_s"] = time.perf_counter() - start

    detector_path = out / "detector" / "detector.pt"
    start = time.perf_counter()
    if not (args.reuse and detector_path.is_file()):
        dcfg = DetectorTrainConfig(detector=args.detector, short=short, long=long, batch_size=args.batch_size,
                                   epochs=args.detector_epochs, seed=args.seed, device=args.device, workers=args.workers)
        train_detector(data, out / "detector", dcfg, overwrite=True, progress=False)
    timings["detector_train_s"] = time.perf_counter() - start

    e = args.genisp_epochs
    milestones = [max(1, round(e / 3)), max(2, round(2 * e / 3))] if e >= 3 else [e + 1]
    gcfg = GenISPTrainConfig(camera="cam-a", batch_size=args.batch_size, epochs=e, milestones=milestones, seed=args.seed, device=args.device,
                             workers=args.workers)
    start = time.perf_counter()
    model_path = train_genisp(data, out / "genisp", detector_path, gcfg, overwrite=True, progress=False)
    timings["genisp_train_s"] = time.perf_counter() - start

    detector = load_detector(detector_path)
    model = load_genisp(model_path)
    results = {}
    for camera in ("cam-a", "cam-b"):
        coco = open_split(data, camera, "test")
        normal = open_split(data, "normal", "test")
        report = evaluate_inputs(coco, model, detector, out / f"test-{camera}", sources=SOURCES, normal_coco=normal,
                                 short=short, long=long, overwrite=True, title=f"{camera} test ({len(coco)} images)",
                                 device="cuda" if args.device == "cuda" else "cpu")
        results[camera] = report.metrics
        print((out / f"test-{camera}" / "table.txt").read_text(), flush=True)

    frame_w, frame_h = (int(v) for v in args.frame.lower().split("x"))
    latency = {"cpu": _in_child(str(model_path), (frame_w, frame_h), args.tile, "cpu", args.threads)}
    if args.device == "cuda":
        latency["cuda"] = _in_child(str(model_path), (frame_w, frame_h), args.tile, "cuda", args.threads)

    train_images = len(open_split(data, "cam-a", "train"))
    summary = {
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "short": short, "long": long,
                     "train_images": train_images, "genisp_milestones": milestones},
        "budget": {**timings, "detector_steps": args.detector_epochs * -(-train_images // args.batch_size),
                   "genisp_steps": e * -(-train_images // args.batch_size)},
        "ap": results,
        "genisp_parameters": sum(p.numel() for p in model.parameters()),
        "latency": latency,
        "python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.machine(),
    }
    _print(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _print(summary: dict) -> None:
    s = summary["settings"]
    b = summary["budget"]
    print(f"GenISP benchmark: {s['images']} synthetic scenes ({s['size']} sensor, detector input {s['long']}x{s['short']}), "
          f"{s['train_images']} training images")
    print(f"budget: detector {s['detector']} {s['detector_epochs']} epochs ({b['detector_steps']} steps, {b['detector_train_s']:.0f} s); "
          f"GenISP {s['genisp_epochs']} epochs ({b['genisp_steps']} steps, {b['genisp_train_s']:.0f} s), batch {s['batch_size']}, "
          f"{s['threads']} CPU threads")
    print(f"{'input':34s} " + "  ".join(f"{c + ' ' + m:>11s}" for c in summary["ap"] for m in ("AP", "AP50", "AP75")))
    for source in SOURCES:
        cells = "  ".join(f"{100 * summary['ap'][c][source][m]:11.1f}" for c in summary["ap"] for m in ("AP", "AP50", "AP75"))
        print(f"{SOURCE_TITLES[source]:34s} {cells}")
    for camera, ap in summary["ap"].items():
        margin = 100 * (ap["genisp"]["AP"] - max(ap["raw"]["AP"], ap["classical"]["AP"]))
        print(f"{camera}: GenISP minus the better of (a), (b): {margin:+.1f} AP (goal: +5)")
    print(f"GenISP parameters: {summary['genisp_parameters']:,}")
    for device, lat in summary["latency"].items():
        extra = f", peak GPU {lat['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in lat else ""
        print(f"latency per {s['frame']} frame on {device} ({lat['threads']} threads, tiles {lat['tile']}): {lat['seconds']:.2f} s, "
              f"peak RSS {lat['peak_rss_mb']:.0f} MB{extra}")


if __name__ == "__main__":
    main()
