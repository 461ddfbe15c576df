"""What ``proxy generate``'s worker processes run: one render per task.

Kept apart from :mod:`~isplab.workflows.proxy.generate` so that a spawned worker imports only this
module, the block table and the darktable backend: no torch for darktable renders (the builtin
backend imports it when it renders). A worker that imported torch held about 0.7 GB more and
started seconds later (``benchmarks/proxy.py``'s peak RSS; ``tests/workflows/proxy/test_generate.py``
checks that importing this module leaves torch unloaded).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from isplab.errors import IsplabError

# top-level functions: picklable

_WORKER: dict = {}


def _worker_init(workdir: str, threads: int, backend: str) -> None:
    _WORKER["configdir"] = Path(workdir) / f"worker-{os.getpid()}"
    _WORKER["threads"] = threads
    if backend == "builtin":
        import torch

        torch.set_num_threads(threads)


def _run_task(task: dict) -> dict:
    """Render one image: ``task`` names the block, raw, parameters (``None``: block off) and
    where to write. Returns ``{"ok", "seconds", "error"}``; never raises for a render failure."""
    from isplab.workflows.proxy.blocks import get_block

    block = get_block(task["block"])
    out = Path(task["output"])
    start = time.perf_counter()
    try:
        if task["backend"] == "darktable":
            from isplab.workflows.proxy.darktable import DarktableInfo, RenderJob, render, write_job_xmp

            info = DarktableInfo(**task["darktable"])
            xmp = write_job_xmp(Path(task["xmp"]), block, task["values"], np.asarray(task["wb_gains"]))
            configdir = _WORKER.get("configdir") or Path(task["workdir"]) / f"worker-{os.getpid()}"
            configdir.mkdir(parents=True, exist_ok=True)
            seconds = render(info, RenderJob(Path(task["dng"]), xmp, out, task["size"]), configdir, threads=_WORKER.get("threads"))
        else:
            from isplab.io.image import write_image
            from isplab.workflows.proxy.builtin import render_builtin

            image = render_builtin(block, task["dng"], task["values"], task["size"])
            tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
            write_image(tmp, image, overwrite=True)
            os.replace(tmp, out)
            seconds = time.perf_counter() - start
    except IsplabError as error:
        return {"ok": False, "error": str(error), "seconds": time.perf_counter() - start}
    except Exception as error:  # a batch job reports a failure and goes on
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "seconds": time.perf_counter() - start}
    return {"ok": True, "seconds": seconds, "error": None}
