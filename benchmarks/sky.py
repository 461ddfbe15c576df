"""Sky segmentation benchmark: held-out IoU and boundary F at a stated training budget, refinement,
tile-vs-whole difference, and full-size (8192 x 4096) prediction time and peak memory.

    .venv/bin/python benchmarks/sky.py [--images 24] [--image-size 512x256] [--encoder resnet34]
        [--epochs 20] [--patches-per-epoch 512] [--size 8192x4096] [--device auto] [--quick] [--json out.json]
    .venv/bin/python benchmarks/sky.py --full-res [--size 8192x4096] [--device cuda] [--model model.pt]
        [--tile 2048 --overlap 896 --margin 384 --tile-batch 1] [--nchw] [--json out.json]
    .venv/bin/python benchmarks/sky.py --tile-study [--model model.pt] [--size 1536x1536] [--study-tile 1024]

Default mode (all on data made by ``isplab sky synth``, split by image as ``isplab sky train`` does):

1. train for ``--epochs`` x ``--patches-per-epoch`` patches and report the wall time (the budget);
2. held-out IoU (pooled) and mean boundary F-score (2 px), without and with the guided-filter
   refinement: the refinement column says whether it helps, on this data;
3. the largest difference between tiled (the default :class:`TileOptions`) and whole-image
   prediction of the trained model on a synthetic image one tile and a quarter wide (fits both ways);
4. the full-resolution measurement below at ``--size``.

``--full-res``: only step 4, with the default U-Net (ResNet-34, random weights) or ``--model``:
predicting one synthetic ``--size`` HDR panorama (an 8x-upscaled ``make_sample``) in a fresh
process; reports the wall time (after a warm-up forward pass on one tile), the peak resident memory
of that process (``ru_maxrss``), its memory before prediction (the image already made) and, with
``--device cuda``, ``torch.cuda.max_memory_allocated``. Measured here (2 CPU cores shared with
other jobs, so the times are not representative; random weights, default tiling): 2560x1024, 2 tiles
of 2048x1024: 1.0 GB resident before prediction, 2.2 GB peak; 4096x2048, 3 tiles of 2048x2048:
3.2 GB peak. The peak is the process, the image, two image-sized float32 accumulators and one
tile's activations (about 1.2 GB per 2048x1024 pixels); at 8192x4096 the defaults make 21 tiles of
2048x2048 (2.6 times the image's pixels): ``--full-res`` at 8192x4096 took 429 s with a 3.49 GB
peak (1.43 GB before prediction; the 2-core machine also ran the test suite; 2026-11-30).
``--size 2048x1024`` and ``4096x2048``
measure smaller images (the time scales with the pixel count).

``--tile-study``: the receptive-field effect behind the default margin. For one tile of
``--study-tile`` pixels inside a ``--size`` image, the largest ``|tile output - whole-image output|``
over the pixels at least ``d`` pixels inside the tile's edge, for ``d`` = 0, 16, 32, ...; once at a
tile origin on the network's pooling grid (a multiple of 32) and once 16 pixels off it.

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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from isplab.engine.trainer import resolve_accelerator
from isplab.workflows.sky.predict import TileOptions, _starts, predict_alpha
from isplab.workflows.sky.synth import make_sample, parse_size


def _model(model_path: str | None, encoder: str = "resnet34", depth: int = 5, seed: int = 0):
    from isplab.workflows.sky.model import build_sky_model, load_sky_model

    if model_path:
        return load_sky_model(model_path)
    torch.manual_seed(seed)
    return build_sky_model(encoder, depth).eval()


def full_size_run(model_path: str | None, size: tuple[int, int], tile: TileOptions, device: str, encoder: str = "resnet34",
                  depth: int = 5, channels_last: bool = True) -> dict:
    """In a child process: predict one synthetic HDR image of ``size``; time and peak memory."""
    model = _model(model_path, encoder, depth)
    w, h = size
    small, *_ = make_sample(0, 0, (max(32, w // 8), max(32, h // 8)))
    image = np.ascontiguousarray(np.repeat(np.repeat(small, 8, 0), 8, 1)[:h, :w])  # an 8x upscaled panorama
    mult = model.size_multiple
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process, the model and the image
    # warm-up: one small forward pass (CUDA context, allocator, lazy initialisation), small enough
    # not to raise the peak memory
    predict_alpha(model, image[:256, :256], True, TileOptions(tile=0), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    alpha = predict_alpha(model, image, True, tile, device=device, channels_last=channels_last)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    th, tw = (min(tile.tile, -(-h // mult) * mult), min(tile.tile, -(-w // mult) * mult)) if tile.tile > 0 else (h, w)
    n_tiles = len(_starts(-(-h // mult) * mult, th, tile.tile - tile.overlap)) * len(_starts(-(-w // mult) * mult, tw, tile.tile - tile.overlap)) if tile.tile > 0 else 1
    result = {"seconds": seconds, "megapixels_per_second": w * h / 1e6 / seconds, "tiles": n_tiles,
              "peak_rss_mb": peak, "rss_before_mb": before, "image_mb": image.nbytes / 2**20,
              "sky_fraction": float((alpha >= 0.5).mean()), "torch_threads": torch.get_num_threads(), "channels_last": channels_last}
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def full_size(model_path: str | None, size: tuple[int, int], tile: TileOptions, device: str, **kwargs) -> dict:
    """:func:`full_size_run` in a fresh process (so its peak memory is the prediction's own)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return {"size": f"{size[0]}x{size[1]}", "tiles_options": asdict(tile),
                **pool.submit(full_size_run, model_path, size, tile, device, **kwargs).result()}


def edge_profile(model, image: np.ndarray, y0: int, x0: int, tile: int, step: int = 16) -> dict[int, float]:
    """``{d: max |tile - whole|}`` over the pixels at least ``d`` pixels inside a ``tile``-pixel tile at ``(y0, x0)``."""
    from isplab.workflows.sky.hdr import network_input

    x = torch.from_numpy(network_input(image, True)).permute(2, 0, 1)[None].contiguous()
    with torch.inference_mode():
        whole = torch.sigmoid(model(x))[0, 0].numpy()
        part = torch.sigmoid(model(x[:, :, y0 : y0 + tile, x0 : x0 + tile].contiguous()))[0, 0].numpy()
    diff = np.abs(part - whole[y0 : y0 + tile, x0 : x0 + tile])
    yy, xx = np.mgrid[:tile, :tile]
    inside = np.minimum(np.minimum(yy, tile - 1 - yy), np.minimum(xx, tile - 1 - xx))
    return {d: float(diff[inside >= d].max()) for d in range(0, tile // 2, step)}


def tile_study(model_path: str | None, size: tuple[int, int], tile: int, seed: int) -> dict:
    model = _model(model_path, seed=seed)
    image, *_ = make_sample(seed + 7, 0, size)
    w, h = size
    y0 = ((h - tile) // 2) // 32 * 32
    x0 = ((w - tile) // 2) // 32 * 32
    results = {"model": model_path or "resnet34 U-Net, random weights", "size": f"{size[0]}x{size[1]}", "tile": tile}
    for name, (oy, ox) in (("aligned", (y0, x0)), ("off_grid_16", (y0, x0 + 16))):
        profile = edge_profile(model, image, oy, ox, tile)
        below = [d for d, v in profile.items() if all(profile[e] < 1e-3 for e in profile if e >= d)]
        results[name] = {"origin": [oy, ox], "max_abs_diff_inside": profile, "below_1e-3_from": min(below) if below else None}
    return results


def train_and_test(args, device: str, tiles: TileOptions, results: dict) -> None:
    from isplab.workflows.sky.data import open_dataset, split_by_image
    from isplab.workflows.sky.evaluate import evaluate
    from isplab.workflows.sky.model import load_sky_model
    from isplab.workflows.sky.predict import RefineOptions
    from isplab.workflows.sky.synth import synthesize
    from isplab.workflows.sky.train import SkyTrainConfig, train_sky

    with tempfile.TemporaryDirectory(prefix="isplab-sky-bench-") as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "data", args.images, size=parse_size(args.image_size), seed=args.seed)
        config = SkyTrainConfig(encoder=args.encoder, encoder_depth=args.encoder_depth, patch=args.patch, batch_size=args.batch_size,
                                epochs=args.epochs, patches_per_epoch=args.patches_per_epoch, seed=args.seed, device=device)
        start = time.perf_counter()
        model_path = train_sky(tmp / "data", tmp / "model", config, progress=False)
        results["train_seconds"] = time.perf_counter() - start
        results["train_patches"] = args.epochs * args.patches_per_epoch
        _, val = split_by_image(open_dataset(tmp / "data"), config.val_fraction, config.seed)
        model = load_sky_model(model_path)
        for name, refine in (("plain", None), ("refined", RefineOptions())):
            report = evaluate(model, val, tmp / f"report-{name}", tiles, device=device, refine=refine)
            results[name] = {"iou": report.iou, "boundary_f": report.boundary_f, "images": len(val)}
        results["refinement_helps_boundary_f"] = results["refined"]["boundary_f"] > results["plain"]["boundary_f"]
        compare_size = (tiles.tile + tiles.tile // 4, min(1024, tiles.tile))
        image, *_ = make_sample(args.seed + 1000, 0, compare_size)
        whole = predict_alpha(model, image, True, TileOptions(tile=0), device=device)
        tiled = predict_alpha(model, image, True, tiles, device=device)
        results["tile_vs_whole"] = {"size": f"{compare_size[0]}x{compare_size[1]}", "tiles": asdict(tiles),
                                    "max_abs_diff": float(np.abs(whole - tiled).max())}
        results["full_size"] = full_size(str(model_path), parse_size(args.size), tiles, device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-res", action="store_true", help="only time and peak memory of one --size prediction")
    parser.add_argument("--tile-study", action="store_true", help="only the tile-edge error profile")
    parser.add_argument("--model", help="model.pt for --full-res / --tile-study (default: ResNet-34 U-Net, random weights)")
    parser.add_argument("--size", "--pred-size", dest="size", default=None, help="prediction size WxH (default 8192x4096; 1536x1536 for --tile-study)")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--image-size", default="512x256", help="synthetic training image size")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--encoder-depth", type=int, default=5)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patches-per-epoch", type=int, default=512)
    defaults = TileOptions()
    parser.add_argument("--tile", type=int, default=defaults.tile)
    parser.add_argument("--overlap", type=int, default=defaults.overlap)
    parser.add_argument("--margin", type=int, default=defaults.margin)
    parser.add_argument("--tile-batch", type=int, default=defaults.batch)
    parser.add_argument("--study-tile", type=int, default=1024)
    parser.add_argument("--nchw", action="store_true", help="--full-res: run the network in NCHW instead of channels_last (to compare)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.image_size, args.encoder, args.encoder_depth = 6, "256x128", "resnet18", 3
        args.patch, args.batch_size, args.epochs, args.patches_per_epoch = 64, 4, 2, 32
        args.size = args.size or "1024x512"
        args.tile, args.overlap, args.margin = 256, 192, 64
    device = resolve_accelerator(args.device)
    tiles = TileOptions(args.tile, args.overlap, args.margin, args.tile_batch)
    results: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                     "device": device, "cpu_threads": torch.get_num_threads(), "options": {k: str(v) for k, v in vars(args).items()}}
    if args.tile_study:
        results["tile_study"] = tile_study(args.model, parse_size(args.size or "1536x1536"), args.study_tile, args.seed)
    elif args.full_res:
        results["full_size"] = full_size(args.model, parse_size(args.size or "8192x4096"), tiles, device, channels_last=not args.nchw)
    else:
        args.size = args.size or "8192x4096"
        train_and_test(args, device, tiles, results)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
