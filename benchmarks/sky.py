"""Sky segmentation benchmark: held-out IoU and boundary F at a stated training budget, refinement,
tile-vs-whole difference, and full-size (8192 x 4096) prediction time and peak memory.

    .venv/bin/python benchmarks/sky.py [--images 24] [--size 512x256] [--encoder resnet34]
        [--epochs 20] [--patches-per-epoch 512] [--pred-size 8192x4096] [--device auto]
        [--quick] [--json out.json]

Steps (all on data made by ``isplab sky synth``, split by image as ``isplab sky train`` does):

1. train for ``--epochs`` x ``--patches-per-epoch`` patches and report the wall time (the budget);
2. held-out IoU (pooled) and mean boundary F-score (2 px), without and with the guided-filter
   refinement: the refinement column says whether it helps, on this data;
3. the largest difference between tiled (256-pixel tiles, overlap 192, margin 64) and whole-image
   prediction of the trained model on a synthetic image of at least 1024 x 512 (fits both ways);
4. the time and peak resident memory (``ru_maxrss`` of a fresh process) of predicting one
   ``--pred-size`` HDR image with the default tiling.

``--quick`` (tiny images, ResNet-18 with 3 stages, two epochs, a 1024 x 512 prediction) is a smoke
test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from isplab.engine.trainer import resolve_accelerator
from isplab.workflows.sky.data import open_dataset, split_by_image
from isplab.workflows.sky.evaluate import evaluate
from isplab.workflows.sky.model import load_sky_model
from isplab.workflows.sky.predict import RefineOptions, TileOptions, predict_alpha
from isplab.workflows.sky.synth import make_sample, parse_size, synthesize
from isplab.workflows.sky.train import SkyTrainConfig, train_sky


def full_size_run(model_path: str, size: tuple[int, int], tile: TileOptions, device: str) -> dict:
    """In a child process: predict one synthetic HDR image of ``size``; time and peak memory."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_sky_model(model_path)
    w, h = size
    small, *_ = make_sample(0, 0, (w // 8, h // 8))
    image = np.ascontiguousarray(np.repeat(np.repeat(small, 8, 0), 8, 1))  # an 8x upscaled panorama
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    alpha = predict_alpha(model, image, True, tile, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": before, "image_mb": image.nbytes / 2**20,
              "sky_fraction": float((alpha >= 0.5).mean())}
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="512x256")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--encoder-depth", type=int, default=5)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patches-per-epoch", type=int, default=512)
    parser.add_argument("--pred-size", default="8192x4096")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size, args.encoder, args.encoder_depth = 6, "256x128", "resnet18", 3
        args.patch, args.batch_size, args.epochs, args.patches_per_epoch, args.pred_size = 64, 4, 2, 32, "1024x512"
    device = resolve_accelerator(args.device)
    tiles = TileOptions()
    results: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                     "device": device, "cpu_threads": torch.get_num_threads(), "options": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="isplab-sky-bench-") as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "data", args.images, size=parse_size(args.size), seed=args.seed)
        config = SkyTrainConfig(encoder=args.encoder, encoder_depth=args.encoder_depth, patch=args.patch, batch_size=args.batch_size,
                                epochs=args.epochs, patches_per_epoch=args.patches_per_epoch, seed=args.seed, device=device)
        start = time.perf_counter()
        model_path = train_sky(tmp / "data", tmp / "model", config, progress=False)
        results["train_seconds"] = time.perf_counter() - start
        results["train_patches"] = args.epochs * args.patches_per_epoch
        _, val = split_by_image(open_dataset(tmp / "data"), config.val_fraction, config.seed)
        model = load_sky_model(model_path)
        torch_device = device
        for name, refine in (("plain", None), ("refined", RefineOptions())):
            report = evaluate(model, val, tmp / f"report-{name}", tiles, device=torch_device, refine=refine)
            results[name] = {"iou": report.iou, "boundary_f": report.boundary_f, "images": len(val)}
        results["refinement_helps_boundary_f"] = results["refined"]["boundary_f"] > results["plain"]["boundary_f"]
        small_tiles = TileOptions(tile=256, overlap=192, margin=64)
        w, h = parse_size(args.size)
        compare_size = (max(w, 4 * small_tiles.tile), max(h, 2 * small_tiles.tile))
        image, *_ = make_sample(args.seed + 1000, 0, compare_size)
        whole = predict_alpha(model, image, True, TileOptions(tile=0), device=torch_device)
        tiled = predict_alpha(model, image, True, small_tiles, device=torch_device)
        results["tile_vs_whole"] = {"size": f"{compare_size[0]}x{compare_size[1]}", "tiles": vars(small_tiles),
                                    "max_abs_diff": float(np.abs(whole - tiled).max())}
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results["full_size"] = {"size": args.pred_size, "tiles": vars(tiles),
                                    **pool.submit(full_size_run, str(model_path), parse_size(args.pred_size), tiles, device).result()}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
