"""Train a proxy of one darktable block on a dataset of ``isplab proxy generate`` (``docs/proxy.md``).

* **Model**: :class:`isplab.models.proxy.ProxyUNet` (the seed's U-Net, ``width`` ... ``16 width``
  channels), one input channel per varied parameter of the dataset, normalised to [0, 1] by its
  sampled range (the samples' ``unit`` values). Every block, ``temperature`` included, maps RGB to
  RGB: part 1 renders the ``temperature`` input demosaiced without white balance (darktable's
  output of the pipeline with the block off), not as a packed mosaic, so there is no mosaic
  input to take.
* **Splits**: the dataset's train/val split is by image. On top of it, a band of each varied
  parameter's unit range is held out (``holdout_params``: the band ``[0.5 - b/2, 0.5 + b/2)`` with
  ``b = holdout_params / P`` for ``P`` varied parameters, so that about that fraction of samples
  falls in some band): samples with a value in a band are never trained on. Evaluation reports
  held-out images, held-out parameter values and both (:mod:`.evaluate`).
* **Patches**: item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: a training
  sample, a random crop (the same for input and output) and a random flip; under DDP each rank
  gets other indices from Lightning's ``DistributedSampler``. For blocks that act on the raw
  mosaic before demosaicking (``temperature``: the dataset's ``before_demosaic``) crops start at
  even rows and columns and are not flipped, so every crop keeps the images' colour-filter phase,
  and the model knows that phase (``cfa_phase``, :class:`isplab.models.proxy.ProxyUNet`: a 3x3
  filter per phase from the parameters, and the parity as U-Net input channels): what
  demosaicking the scaled mosaic changes near edges depends on it.
* **Loss**: L1 (``l1``), MSE (``mse``) or L1 plus the L1 of the image gradients (``l1+grad``, the
  default for ``sharpen``, whose effect is in the edges).
* **Run folder** (``docs/conventions.md`` section 5): ``model.pt`` (the proxy and what it models:
  block, parameters, ranges, fixed values, dataset), ``config.json``, ``checkpoints/``,
  ``logs/``, ``log.txt`` and ``report.html`` (:func:`.evaluate.evaluate_proxy`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from isplab.engine import (
    SaveOnInterrupt,
    build_trainer,
    configure_optimizer,
    fit_interruptible,
    prepare_run_dir,
    psnr,
)
from isplab.engine.trainer import LAST_CHECKPOINT, iteration_budget, resolve_accelerator
from isplab.data.epoch import EpochDataset
from isplab.errors import IsplabError, check_at_least_one
from isplab.models.proxy import GLOBAL_HEADS, PROXY_HEADS, build_proxy_model, save_proxy_model
from isplab.workflows.proxy.blocks import get_block
from isplab.workflows.proxy.dataset import ProxyDataset, load_dataset, read_tiff

__all__ = [
    "LOSSES",
    "DEFAULT_LOSS",
    "ProxyTrainConfig",
    "ProxyPatchDataset",
    "ProxyImageDataset",
    "ProxyModule",
    "holdout_mask",
    "proxy_loss",
    "train_proxy",
   
]

LOSSES = ("l1", "mse", "l1+grad")
SCHEDULES = ("constant", "cosine")
#: The loss of each block unless ``--loss`` says otherwise.
#: denoiseprofile: MSE with the ``add`` head reached 37.5 dB on held-out images at 3000 steps where
#: L1 (lr 1e-3) stayed next to the identity (32.7 against 31.8; benchmarks/proxy.py).
DEFAULT_LOSS = {"sharpen": "l1+grad", "denoiseprofile": "mse"}
MONITOR = "val_psnr"
RUN_OUTPUTS = ("model.pt", "config.json", "log.txt", "checkpoints", "logs", "report.html", "report_grid.png", "report_curves.png", "report_metrics.json")


#: Training crop side in pixels when ``--patch`` is not given (the ``blur`` and ``unsharp`` heads take whole images).
DEFAULT_PATCH = 128
#: Heads trained on whole images (``--patch 0``; any other patch is refused): a crop's blur is not
#: the crop of the image's blur, and ``unsharp`` leaves the image's edges alone, which a crop's are not.
WHOLE_IMAGE_HEADS = ("blur", "unsharp")
#: Heads with parts that :func:`fit_pixels` fits alone before the U-Net's training.
PREFIT_HEADS = ("pointwise", "blur", "unsharp")
#: ``--pixel-steps`` when not given, per head (lowpass's blur head: half of them fit the blur, whose
#: small radii need them; sharpen's unsharp head: 2000 steps of 4 whole images, 2.2 min on a shared
#: 2-core CPU, carry it to 62 dB on changed held-out images; benchmarks/proxy.py).
DEFAULT_PIXEL_STEPS = {"pointwise": 1500, "blur": 5000, "unsharp": 2000}


@dataclass
class ProxyTrainConfig:
    """Training options.

    Attributes:
        params: the varied parameters, in channel order (``None``: the dataset's, in table order).
        width, depth: the U-Net (:func:`isplab.models.proxy.build_proxy_model`).
        cfa_phase: ``build_proxy_model``'s ``cfa_phase`` (a colour-filter-phase dependent filter
            and the parity as U-Net channels); ``None``: when the dataset's block acts before
            demosaicking (its ``before_demosaic``); ``config.json`` records the value used.
        head: how the U-Net's output acts on the input: ``affine`` (per-pixel gain and offset),
            ``add`` (the seed's residual), ``matrix`` (per-pixel colour matrix and offset),
            ``global`` (a colour transform from the parameters alone, then ``matrix``),
            ``pointwise`` (a per-pixel colour map of the pixel and the parameters, then ``matrix``),
            ``blur`` (a Gaussian blur in CIE Lab set by the parameters, then ``pointwise``) or
            ``unsharp`` (darktable's unsharp mask of Lab L set by the parameters, then ``matrix``); see
            :mod:`isplab.models.proxy`. ``None``: the block's ``default_head``
            (:mod:`isplab.workflows.proxy.blocks`); ``config.json`` records the head used.
        patch: square crop side in pixels (at most the images' smaller side); 0: whole images
            (for the ``blur`` and ``unsharp`` heads, whose blur of a crop is not the crop of the
            image's blur). ``None``: :data:`DEFAULT_PATCH`, or 0 for :data:`WHOLE_IMAGE_HEADS`.
        batch_size, lr, iters: Adam on ``iters`` steps (the total, also when resuming).
        global_weight: the heads with a part before the U-Net (``global``, ``pointwise``, ``blur``,
            ``unsharp``: :data:`~isplab.models.proxy.GLOBAL_HEADS`): weight of the loss of that part alone
            (added to the loss of the whole proxy), so that its MLP explains all it can.
        pixel_steps: ``pointwise``, ``blur`` and ``unsharp`` heads: before the U-Net's training, Adam steps
            fitting the pixel MLP (and the ``blur`` head's sigma MLP; the ``unsharp`` head's MLP,
            on whole images) alone to the training samples (:func:`fit_pixels`; 0: none). ``None``:
            :data:`DEFAULT_PIXEL_STEPS` of the head.
            Patches are few, correlated pixels; 16384 random ones a step teach the per-pixel map
            far faster (``benchmarks/proxy.py``).
        schedule: ``constant`` learning rate, or ``cosine``: ``lr`` annealed to 0 over ``iters``
            steps (per step; it settles the small, exact coefficients of the ``global`` head).
        eval_every: validate and checkpoint every this many steps.
        patches_per_epoch: crops drawn per epoch (re-drawn each epoch).
        loss: ``l1``, ``mse``, ``l1+grad`` or ``None`` (the block's default, :data:`DEFAULT_LOSS`).
        grad_weight: weight of the gradient term of ``l1+grad``.
        holdout_params: share of samples held out by parameter value (see the module docstring).
        val_max: validate on at most this many held-out-image samples.
        seed, device, devices, strategy, num_nodes, workers: as every train command.
    """

    params: list[str] | None = None
    width: int = 32
    depth: int = 4
    cfa_phase: bool | None = None
    head: str | None = None
    patch: int | None = None
    batch_size: int = 8
    lr: float = 1e-4
    iters: int = 20_000
    schedule: str = "constant"
    global_weight: float = 1.0
    pixel_steps: int | None = None
    eval_every: int = 1000
    patches_per_epoch: int = 2000
    loss: str | None = None
    grad_weight: float = 1.0
    holdout_params: float = 0.1
    val_max: int = 16
    seed: int = 0
    device: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    workers: int = 0


# ------------------------------------------------------------------------------------------- data


def holdout_mask(units: np.ndarray, fraction: float) -> np.ndarray:
    """Which samples (rows of ``units``, ``(N, P)`` in [0, 1]) have a value in the held-out band
    ``[0.5 - b/2, 0.5 + b/2)`` of some parameter, ``b = fraction / P``. ``fraction = 0``: none."""
    units = np.asarray(units, dtype=np.float64).reshape(len(units), -1)
    if fraction <= 0 or units.size == 0:
        return np.zeros(len(units), dtype=bool)
    band = fraction / units.shape[1]
    inside = (units >= 0.5 - band / 2) & (units < 0.5 + band / 2)
    return inside.any(axis=1)


def _read_tiff(path: Path) -> torch.Tensor:
    return read_tiff(path)


class _Samples:
    """Samples of a dataset as tensors: ``(input (3, H, W), output (3, H, W), unit (P,))``,
    images read once per process."""

    def __init__(self, data: ProxyDataset, samples: list[dict], params: list[str], ranges=None) -> None:
        """``ranges``: ``[(low, high)]`` per parameter to normalise by (a trained model's, when it
        differs from the dataset's sampled ranges); ``None`` uses the samples' ``unit`` values."""
        self.data, self.samples, self.params = data, samples, params
        self.ranges = None if ranges is None else [(float(lo), float(hi)) for lo, hi in ranges]
        self._cache: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, relative: str) -> torch.Tensor:
        if relative not in self._cache:
            self._cache[relative] = self.data.read(relative)
        return self._cache[relative]

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.samples[i]
        x, y = self.image(s["input"]), self.image(s["output"])
        if x.shape != y.shape:
            raise IsplabError(f"{s['input']} is {tuple(x.shape)} but {s['output']} is {tuple(y.shape)}: expected equal sizes")
        if self.ranges is None:
            unit = torch.tensor([float(s["unit"][name]) for name in self.params], dtype=torch.float32)
        else:
            unit = torch.tensor(
                [(float(s["params"][n]) - lo) / (hi - lo) for n, (lo, hi) in zip(self.params, self.ranges)], dtype=torch.float32
            )
        return x, y, unit


class ProxyPatchDataset(EpochDataset):
    """Random training crops: item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``.

    Item: ``(input (3, patch, patch), output (3, patch, patch), unit (P,))`` from a random
    sample, the same crop of input and output, flipped left-right with probability 1/2 (every
    block is mirror-symmetric). The epoch is in shared memory, seen by worker processes.

    ``keep_cfa_phase`` (blocks that act on the raw mosaic, the dataset's ``before_demosaic``):
    crops start at even rows and columns and are never flipped, so pixel ``(0, 0)`` of every crop
    has the colour filter of pixel ``(0, 0)`` of the image (a left-right flip of an even-width crop
    swaps the column parity). What demosaicking a scaled mosaic changes depends on that phase.
    """

    def __init__(self, samples: _Samples, patch: int, patches_per_epoch: int, seed: int = 0, *, keep_cfa_phase: bool = False) -> None:
        if len(samples) == 0:
            raise IsplabError("no training samples (every sample is held out or the dataset is empty)")
        super().__init__(patches_per_epoch, seed)
        self.samples, self.patch, self.keep_cfa_phase = samples, int(patch), bool(keep_cfa_phase)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = self.rng(index)
        x, y, unit = self.samples.get(int(rng.integers(len(self.samples))))
        h, w = x.shape[-2:]
        p = self.patch
        if p == 0:  # whole images (blocks whose output at a pixel depends on the whole image)
            if rng.random() < 0.5 and not self.keep_cfa_phase:
                x, y = x.flip(-1), y.flip(-1)
            return x.contiguous(), y.contiguous(), unit
        if min(h, w) < p:
            raise IsplabError(f"images of {h}x{w} pixels are smaller than the {p}x{p} patch: pass a smaller --patch")
        if self.keep_cfa_phase:  # even offsets only: (h - p) // 2 + 1 choices per axis
            top, left = 2 * int(rng.integers((h - p) // 2 + 1)), 2 * int(rng.integers((w - p) // 2 + 1))
        else:
            top, left = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        x, y = x[:, top : top + p, left : left + p], y[:, top : top + p, left : left + p]
        if rng.random() < 0.5 and not self.keep_cfa_phase:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous(), unit


class ProxyImageDataset(Dataset):
    """Whole images of given samples: ``(input, output, unit)``, plus the sample's index in
    ``samples.samples`` for reports."""

    def __init__(self, samples: _Samples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.samples.get(index)


# ----------------------------------------------------------------------------------------- module


def cosine_factor(step: int, total: int) -> float:
    """The ``cosine`` schedule's learning-rate factor at ``step`` of ``total``: 1 at the start, 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def proxy_loss(pred: torch.Tensor, target: torch.Tensor, loss: str, grad_weight: float = 1.0) -> torch.Tensor:
    """``l1``, ``mse`` or ``l1+grad`` (L1 + ``grad_weight`` x L1 of horizontal and vertical differences)."""
    if loss == "l1":
        return F.l1_loss(pred, target)
    if loss == "mse":
        return F.mse_loss(pred, target)
    if loss == "l1+grad":
        (pdx, pdy), (tdx, tdy) = _gradients(pred), _gradients(target)
        return F.l1_loss(pred, target) + grad_weight * (F.l1_loss(pdx, tdx) + F.l1_loss(pdy, tdy))
    raise IsplabError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")


class ProxyModule(L.LightningModule):
    """Lightning wrapper: the block's loss, validation PSNR (linear values, peak 1), Adam."""

    def __init__(self, model: torch.nn.Module, config: ProxyTrainConfig, loss: str, log_file: Path | None = None) -> None:
        super().__init__()
        self.model, self.config, self.loss_name, self.log_file = model, config, loss, log_file

    def forward(self, x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        return self.model(x, unit)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, unit = batch
        if getattr(self.model, "head_kind", None) in GLOBAL_HEADS and self.config.global_weight > 0:
            pred, z = self.model(x, unit, with_global=True)
            loss = proxy_loss(pred, y, self.loss_name, self.config.grad_weight)
            loss = loss + self.config.global_weight * proxy_loss(z, y, self.loss_name, self.config.grad_weight)
        else:
            loss = proxy_loss(self.model(x, unit), y, self.loss_name, self.config.grad_weight)
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, unit = batch
        pred = self.model(x, unit)
        self.log(MONITOR, psnr(pred, y), prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        self.log("val_loss", proxy_loss(pred, y, self.loss_name, self.config.grad_weight), batch_size=x.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.log_file is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        metrics = self.trainer.callback_metrics
        values = " ".join(f"{n} {float(metrics[n]):.4f}" for n in ("train_loss", MONITOR, "val_loss") if n in metrics)
        with self.log_file.open("a") as handle:
            handle.write(f"step {self.global_step}: {values}\n")

    def configure_optimizers(self) -> dict[str, Any]:
        result = configure_optimizer(self.model.parameters(), lr=self.config.lr)
        if self.config.schedule == "cosine":
            total = max(1, self.config.iters)
            scheduler = torch.optim.lr_scheduler.LambdaLR(result["optimizer"], lambda step: cosine_factor(step, total))
            result["lr_scheduler"] = {"scheduler": scheduler, "interval": "step"}
        return result

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["proxy_config"] = getattr(self.model, "proxy_config", None)


# ------------------------------------------------------------------------------------------ train


@dataclass
class Splits:
    """The samples of each role (see the module docstring)."""

    params: list[str]
    train: list[dict]
    val_images: list[dict]  # held-out images, parameters outside the bands
    val_params: list[dict]  # training images, parameters in a band
    val_both: list[dict]  # held-out images and parameters in a band


def make_splits(data: ProxyDataset, params: list[str], holdout_params: float) -> Splits:
    """Split ``data``'s samples by image (the dataset's split) and by parameter band."""
    units = np.array([[float(s["unit"][n]) for n in params] for s in data.samples]).reshape(len(data.samples), len(params))
    banded = holdout_mask(units, holdout_params)
    groups: dict[tuple[str, bool], list[dict]] = {(split, b): [] for split in ("train", "val") for b in (False, True)}
    for s, b in zip(data.samples, banded):
        groups[("val" if s["split"] == "val" else "train", bool(b))].append(s)
    return Splits(params, groups[("train", False)], groups[("val", False)], groups[("train", True)], groups[("val", True)])


def resolve_params(data: ProxyDataset, requested: list[str] | None) -> list[str]:
    """The proxy's parameters: the dataset's varied ones, in table order, checked against ``-p``.

    Raises:
        IsplabError: ``-p`` names an unknown or fixed parameter, or leaves out a varied one (the
            proxy must see everything that changes the output).
    """
    block = get_block(data.block)
    varied = data.varied
    if not varied:
        raise IsplabError(f"dataset {data.root} varies no parameter of {data.block}: nothing to learn")
    if not requested:
        return varied
    names = [n.strip() for text in requested for n in text.split(",") if n.strip()]
    for name in names:
        block.param(name)  # unknown -> IsplabError
        if name not in varied:
            raise IsplabError(
                f"parameter {name!r} is fixed in dataset {data.root}: expected one of its varied parameters ({', '.join(varied)})"
            )
    missing = [n for n in varied if n not in names]
    if missing:
        raise IsplabError(
            f"dataset {data.root} also varies {', '.join(missing)}: a proxy must take every varied parameter "
            f"(generate a dataset with those fixed, or add them to -p)"
        )
    return [n for n in varied if n in names]


def proxy_meta(data: ProxyDataset, params: list[str]) -> dict:
    """What a trained proxy models (stored in ``model.pt``)."""
    by_name = {p["name"]: p for p in data.info["params"]}
    return {
        "block": data.block,
        "operation": data.info.get("operation"),
        "modversion": data.info.get("modversion"),
        "params": params,
        "units": [by_name[n].get("unit", "") for n in params],
        "fixed": {p["name"]: float(p["range"][0]) for p in data.info["params"] if not p["varied"]},
        "backend": data.info.get("backend"),
        "darktable": data.info.get("darktable"),
        "dataset": str(data.root.resolve()),
        "before_demosaic": bool(data.info.get("before_demosaic", False)),
    }


def train_proxy(
    block: str,
    dataset: str | Path,
    model_dir: str | Path,
    config: ProxyTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    report: bool = True,
    callbacks: Sequence[L.Callback] = (),
) -> Path:
    """Train a proxy of ``block`` on ``dataset`` into ``model_dir`` (see the module docstring).

    Returns:
        ``model_dir / "model.pt"``.

    Raises:
        IsplabError: an unknown block or one other than the dataset's, bad options, a model folder
            holding a run (without ``resume``/``overwrite``), no training or validation samples.
        isplab.engine.TrainingInterrupted: Ctrl-C (``last.ckpt`` resumable).
    """
    config = resolve_config(block, config)
    _check_config(config)
    model_dir = Path(model_dir)
    data = load_dataset(dataset)
    if data.block != block:
        raise IsplabError(f"dataset {data.root} holds samples of block {data.block!r}, not {block!r}: expected a {block} dataset")
    params = resolve_params(data, config.params)
    splits = make_splits(data, params, config.holdout_params)
    if not splits.train:
        raise IsplabError(f"dataset {data.root} has no training samples outside the held-out parameter bands")
    smallest = min(min(int(s["width"]), int(s["height"])) for s in splits.train)
    sizes = {(int(s["width"]), int(s["height"])) for s in splits.train}
    if config.patch == 0 and len(sizes) > 1 and config.batch_size > 1:
        raise IsplabError(f"--patch 0 (whole images) needs images of one size in a batch, dataset {data.root} has "
                          f"{len(sizes)} sizes: pass --batch-size 1 or a --patch")  # fmt: skip
    if smallest < config.patch:
        raise IsplabError(f"dataset {data.root} has images of {smallest} pixels on a side, smaller than --patch {config.patch}: pass --patch {smallest} or less")
    validation = splits.val_images or splits.val_params or splits.val_both
    if not validation:
        raise IsplabError(f"dataset {data.root} has no held-out samples to validate on: generate more images or samples")
    by_name = {p["name"]: p for p in data.info["params"]}
    ranges = [tuple(by_name[n]["range"]) for n in params]

    run = prepare_run_dir(model_dir, RUN_OUTPUTS, overwrite=overwrite, resume=resume)
    checkpoint = run.checkpoint
    meta = proxy_meta(data, params)
    if config.cfa_phase is None:
        config = replace(config, cfa_phase=meta["before_demosaic"])
    if checkpoint is not None:
        _check_same_run(checkpoint, ranges, config, meta)
    resolve_accelerator(config.device)
    run.clear()  # --overwrite: the earlier run's files go only now that every check has passed

    loss = config.loss or DEFAULT_LOSS.get(block, "l1")
    log_file = run.log_file
    trainer = build_trainer(
        model_dir,
        **iteration_budget(config.iters, config.eval_every, config.patches_per_epoch // config.batch_size),
        device=config.device,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        monitor=MONITOR,
        mode="max",
        seed=config.seed,
        progress=progress,
        enable_model_summary=progress,  # Lightning's table is a banner in batch runs and demos
        callbacks=[SaveOnInterrupt(model_dir / "checkpoints" / LAST_CHECKPOINT), *callbacks],
    )
    model = build_proxy_model(ranges, width=config.width, depth=config.depth, head=config.head, cfa_phase=config.cfa_phase, meta=meta)
    module = ProxyModule(model, config, loss, log_file=log_file)
    options = {**asdict(config), "block": block, "dataset": str(data.root.resolve()), "params": params, "loss": loss}
    sizes = (
        f"samples: {len(splits.train)} train, {len(splits.val_images)} held-out images, "
        f"{len(splits.val_params)} held-out parameters, {len(splits.val_both)} both\n"
    )
    run.start(options, new=f"proxy of {block} ({', '.join(params)}), {config.iters} steps",
              resumed=f"training to step {config.iters}", details=sizes)

    train_samples = _Samples(data, splits.train, params)
    if config.head in PREFIT_HEADS and config.pixel_steps and checkpoint is None:
        start = time.perf_counter()
        pixel_loss = fit_pixels(model, train_samples, config.pixel_steps, seed=config.seed)
        what = {"pointwise": "pixel MLP", "blur": "blur and pixel MLPs", "unsharp": "unsharp MLP"}[config.head]
        if trainer.is_global_zero:
            with log_file.open("a") as handle:
                handle.write(f"{what} fitted alone: {config.pixel_steps} steps, L1 {pixel_loss:.5f}, {time.perf_counter() - start:.0f} s\n")
    patches = ProxyPatchDataset(train_samples, config.patch, config.patches_per_epoch, config.seed, keep_cfa_phase=meta["before_demosaic"])
    val = ProxyImageDataset(_Samples(data, validation[: config.val_max], params))
    options = dict(num_workers=config.workers, persistent_workers=config.workers > 0)
    train_loader = DataLoader(patches, config.batch_size, shuffle=False, drop_last=True, **options)
    val_loader = DataLoader(val, batch_size=1, **options)
    fit_interruptible(trainer, module, train_loader, val_loader, resume=checkpoint, total=config.iters, log_file=log_file)
    trainer.save_checkpoint(model_dir / "checkpoints" / LAST_CHECKPOINT)
    path = model_dir / "model.pt"
    if trainer.is_global_zero:
        save_proxy_model(model.cpu(), path)
        with log_file.open("a") as handle:
            handle.write(f"finished at step {trainer.global_step}: model.pt written\n")
        if report:
            from isplab.workflows.proxy.evaluate import evaluate_proxy

            result = evaluate_proxy(data, model.eval(), model_dir, splits=splits, title=f"Proxy of {block}", run_dir=model_dir)
            with log_file.open("a") as handle:
                handle.write(f"report: {result.report}\n")
    return path


CACHED_PIXELS = 16384  # fit_pixels, blur head: pixels kept of each blurred sample for its second part


def resolve_config(block: str, config: ProxyTrainConfig) -> ProxyTrainConfig:
    """``config`` with what was left ``None`` set for ``block``: the block's default head, the
    head's patch (:data:`DEFAULT_PATCH`, or 0 for :data:`WHOLE_IMAGE_HEADS`) and pixel steps
    (:data:`DEFAULT_PIXEL_STEPS`, 0 for heads without a pixel MLP).

    Raises:
        IsplabError: an unknown block.
    """
    config = replace(config, head=config.head or get_block(block).default_head)
    if config.patch is None:
        config = replace(config, patch=0 if config.head in WHOLE_IMAGE_HEADS else DEFAULT_PATCH)
    if config.pixel_steps is None:
        config = replace(config, pixel_steps=DEFAULT_PIXEL_STEPS.get(config.head, 0))
    return config


def fit_pixels(model: torch.nn.Module, samples: _Samples, steps: int, *, seed: int = 0, pixels: int = 16384,
               per_sample: int = 1024, lr: float = 3e-3, cache_samples: int = 512, images: int = 4) -> float:  # fmt: skip
    """Fit the parts of a ``pointwise`` or ``blur`` proxy that the U-Net does not compute, alone
    (the U-Net is not run), by Adam steps (``lr``, cosine schedule) of ``pixels`` random pixels, L1
    to the same pixels of the outputs.

    - ``pointwise``: the pixel MLP (:meth:`ProxyUNet.pointwise_transform`); each of ``steps`` steps
      takes ``per_sample`` random pixels of each of ``pixels // per_sample`` random samples.
    - ``blur``: first, for ``steps // 2`` steps, the parameters -> (sigma, mix) MLP and the Lab
      pixel MLP together: each chosen sample's whole image is blurred
      (:meth:`ProxyUNet.blur_transform`, cheap next to the U-Net), then the pixel MLP
      (:meth:`ProxyUNet.lab_colour_transform`) maps the chosen pixels of the blurred image. Then,
      the blur fixed, the blurred images of up to ``cache_samples`` random samples are computed
      once (``CACHED_PIXELS`` random pixels of each kept) and the pixel MLP alone takes the other
      steps, each on ``pixels`` pixels drawn from all of them (many more samples per step than 16 whole blurs allow; lowpass, 2500 steps,
      ``benchmarks/proxy.py``: see its docstring for the gain).

    - ``unsharp``: the parameters -> (sigma, amount, threshold) MLP
      (:meth:`ProxyUNet.unsharp_transform`), each step on ``images`` random samples, whole (their
      edges are left alone, their detail needs the neighbours): L1 of the images. (Sharpen, 800
      steps: 4 images a step beat 16 at the same time, lr 3e-3 beat 1e-2; ``benchmarks/proxy.py``.)

    A pure function of ``seed`` (every DDP rank computes the same weights). Returns the last
    step's loss.

    Raises:
        IsplabError: a proxy of another head.
    """
    head = getattr(model, "head_kind", None)
    if head not in PREFIT_HEADS:
        raise IsplabError(f"fit_pixels needs a 'pointwise', 'blur' or 'unsharp' proxy, this one's head is {head!r}")
    rng = np.random.default_rng(seed)
    if head == "unsharp":
        return float(_fit_unsharp_steps(model, samples, steps, rng, images, lr).detach())
    joint = steps // 2 if head == "blur" else steps
    loss = _fit_pixel_steps(model, samples, joint, rng, pixels, per_sample, lr)
    if head == "blur" and steps > joint:
        xs, ys, us = [], [], []
        with torch.no_grad():
            for i in rng.permutation(len(samples))[:cache_samples]:
                x, y, unit = samples.get(int(i))
                x = model.blur_transform(x[None], unit[None])[0]
                flat = torch.from_numpy(rng.permutation(x.shape[-2] * x.shape[-1])[:CACHED_PIXELS])
                xs.append(x.flatten(1)[:, flat].T)
                ys.append(y.flatten(1)[:, flat].T)
                us.append(unit.expand(len(flat), -1))
        xs, ys, us = torch.cat(xs), torch.cat(ys), torch.cat(us)
        optimizer = torch.optim.Adam(model.pixel_mlp.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: cosine_factor(i, steps - joint))
        for _ in range(steps - joint):
            which = torch.from_numpy(rng.integers(len(xs), size=pixels))
            loss = F.l1_loss(model.colour_transform(xs[which][:, :, None, None], us[which]), ys[which][:, :, None, None])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return float(loss.detach())


def _fit_pixel_steps(model, samples: _Samples, steps: int, rng: np.random.Generator, pixels: int, per_sample: int, lr: float) -> torch.Tensor:
    """:func:`fit_pixels`' steps on ``per_sample`` pixels of ``pixels // per_sample`` random samples
    each (whole images blurred first for the ``blur`` head, whose blur MLP then also learns)."""
    blur = model.head_kind == "blur"
    weights = list(model.pixel_mlp.parameters()) + (list(model.blur_mlp.parameters()) if blur else [])
    optimizer = torch.optim.Adam(weights, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: cosine_factor(i, steps))
    loss = torch.zeros(())
    for _ in range(steps):
        xs, ys, us = [], [], []
        for i in rng.integers(len(samples), size=max(1, pixels // per_sample)):
            x, y, unit = samples.get(int(i))
            if blur:
                x = model.blur_transform(x[None], unit[None])[0]
            flat = torch.from_numpy(rng.integers(x.shape[-2] * x.shape[-1], size=per_sample))
            xs.append(x.flatten(1)[:, flat])
            ys.append(y.flatten(1)[:, flat])
            us.append(unit.expand(per_sample, -1))
        x, y = torch.cat(xs, 1).T[:, :, None, None], torch.cat(ys, 1).T[:, :, None, None]
        loss = F.l1_loss(model.colour_transform(x, torch.cat(us)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return loss


def _fit_unsharp_steps(model, samples: _Samples, steps: int, rng: np.random.Generator, count: int, lr: float) -> torch.Tensor:
    """:func:`fit_pixels` for the ``unsharp`` head: Adam (cosine) on its MLP alone, each step the
    L1 over ``count`` random samples, whole (batched by image size)."""
    optimizer = torch.optim.Adam(model.unsharp_mlp.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: cosine_factor(i, steps))
    loss = torch.zeros(())
    for _ in range(steps):
        by_size: dict[tuple, list] = {}
        for i in rng.integers(len(samples), size=count):
            x, y, unit = samples.get(int(i))
            by_size.setdefault(tuple(x.shape), []).append((x, y, unit))
        loss = sum(
            F.l1_loss(model.unsharp_transform(torch.stack(xs), torch.stack(us)), torch.stack(ys), reduction="sum")
            for xs, ys, us in (zip(*group) for group in by_size.values())
        ) / sum(len(g) * g[0][0].numel() for g in by_size.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return loss


def _check_config(config: ProxyTrainConfig) -> None:
    check_at_least_one(config, ("iters", "eval_every", "batch_size", "patches_per_epoch", "width", "val_max"))
    if config.patch < 0:
        raise IsplabError(f"patch must be at least 0 (0: whole images), got {config.patch}")
    if config.head not in PROXY_HEADS:
        raise IsplabError(f"unknown proxy head {config.head!r}: expected one of {', '.join(PROXY_HEADS)}")
    if config.head in WHOLE_IMAGE_HEADS and config.patch:
        raise IsplabError(f"the {config.head} head trains on whole images (a crop's blur is not the crop of the image's blur): pass --patch 0, not {config.patch}")
    if config.pixel_steps < 0:
        raise IsplabError(f"pixel_steps must be >= 0, got {config.pixel_steps}")
    if config.global_weight < 0:
        raise IsplabError(f"global_weight must be >= 0, got {config.global_weight}")
    if config.schedule not in SCHEDULES:
        raise IsplabError(f"unknown learning-rate schedule {config.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if config.loss is not None and config.loss not in LOSSES:
        raise IsplabError(f"unknown loss {config.loss!r}: expected one of {', '.join(LOSSES)}")
    if not 0 <= config.holdout_params < 1:
        raise IsplabError(f"holdout_params must be in [0, 1), got {config.holdout_params}")
    if config.patches_per_epoch < config.batch_size:
        raise IsplabError(f"patches_per_epoch ({config.patches_per_epoch}) must be at least batch_size ({config.batch_size})")


def _check_same_run(checkpoint: Path, ranges, config: ProxyTrainConfig, meta: dict) -> None:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get("proxy_config")
    if saved is None:
        return
    now = {"ranges": [list(map(float, r)) for r in ranges], "width": config.width, "depth": config.depth, "head": config.head,
           "cfa_phase": bool(config.cfa_phase), "block": meta["block"], "params": meta["params"]}  # fmt: skip
    was = {"ranges": saved["ranges"], "width": saved["width"], "depth": saved["depth"], "head": saved.get("head", "add"),
           "cfa_phase": saved.get("cfa_phase", False), "block": saved["meta"].get("block"), "params": saved["meta"].get("params")}  # fmt: skip
    if now != was:
        raise IsplabError(f"cannot resume from {checkpoint}: it was trained as {was} but the options give {now}")
