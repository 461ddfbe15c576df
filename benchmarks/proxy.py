"""Proxy data generation throughput: ``isplab proxy generate`` per backend and worker count.

    .venv/bin/python benchmarks/proxy.py [--block exposure] [--count 8] [--size 768x512]
                                         [--workers 1 2] [--backend darktable builtin] [--json out.json]

Synthesises ``--images`` DNGs at ``--size`` (768x512 = 0.39 MP by default) once, then for each
backend and worker count generates a fresh dataset of ``--count`` samples from them and reports
renders per second (the block-off render of each image plus one render per sample, over the
wall time of the whole command), and the median time of one render as recorded in the manifest
(for darktable: one ``darktable-cli`` call, start-up included). The darktable backend is skipped,
saying so, when darktable-cli is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from isplab.data.synth import parse_size, synthesize_dataset
from isplab.workflows.proxy.generate import GenerateOptions, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block", default="exposure")
    parser.add_argument("--count", type=int, default=8, help="samples per dataset")
    parser.add_argument("--images", type=int, default=4, help="synthetic DNGs")
    parser.add_argument("--size", default="768x512", help="DNG size WIDTHxHEIGHT")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backend", nargs="+", default=["darktable", "builtin"])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    console = Console()
    size = parse_size(args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raws = Path(tmp) / "raws"
        synthesize_dataset(raws, args.images, size=size, progress=False)
        for backend in args.backend:
            if backend == "darktable" and shutil.which("darktable-cli") is None:
                console.print("darktable-cli not installed: darktable backend skipped")
                continue
            for workers in args.workers:
                out = Path(tmp) / f"{backend}-{workers}"
                start = time.perf_counter()
                result = generate(
                    GenerateOptions(block=args.block, output=out, count=args.count, images=raws, backend=backend,
                                    workers=workers, progress=False)  # fmt: skip
                )
                wall = time.perf_counter() - start
                renders = len(result.rendered) + args.images
                per_render = [r["render_seconds"] for r in result.rendered]
                rows.append(
                    {
                        "backend": backend,
                        "darktable": result.darktable_version,
                        "workers": workers,
                        "renders": renders,
                        "failed": len(result.failures),
                        "wall_s": round(wall, 2),
                        "renders_per_s": round(renders / wall, 3),
                        "median_render_s": round(statistics.median(per_render), 3) if per_render else None,
                    }
                )
    table = Table(title=f"proxy generate {args.block}: {args.count} samples + {args.images} inputs at {size[0]}x{size[1]} "
                        f"({size[0] * size[1] / 1e6:.2f} MP), {os.cpu_count()} CPUs")  # fmt: skip
    for column in ("backend", "workers", "renders", "failed", "wall (s)", "renders/s", "one render (s, median)"):
        table.add_column(column, justify="right")
    for r in rows:
        name = r["backend"] + (f" {r['darktable']}" if r["darktable"] else "")
        table.add_row(name, str(r["workers"]), str(r["renders"]), str(r["failed"]), f"{r['wall_s']:.2f}",
                      f"{r['renders_per_s']:.2f}", f"{r['median_render_s']:.3f}")  # fmt: skip
    console.print(table)
    if args.json:
        meta = {"cpus": os.cpu_count(), "machine": platform.machine(), "size": list(size), "block": args.block}
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
