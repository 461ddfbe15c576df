"""What every training command does around :func:`~isplab.engine.fit`: the run folder, rank zero, Ctrl-C.

- :func:`prepare_run_dir` checks a run folder before any work (``docs/conventions.md`` section 5):
  a folder holding an earlier run's files is refused unless ``resume`` (continue it from
  ``checkpoints/last.ckpt``) or ``overwrite`` (:meth:`RunFolder.clear` then deletes only those
  files); a SLURM requeue (Lightning's ``hpc_ckpt_*.ckpt`` in the folder) is let through, and
  Lightning restores its checkpoint itself. :meth:`RunFolder.start` writes ``config.json`` and
  starts ``log.txt``: a new file for a new run, a new section for a resumed one.
- :func:`is_global_zero`: only rank 0 checks and writes outputs.
- :func:`fit_interruptible` turns Ctrl-C into :class:`TrainingInterrupted`, after Lightning's graceful
  shutdown, with Ctrl-C working again; :class:`SaveOnInterrupt` first saves the steps done as
  ``last.ckpt`` (one process). The CLI prints :meth:`TrainingInterrupted.resume_hint` and exits 130.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only

from isplab.engine.trainer import LAST_CHECKPOINT, fit, resolve_checkpoint
from isplab.errors import IsplabError
from isplab.io.paths import check_writable_dir, prepare_output_dir, remove_outputs

__all__ = [
    "RANK_VARIABLES", "RunFolder", "SaveOnInterrupt", "TrainingInterrupted", "fit_interruptible",
    "is_global_zero", "prepare_run_dir", "saved_progress",
]

#: Environment variables through which launchers (Lightning's DDP launcher, torchrun, SLURM) give a
#: process its rank; any of them non-zero means "not rank 0".
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_global_zero() -> bool:
    """Whether this process is rank 0 (always true outside a multi-process launch).

    True only when Lightning's rank (set once a trainer is set up) is 0 and no launcher variable of
    :data:`RANK_VARIABLES` is non-zero: before any trainer exists (when a command checks its
    outputs), the extra processes of a DDP launch are known only by those variables.
    """
    if getattr(rank_zero_only, "rank", 0) != 0:
        return False
    for key in RANK_VARIABLES:
        value = os.environ.get(key, "0")
        if value.isdigit() and int(value) != 0:
            return False
    return True


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C, after Lightning's graceful shutdown.

    Attributes:
        checkpoint: ``checkpoints/last.ckpt`` to resume from, or ``None`` when nothing can be resumed.
        done: the steps (or epochs, see ``unit``) that checkpoint holds.
        total: the run's budget in the same unit.
        unit: ``"step"`` or ``"epoch"``.
    """

    def __init__(self, checkpoint: Path | None, done: int, total: int, unit: str = "step") -> None:
        super().__init__(f"training interrupted at {unit} {done} of {total}")
        self.checkpoint, self.done, self.total, self.unit = checkpoint, done, total, unit

    def resume_hint(self) -> str:
        """One line for the user: what was kept and how to continue."""
        if self.checkpoint is None:
            return f"interrupted before the first {self.unit} finished: nothing to resume"
        return (f"interrupted: {self.checkpoint} holds {self.unit} {self.done} of {self.total}; "
                "the same command with --resume (not --overwrite) continues from it")


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C, save the state reached so far as ``last.ckpt`` (one process only: under DDP the
    ranks cannot be relied on to meet for a collective save, so ``last.ckpt`` stays at the last
    checkpoint Lightning wrote)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.world_size == 1 and trainer.global_step > 0:
            trainer.save_checkpoint(self.path)


def saved_progress(checkpoint: Path, unit: str = "step") -> int:
    """Optimiser steps (``unit="step"``) or finished epochs (``"epoch"``) a checkpoint holds; 0 for
    a missing or unreadable one (nothing to resume from)."""
    if not checkpoint.is_file():
        return 0
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        return int(saved["global_step"]) if unit == "step" else int(saved["epoch"]) + 1
    except Exception:  # torch.load raises many types for files that are not checkpoints
        return 0


def fit_interruptible(
    trainer: L.Trainer,
    module: L.LightningModule,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    *,
    resume: Path | None = None,
    total: int,
    unit: str = "step",
    log_file: Path | None = None,
) -> Path | None:
    """:func:`~isplab.engine.fit`, with Ctrl-C raised as :class:`TrainingInterrupted`.

    Lightning turns Ctrl-C into a graceful shutdown (:class:`SaveOnInterrupt`, when the trainer has
    it, saves ``last.ckpt``), then ``sys.exit(1)`` with SIGINT ignored: this restores Ctrl-C, appends
    ``interrupted at <unit> N; <last.ckpt> holds <unit> M`` to ``log_file`` (rank 0) and raises.

    Args:
        total: the run's budget in ``unit`` (for the message).
        unit: ``"step"`` (``last.ckpt``'s ``global_step``) or ``"epoch"`` (its finished epochs).
    """
    try:
        return fit(trainer, module, train_dataloaders, val_dataloaders, resume=resume)
    except SystemExit:
        if not trainer.interrupted:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)
        last = Path(trainer.default_root_dir) / "checkpoints" / LAST_CHECKPOINT
        done = saved_progress(last, unit)
        if log_file is not None and is_global_zero():
            reached = trainer.global_step if unit == "step" else trainer.current_epoch
            with Path(log_file).open("a") as handle:
                handle.write(f"interrupted at {unit} {reached}; {last} holds {unit} {done}\n")
        raise TrainingInterrupted(last if done else None, done, total, unit) from None


@dataclass
class RunFolder:
    """A run folder checked by :func:`prepare_run_dir`.

    Attributes:
        path: the folder.
        names: the run's own files and folders (what ``overwrite`` deletes).
        checkpoint: ``checkpoints/last.ckpt`` when resuming, else ``None``.
        requeued: a SLURM requeue: Lightning restores its ``hpc_ckpt_*.ckpt`` itself.
    """

    path: Path
    names: tuple[str, ...]
    checkpoint: Path | None = None
    requeued: bool = False

    @property
    def log_file(self) -> Path:
        return self.path / "log.txt"

    @property
    def continues(self) -> bool:
        """Whether this run continues an earlier one (resume or SLURM requeue)."""
        return self.checkpoint is not None or self.requeued

    def clear(self) -> None:
        """Delete an earlier run's own files (``names``; only with ``overwrite``, as
        :func:`prepare_run_dir` refused the folder otherwise). Call it once every other check has
        passed, so that a refused command loses nothing. Rank 0 only; nothing when continuing."""
        if self.continues or not is_global_zero():
            return
        remove_outputs(self.path, self.names)

    def start(self, options: dict[str, Any], new: str, resumed: str, details: str = "") -> None:
        """Write ``config.json`` (``options``) and start ``log.txt`` (rank 0 only).

        A new run gets a new ``log.txt`` starting ``=== new run at <time>: <new> ===``; a resumed or
        requeued one appends a section ``=== resumed from <checkpoint> at <time>: <resumed> ===``.
        ``details`` (lines) follows the header.
        """
        if not is_global_zero():
            return
        plain = {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in options.items()}
        (self.path / "config.json").write_text(json.dumps(plain, indent=2, default=str) + "\n")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self.continues:
            source = self.checkpoint if self.checkpoint is not None else "a SLURM requeue checkpoint"
            header, mode = f"\n=== resumed from {source} at {stamp}: {resumed} ===\n", "a"
        else:
            header, mode = f"=== new run at {stamp}: {new} ===\n", "w"
        with self.log_file.open(mode) as handle:
            handle.write(header + details)


def prepare_run_dir(
    run_dir: str | Path,
    names: Iterable[str],
    *,
    overwrite: bool = False,
    resume: bool = False,
    what: str = "model folder",
) -> RunFolder:
    """Check a training run's folder before any work (rank 0; other ranks only resolve the checkpoint).

    A folder holding any of ``names`` is refused unless ``resume`` (it must hold
    ``checkpoints/last.ckpt``) or ``overwrite`` (:meth:`RunFolder.clear` deletes those entries, and
    only those). Under SLURM, a folder holding Lightning's ``hpc_ckpt_*.ckpt`` is a requeue of the
    same command and is let through.

    Raises:
        IsplabError: both flags, an earlier run and neither flag, nothing to resume, or a folder that
            is a file or cannot be written (``what`` names it in the message).
    """
    if overwrite and resume:
        raise IsplabError("--overwrite starts afresh and --resume continues: choose one")
    path = Path(run_dir)
    names = tuple(names)
    requeued = bool(SLURMEnvironment.detect() and path.is_dir() and any(path.glob("hpc_ckpt_*.ckpt")))
    if is_global_zero():
        if requeued:
            check_writable_dir(path)
        else:
            prepare_output_dir(path, overwrite=overwrite, resume=resume, names=names, what=what)
    return RunFolder(path, names, resolve_checkpoint(path, resume or None), requeued)
