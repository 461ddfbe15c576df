"""AWB benchmark on Raspberry Pi's published statistics (``../shared/data/awb-rpi``).

    .venv/bin/python benchmarks/awb_rpi.py [--targets pisp vc4] [--folds 5] [--arch A] [--quick] [--json out.json]

For each target: grouped K-fold cross-validation (scenes ``<user>,<id>`` never split; the honest
held-out error), the same model trained and tested on every image (in-sample, as the reference
workflow reports it), the camera's own AWB estimate, Raspberry Pi's reference TFLite model on the
same images (it was trained on them, so its number is in-sample too), training wall time, and the
TFLite latency per inference (median over ``--latency-runs`` LiteRT invocations, batch 1) of our
exported in-sample model and of the reference model. Errors are in mireds.

Training uses ``TrainConfig()`` defaults (``--arch``/``--epochs`` override). ``--quick`` (2 folds,
3 epochs, 50 latency runs) is a smoke test only: its accuracy numbers are meaningless.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from isplab.export import TFLiteRunner
from isplab.workflows.awb.config import TrainConfig
from isplab.workflows.awb.constants import TARGET_SIZES
from isplab.workflows.awb.dataset import load_dataset
from isplab.workflows.awb.evaluate import ErrorSummary, cross_validate, evaluate_model, evaluate_tflite
from isplab.workflows.awb.export import export_awb
from isplab.workflows.awb.train import train_model

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "awb-rpi"
# The goals: held-out mean and worst, in mireds.
GOAL_MEAN, GOAL_WORST = 10.0, 60.0


def tflite_latency(path: Path, image: np.ndarray, lux: np.ndarray, runs: int) -> float:
    """Median seconds of one ``invoke()`` of a loaded LiteRT interpreter on fixed batch-1 inputs."""
    runner = TFLiteRunner(path)
    runner([image, lux])  # sets the inputs and warms up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.interpreter.invoke()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark_target(target: str, data: Path, config: TrainConfig, folds: int, latency_runs: int, console: Console) -> dict:
    dataset = load_dataset(data / target / "train", target)
    console.log(f"{target}: {len(dataset)} images, {len({s.scene for s in dataset.samples})} scenes")

    start = time.perf_counter()
    cv = cross_validate(dataset, folds, config)
    cv_seconds = time.perf_counter() - start
    console.log(f"{target}: {folds}-fold CV mean {cv.model.mean:.2f} mireds ({cv_seconds:.0f} s)")

    start = time.perf_counter()
    model = train_model(dataset, config, progress=False)
    train_seconds = time.perf_counter() - start
    in_sample = evaluate_model(model, dataset)
    console.log(f"{target}: in-sample mean {in_sample.model.mean:.2f} mireds ({train_seconds:.0f} s)")

    reference_path = data / "reference-models" / f"model_{target}.tflite"
    reference = evaluate_tflite(reference_path, dataset)
    example = (dataset.images[:1], dataset.lux[:1])
    with tempfile.TemporaryDirectory() as tmp:
        ours_path = Path(tmp) / f"awb_{target}.tflite"
        export_awb(model, target, ours_path, dataset=dataset)  # libcamera's contract, parity within 1 mired
        ours_tflite = evaluate_tflite(ours_path, dataset)
        ours_latency = tflite_latency(ours_path, *example, latency_runs)
        ours_size = ours_path.stat().st_size
    reference_latency = tflite_latency(reference_path, *example, latency_runs)

    return {
        "images": len(dataset),
        "scenes": len({s.scene for s in dataset.samples}),
        "cv": cv.model.as_dict(),
        "cv_folds": [
            {"fold": f.index, "test_images": f.test_count, **f.model.as_dict(), "train_seconds": f.train_seconds}
            for f in cv.folds
        ],
        "cv_seconds": cv_seconds,
        "in_sample": in_sample.model.as_dict(),
        "in_sample_tflite": ours_tflite.model.as_dict(),
        "camera": in_sample.camera.as_dict(),
        "reference_in_sample": reference.model.as_dict(),
        "train_seconds": train_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tflite_bytes": ours_size,
        "tflite_bytes_reference": reference_path.stat().st_size,
        "latency_ms": ours_latency * 1e3,
        "latency_ms_reference": reference_latency * 1e3,
    }


def error_table(results: dict[str, dict], folds: int) -> Table:
    table = Table(title="AWB error (mireds); the reference model was trained on these images")
    for column in ("target", "estimate", "mean", "median", "p95", "worst", "images"):
        table.add_column(column, justify="left" if column in ("target", "estimate") else "right")
    for target, r in results.items():
        rows = [
            (f"ours, held-out ({folds}-fold grouped CV)", r["cv"]),
            ("ours, in-sample", r["in_sample"]),
            ("ours, in-sample, TFLite", r["in_sample_tflite"]),
            ("reference, in-sample (TFLite)", r["reference_in_sample"]),
            ("camera AWB", r["camera"]),
        ]
        for i, (name, summary) in enumerate(rows):
            s = ErrorSummary(**summary)
            table.add_row(target if i == 0 else "", name, f"{s.mean:.2f}", f"{s.median:.2f}", f"{s.p95:.2f}",
                          f"{s.worst:.1f}", str(s.count), end_section=i == len(rows) - 1)
    return table


def cost_table(results: dict[str, dict]) -> Table:
    table = Table(title="Training wall time (all images; all CV folds), TFLite latency (batch 1, median) and size")
    for column in ("target", "train (s)", "CV (s)", "params", "ms ours", "ms ref", "KB ours", "KB ref"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target, r in results.items():
        table.add_row(target, f"{r['train_seconds']:.1f}", f"{r['cv_seconds']:.1f}", str(r["parameters"]),
                      f"{r['latency_ms']:.3f}", f"{r['latency_ms_reference']:.3f}",
                      f"{r['tflite_bytes'] / 1024:.1f}", f"{r['tflite_bytes_reference'] / 1024:.1f}")
    return table


def goals(results: dict[str, dict]) -> list[str]:
    lines = []
    for target, r in results.items():
        checks = [
            (f"held-out mean {r['cv']['mean']:.2f} <= {GOAL_MEAN:g}", r["cv"]["mean"] <= GOAL_MEAN),
            (f"held-out worst {r['cv']['worst']:.1f} <= {GOAL_WORST:g}", r["cv"]["worst"] <= GOAL_WORST),
            (f"in-sample mean {r['in_sample']['mean']:.2f} <= reference {r['reference_in_sample']['mean']:.2f}",
             r["in_sample"]["mean"] <= r["reference_in_sample"]["mean"]),
        ]
        lines += [f"{target}: {'[green]pass[/]' if ok else '[red]FAIL[/]'} {text}" for text, ok in checks]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="the awb-rpi data folder (default ../shared/data/awb-rpi)")
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGET_SIZES), default=["pisp", "vc4"])
    parser.add_argument("--folds", type=int, default=None, help="cross-validation folds (default 5; 2 with --quick)")
    parser.add_argument("--arch", help="model architecture (default: TrainConfig's)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: TrainConfig's; 3 with --quick)")
    parser.add_argument("--latency-runs", type=int, default=None, help="TFLite invocations timed (default 200; 50 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 folds, 3 epochs (accuracy meaningless)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    console = Console()
    if not args.data.is_dir():
        console.print(f"[red]AWB data not found at {args.data.resolve()}[/]: this benchmark needs Raspberry Pi's "
                      "statistics images (pisp/train, vc4/train, reference-models); pass --data DIR.")
        sys.exit(2)
    overrides = {"arch": args.arch, "epochs": args.epochs or (3 if args.quick else None)}
    config = dataclasses.replace(TrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    folds = args.folds or (2 if args.quick else 5)
    latency_runs = args.latency_runs or (50 if args.quick else 200)

    results = {t: benchmark_target(t, args.data, config, folds, latency_runs, console) for t in args.targets}
    console.print(error_table(results, folds))
    console.print(cost_table(results))
    for line in goals(results):
        console.print(line)
    if args.json:
        args.json.write_text(json.dumps({
            "data": str(args.data.resolve()),
            "quick": args.quick,
            "folds": folds,
            "config": dataclasses.asdict(config),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "targets": results,
        }, indent=2))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
