"""How many torch threads a CPU computation should use on a machine that may be busy.

More torch threads than free CPUs can make training many times slower, not a little: the threads
spin waiting for each other while other processes hold the CPUs. :func:`fit_threads_to_cpus` takes
the CPUs this process may use (:func:`available_cpus`) minus the 1-minute load average, divided
among the processes of one training run, at least 1 — unless the user chose (``OMP_NUM_THREADS``).
:func:`isplab.engine.build_trainer` calls it for CPU training; the demo calls it once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "fit_threads_to_cpus"]


def available_cpus() -> int:
    """CPUs this process may actually use: its CPU affinity, capped by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core host sees 64 cores but gets 2)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):  # fmt: skip
        try:
            if period_file is None:
                quota, period = Path(quota_file).read_text().split()[:2]
            else:
                quota, period = Path(quota_file).read_text().strip(), Path(period_file).read_text().strip()
            if quota not in ("max", "-1"):
                count = min(count, max(1, math.ceil(int(quota) / int(period))))
            break
        except (OSError, ValueError):
            continue
    return max(1, count)


def fit_threads_to_cpus(processes: int = 1) -> str:
    """Set torch's intra-op threads to this process's share of the idle CPUs; say what was chosen.

    Args:
        processes: processes of the same run sharing the machine (CPU DDP ranks on one node).

    Returns:
        A short description such as ``"1 torch thread (load 3.2 on 2 CPUs)"``.
    """
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return f"{torch.get_num_threads()} torch threads (OMP_NUM_THREADS)"
    cpus = available_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    threads = max(1, min(cpus, torch.get_num_threads(), round((cpus - load) / max(1, processes))))
    torch.set_num_threads(threads)
    return f"{threads} torch thread{'s' if threads > 1 else ''} (load {load:.1f} on {cpus} CPUs)"
