"""The Lightning training engine shared by every isplab workflow.

:func:`build_trainer` returns a :class:`lightning.Trainer` with isplab's conventions for a run
directory::

    run_dir/
      checkpoints/best.ckpt        best epoch by ``monitor`` (absent when ``monitor=None``)
      checkpoints/last.ckpt        end of the latest epoch; what ``resume="last"`` loads
      logs/csv/version_N/metrics.csv         one version per fit, see :func:`metrics_csv_files`
      logs/tensorboard/version_N/events.*    when ``tensorboard`` is installed

:func:`fit` runs ``trainer.fit`` with a ``resume`` argument resolved by
:func:`resolve_checkpoint`, and :func:`configure_optimizer` builds the dictionary a
``LightningModule.configure_optimizers`` returns, so all workflows train the same way.

Every trainer also carries :class:`DatasetEpoch` (a training dataset with ``set_epoch`` is told
the epoch before it is read, so random samples can be a pure function of ``(seed, epoch,
index)``) and, with ``progress``, :class:`StepProgressBar` (``step k/N`` and an ETA when the
budget is ``max_steps`` rather than epochs).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.data import Dataset, Subset

from isplab.engine.threads import fit_threads_to_cpus
from isplab.errors import IsplabError


class _NoProductTips(logging.Filter):
    """Drop Lightning's advertisements for its cloud services from isplab's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoProductTips())
# Lightning 2.6 calls a torch API torch 2.14 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=DeprecationWarning)

BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "step", "plateau")


def resolve_accelerator(device: str = "auto") -> str:
    """Turn a user's ``--device`` into a Lightning accelerator name, checking it is usable.

    ``"auto"`` picks ``"cuda"`` when a CUDA GPU is available, then ``"mps"``, else ``"cpu"``;
    ``"gpu"`` means CUDA or MPS, whichever exists. Any other name must be one of Lightning's
    accelerators (``cpu``, ``cuda``, ``mps``, ``tpu``) and available on this machine. Which
    GPUs to use is the trainer's ``devices`` argument, not part of this name.

    Raises:
        IsplabError: unknown name, or the requested hardware is not available.
    """
    name = str(device).lower()
    if name == "auto":
        for candidate in ("cuda", "mps"):
            if _accelerator_available(candidate):
                return candidate
        return "cpu"
    if name == "gpu":
        for candidate in ("cuda", "mps"):
            if _accelerator_available(candidate):
                return candidate
        raise IsplabError("device 'gpu' was requested but neither a CUDA nor an MPS GPU is available")
    if name.startswith("cuda:"):
        raise IsplabError(
            f"device {device!r}: pass device='cuda' and choose GPUs with devices (e.g. devices=[1])"
        )
    known = sorted(AcceleratorRegistry.available_accelerators())
    if name not in known:
        raise IsplabError(f"unknown device {device!r}: expected 'auto', 'gpu' or one of {', '.join(known)}")
    if not _accelerator_available(name):
        hint = " (torch.cuda.is_available() is False)" if name == "cuda" else ""
        raise IsplabError(f"device {name!r} was requested but no {name} device is available{hint}")
    return name


def _accelerator_available(name: str) -> bool:
    return bool(AcceleratorRegistry[name]["accelerator"].is_available())


class DatasetEpoch(Callback):
    """Call ``set_epoch(trainer.current_epoch)`` on the training dataset, if it has one.

    Lightning tells samplers the epoch, not datasets; a dataset whose random samples depend on
    ``(seed, epoch, index)`` (e.g. :class:`isplab.workflows.isp.data.PatchDataset`) needs it too.
    Called at the start of every fit (a resume may restart mid-epoch, where Lightning skips
    ``on_train_epoch_start``) and of every epoch, before the epoch's dataloader iterator (and its
    worker processes) is created. ``Subset`` and ``ConcatDataset`` wrappers are looked through.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set(trainer)

    @staticmethod
    def _set(trainer: L.Trainer) -> None:
        loaders = trainer.train_dataloader
        if loaders is None:
            return
        if not isinstance(loaders, (list, tuple, dict)):
            loaders = [loaders]
        for loader in loaders.values() if isinstance(loaders, dict) else loaders:
            for dataset in _datasets(getattr(loader, "dataset", None)):
                set_epoch = getattr(dataset, "set_epoch", None)
                if callable(set_epoch):
                    set_epoch(trainer.current_epoch)


def _datasets(dataset: Dataset | None) -> list[Dataset]:
    if dataset is None:
        return []
    if isinstance(dataset, Subset):
        return [dataset, *_datasets(dataset.dataset)]
    inner = getattr(dataset, "datasets", None)  # ConcatDataset
    if isinstance(inner, (list, tuple)):
        return [dataset, *(d for child in inner for d in _datasets(child))]
    return [dataset]


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting the run's optimiser steps when the budget is steps.

    A trainer with ``max_steps > 0`` and no epoch budget (``max_epochs`` ``-1`` or ``None``) gets
    one training bar for the whole run: description ``step k/N``, total ``N`` (so the time column
    shows the elapsed time and the ETA), starting at the restored step on a resume. Otherwise the
    bar is Lightning's per-epoch one, described ``Epoch e/E`` (``Epoch e`` when there is no epoch
    limit, instead of Lightning's ``Epoch e/-2``).
    """

    def _counts_steps(self) -> bool:
        trainer = self.trainer
        return trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs in (None, -1)

    def _get_train_description(self, current_epoch: int) -> str:
        if self._counts_steps():
            return f"step {self.trainer.global_step}/{self.trainer.max_steps}"
        description = f"Epoch {current_epoch}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            description += f"/{self.trainer.max_epochs - 1}"
        return f"{description:{len(self.validation_description)}}"

    def _styled(self, description: str) -> str:
        return f"[{self.theme.description}]{description}" if self.theme.description else description

    def _show_steps(self, trainer: L.Trainer) -> None:
        if self.is_disabled or self.progress is None:
            return
        description = self._styled(self._get_train_description(trainer.current_epoch))
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(trainer.max_steps, self._get_train_description(0))
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)
        self.progress.update(
            self.train_progress_bar_id, completed=trainer.global_step, description=description, visible=True
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._counts_steps():
            super().on_train_epoch_start(trainer, pl_module)
            return
        self._show_steps(trainer)
        self.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._counts_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        self._show_steps(trainer)
        self._update_metrics(trainer, pl_module)
        self.refresh()


def build_trainer(
    run_dir: str | Path,
    *,
    max_epochs: int,
    device: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str | int | None = None,
    monitor: str | None = "val_loss",
    mode: str = "min",
    early_stopping_patience: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    log_every_n_steps: int = 10,
    max_steps: int = -1,
    gradient_clip_val: float | None = None,
    deterministic: bool = False,
    **trainer_kwargs: Any,
) -> L.Trainer:
    """Build a :class:`lightning.Trainer` writing checkpoints and logs under ``run_dir``.

    Seeding (``seed``, via :func:`lightning.seed_everything` with dataloader workers) happens
    here, so build the trainer *before* the model and dataloaders for their initialisation to
    be reproducible as well.

    Args:
        run_dir: the run's directory (created); also Lightning's ``default_root_dir``, where
            SLURM auto-requeue puts its ``hpc_ckpt_*.ckpt`` files.
        max_epochs: number of epochs (when resuming: the total, not the additional ones).
        device: accelerator, see :func:`resolve_accelerator`.
        devices, strategy, num_nodes: Lightning's multi-device settings, e.g. ``devices=4,
            strategy="ddp"``; see ``docs/training.md`` for torchrun and SLURM.
        precision: Lightning precision such as ``"16-mixed"`` or ``"bf16-mixed"``; ``None`` keeps
            Lightning's default (32-bit).
        monitor, mode: logged metric that selects ``best.ckpt`` and drives early stopping
            (``"min"`` or ``"max"``). ``monitor=None`` keeps only ``last.ckpt``.
        early_stopping_patience: stop after this many validations without improvement of
            ``monitor``; ``None`` never stops early.
        progress: show a rich progress bar (:class:`StepProgressBar`: ``step k/N`` and an ETA
            when the budget is ``max_steps`` with ``max_epochs=-1``); turn off for batch jobs and CI logs.
        log_every_n_steps, max_steps, gradient_clip_val, deterministic: passed to the Trainer.
        **trainer_kwargs: further :class:`lightning.Trainer` arguments; ``callbacks`` are added to
            isplab's, anything else overrides the settings above.

    Raises:
        IsplabError: bad ``device``, ``mode``, or ``early_stopping_patience`` without ``monitor``.
    """
    if mode not in ("min", "max"):
        raise IsplabError(f"mode must be 'min' or 'max', got {mode!r}")
    if early_stopping_patience is not None and monitor is None:
        raise IsplabError("early_stopping_patience needs a metric to watch, but monitor is None")
    accelerator = resolve_accelerator(device)
    if accelerator == "cpu":  # a busy machine: as many threads as idle CPUs (isplab.engine.threads)
        fit_threads_to_cpus(devices if isinstance(devices, int) and devices > 0 else 1)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if seed is not None:
        L.seed_everything(seed, workers=True, verbose=False)

    checkpoints = run_dir / "checkpoints"
    # Two callbacks because Lightning 2.6's save_last only writes last.ckpt in epochs where a
    # top-k checkpoint was saved; enable_version_counter=False makes resumed runs overwrite
    # best/last instead of writing best-v1.ckpt.
    callbacks: list[Callback] = []
    if monitor is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoints,
                filename=Path(BEST_CHECKPOINT).stem,
                monitor=monitor,
                mode=mode,
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    callbacks.append(
        ModelCheckpoint(dirpath=checkpoints, filename=Path(LAST_CHECKPOINT).stem, enable_version_counter=False)
    )
    callbacks.append(LearningRateMonitor())
    if early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=early_stopping_patience))
    callbacks.append(DatasetEpoch())
    if progress:
        callbacks.append(StepProgressBar())
    callbacks.extend(trainer_kwargs.pop("callbacks", None) or [])

    settings: dict[str, Any] = dict(
        default_root_dir=run_dir,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        max_epochs=max_epochs,
        max_steps=max_steps,
        callbacks=callbacks,
        logger=_loggers(run_dir),
        enable_progress_bar=progress,
        log_every_n_steps=log_every_n_steps,
        gradient_clip_val=gradient_clip_val,
        deterministic=deterministic,
    )
    if precision is not None:
        settings["precision"] = precision
    settings.update(trainer_kwargs)
    return L.Trainer(**settings)


def iteration_budget(iters: int, eval_every: int, steps_per_epoch: int) -> dict[str, Any]:
    """:func:`build_trainer` arguments for training by iterations rather than epochs.

    ``build_trainer(run_dir, **iteration_budget(100_000, 1000, 156), device=...)`` trains for
    ``iters`` optimizer steps whatever the epoch length, validates every ``eval_every`` steps
    counted across epochs, logs at most every 50 steps (and at least once per epoch and per
    validation interval), and skips Lightning's sanity validation. The progress bar then shows
    ``step k/iters`` with an ETA (:class:`StepProgressBar`).

    Raises:
        IsplabError: a value below 1.
    """
    for name, value in (("iters", iters), ("eval_every", eval_every), ("steps_per_epoch", steps_per_epoch)):
        if int(value) < 1:
            raise IsplabError(f"{name} must be at least 1, got {value}")
    return dict(
        max_epochs=-1,
        max_steps=int(iters),
        log_every_n_steps=max(1, min(50, int(eval_every), int(steps_per_epoch))),
        val_check_interval=int(eval_every),
        check_val_every_n_epoch=None,  # count eval_every across epochs
        num_sanity_val_steps=0,
    )


def _loggers(run_dir: Path) -> list[Logger]:
    # Each fit gets a new version directory: a fixed one would make CSVLogger delete the
    # previous metrics.csv when a run is resumed.
    loggers: list[Logger] = [CSVLogger(save_dir=run_dir / "logs", name="csv")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(save_dir=run_dir / "logs", name="tensorboard"))
    return loggers


def metrics_csv_files(run_dir: str | Path) -> list[Path]:
    """The ``metrics.csv`` files a run's fits wrote, oldest first (one per fit/resume)."""
    def version(path: Path) -> int:
        match = re.fullmatch(r"version_(\d+)", path.parent.name)
        return int(match.group(1)) if match else -1

    return sorted((Path(run_dir) / "logs" / "csv").glob("*/metrics.csv"), key=version)


def resolve_checkpoint(run_dir: str | Path, resume: str | Path | bool | None) -> Path | None:
    """The checkpoint to resume from, or ``None`` to start afresh.

    ``None``/``False`` -> ``None``; ``True`` or ``"last"`` -> ``run_dir/checkpoints/last.ckpt``;
    ``"best"`` -> ``run_dir/checkpoints/best.ckpt``; any other string or path is a checkpoint file.

    Raises:
        IsplabError: the checkpoint does not exist.
    """
    if resume is None or resume is False:
        return None
    if resume is True or resume == "last":
        path = Path(run_dir) / "checkpoints" / LAST_CHECKPOINT
    elif resume == "best":
        path = Path(run_dir) / "checkpoints" / BEST_CHECKPOINT
    else:
        path = Path(resume)
    if not path.is_file():
        raise IsplabError(f"cannot resume: checkpoint {path} does not exist")
    return path


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    datamodule: L.LightningDataModule | None = None,
    resume: str | Path | bool | None = None,
) -> Path | None:
    """Run ``trainer.fit``, resuming from :func:`resolve_checkpoint` of the trainer's run directory.

    With ``resume=None`` Lightning still restores a SLURM auto-requeue checkpoint by itself.
    Returns the best checkpoint's path (the last one's when nothing is monitored), or ``None``
    if no checkpoint was written.
    """
    ckpt_path = resolve_checkpoint(trainer.default_root_dir, resume)
    trainer.fit(
        module,
        train_dataloaders=train_dataloaders,
        val_dataloaders=val_dataloaders,
        datamodule=datamodule,
        ckpt_path=ckpt_path,
    )
    # build_trainer puts the best-by-monitor callback first; without a monitor the first
    # callback's "best" is simply the latest checkpoint.
    checkpoint = trainer.checkpoint_callback
    if checkpoint is None or not checkpoint.best_model_path:
        return None
    return Path(checkpoint.best_model_path)


def configure_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    *,
    lr: float,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    scheduler: str | None = None,
    max_epochs: int | None = None,
    monitor: str = "val_loss",
    mode: str = "min",
    step_size: int | None = None,
    gamma: float = 0.1,
    eta_min: float = 0.0,
    plateau_patience: int = 10,
    **optimizer_kwargs: Any,
) -> dict[str, Any]:
    """The dictionary a ``LightningModule.configure_optimizers`` returns.

    Schedulers step once per epoch:

    - ``"cosine"``: cosine annealing from ``lr`` to ``eta_min`` over ``max_epochs``;
    - ``"step"``: multiply the LR by ``gamma`` every ``step_size`` epochs (default: a third of
      ``max_epochs``, i.e. two decays);
    - ``"plateau"``: multiply by ``gamma`` when ``monitor`` has not improved (``mode``) for
      ``plateau_patience`` epochs.

    ``optimizer_kwargs`` go to the torch optimizer (e.g. ``betas``, ``nesterov``); SGD's
    ``momentum`` defaults to 0.9.

    Raises:
        IsplabError: unknown optimizer or scheduler, or a scheduler missing ``max_epochs``.
    """
    name = optimizer.lower()
    if name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **optimizer_kwargs)
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **optimizer_kwargs)
    elif name == "sgd":
        optimizer_kwargs.setdefault("momentum", 0.9)
        opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, **optimizer_kwargs)
    else:
        raise IsplabError(f"unknown optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")

    if scheduler is None:
        return {"optimizer": opt}
    schedule: dict[str, Any] = {"interval": "epoch", "frequency": 1}
    if scheduler == "cosine":
        schedule["scheduler"] = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=_require_epochs(max_epochs, scheduler), eta_min=eta_min
        )
    elif scheduler == "step":
        if step_size is None:
            step_size = max(1, _require_epochs(max_epochs, scheduler) // 3)
        schedule["scheduler"] = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    elif scheduler == "plateau":
        schedule["scheduler"] = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode=mode, factor=gamma, patience=plateau_patience
        )
        schedule["monitor"] = monitor
    else:
        raise IsplabError(f"unknown scheduler {scheduler!r}: expected None or one of {', '.join(SCHEDULERS)}")
    return {"optimizer": opt, "lr_scheduler": schedule}


def _require_epochs(max_epochs: int | None, scheduler: str) -> int:
    if max_epochs is None or max_epochs < 1:
        raise IsplabError(f"scheduler {scheduler!r} needs max_epochs >= 1, got {max_epochs!r}")
    return max_epochs
