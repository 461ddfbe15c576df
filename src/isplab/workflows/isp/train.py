"""Train a learned ISP on RAW/RGB patches with Lightning (the seed's ``train_model.py``).

The budget is counted in iterations as in the seed: ``iters`` optimiser steps on batches of random
patches (``patches_per_epoch`` patches make an epoch and are re-drawn every epoch, the seed's
``train_size``), with a validation every ``eval_every`` steps on the validation split's full images
(centrally cropped to the model's size multiple, or to ``val_crop``). The loss is

    mse * MSE + l1 * L1 + ssim * (1 - SSIM) + vgg * VGG-19 relu5_4 content

(the seed's recipe is ``mse=20, ssim=20, vgg=1``). ``model_dir`` receives the engine's
``checkpoints/{best,last}.ckpt`` (best by validation PSNR), Lightning's logs, ``config.json`` (the
options), ``log.txt`` (this run's text log: a line per evaluation; a resume appends a new, marked
section) and the final network as ``model.pt`` (:func:`isplab.models.isp.save_isp_model`).

A ``model_dir`` that already holds any of these is refused before any work unless ``resume``
(continue that run) or ``overwrite`` (delete them, then start afresh). Ctrl-C saves the steps done
as ``last.ckpt`` (one process; under DDP it keeps the last validation's) and raises
:class:`~isplab.engine.TrainingInterrupted`; ``resume`` continues from there.

Data path: each raw is decoded (read, black/white-level normalised, and for ``metadata`` models
colour-corrected, :func:`isplab.workflows.isp.data.model_input`) once and kept in memory up to
``cache_mb`` (:meth:`~isplab.workflows.isp.data.PairSource.preload`, before the data-loader
workers fork, so they share it); patches are cut from memory. ``channels_last`` stores the
network and its batches in NHWC; ``precision="bf16-mixed"`` trains under bf16 autocast (GPUs with
bf16, e.g. Ampere and later; Lightning's precision setting).

Patches are a pure function of ``(seed, epoch, index)`` (:class:`~isplab.workflows.isp.data.PatchDataset`);
under DDP Lightning's ``DistributedSampler`` gives each rank different indices, hence different
patches, and the effective batch is ``batch_size x devices x num_nodes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.models import VGG19_Weights
from torchvision.models.vgg import cfgs, make_layers

from isplab.engine import (
    SaveOnInterrupt,
    build_trainer,
    configure_optimizer,
    fit_interruptible,
    prepare_run_dir,
    psnr,
    ssim,
    ssim_loss,
)
from isplab.engine.trainer import LAST_CHECKPOINT, iteration_budget, resolve_accelerator
from isplab.errors import IsplabError, check_at_least_one
from isplab.models.isp import build_isp_model, save_isp_model
from isplab.models.isp_prior import PRIORS
from isplab.workflows.isp.data import FullImageDataset, PatchDataset, open_pairs

#: ``precision`` values accepted (Lightning's names; ``None`` is 32-bit)
PRECISIONS = (None, "32-true", "bf16-mixed", "16-mixed")

#: ``features`` layers of torchvision's VGG-19 up to and including relu5_4
VGG_RELU5_4 = 36
VGG_FILE = Path(VGG19_Weights.IMAGENET1K_V1.url).name  # vgg19-dcbb9e9d.pth in torch's hub cache
MONITOR = "val_psnr"
#: what a training run writes into its folder (refused without --overwrite/--resume)
RUN_OUTPUTS = ("model.pt", "config.json", "log.txt", "checkpoints", "logs")


@dataclass
class ISPTrainConfig:
    """Training options; names follow the seed where it has them.

    Attributes:
        arch, num_maps_base, arch_options: the model (:func:`isplab.models.isp.build_isp_model`).
        patch: raw patch side (the seed's ``patch_w``/``patch_h``): input ``patch/2`` x ``patch/2`` x 4.
        batch_size: patches per step.
        lr: Adam learning rate.
        iters: total optimiser steps (when resuming: the total, not the additional ones).
        eval_every: validate, log and checkpoint every this many steps (the seed's ``eval_step``).
        mse, l1, ssim, vgg: loss weights.
        vgg_weights: torchvision VGG-19 state dict file; ``None`` uses torch's hub cache.
        patches_per_epoch: random patches per epoch (the seed's ``train_size``).
        val_crop: central raw crop of validation images (even), ``None`` for full images.
        val_max_images: validate on the first N images only (``None``: all).
        seed: seeds initialisation and patch sampling.
        device, devices, strategy, num_nodes: see :func:`isplab.engine.build_trainer`.
        workers: dataloader worker processes.
        metadata: train a metadata-aware model (input white-balanced, colour-corrected and exposed with
            each raw's own metadata, see :mod:`isplab.workflows.isp.data`); DNG datasets only.
        cache_mb: keep up to this many MB of decoded training pairs in memory (0: decode every patch's image).
        precision: one of :data:`PRECISIONS` (``"bf16-mixed"``: bf16 autocast, for GPUs).
        channels_last: NHWC memory format for the network and its batches.
        exposure: a blind model whose input is brightened by each raw's own exposure (DNG
            ``BaselineExposure``) and nothing else; DNG datasets only (metadata-aware models
            always get the exposure).
        prior: ``"none"`` or ``"classical"``: the model is a classical render of its input plus the
            network's correction, and starts equal to the render (:mod:`isplab.models.isp_prior`);
            ``dng`` packing only (blind models: RGGB sensors).
    """

    arch: str = "punet"
    num_maps_base: int = 16
    arch_options: dict[str, Any] = field(default_factory=dict)
    patch: int = 256
    batch_size: int = 32
    lr: float = 5e-5
    iters: int = 100_000
    eval_every: int = 1000
    mse: float = 20.0
    l1: float = 0.0
    ssim: float = 20.0
    vgg: float = 0.0
    vgg_weights: str | Path | None = None
    patches_per_epoch: int = 5000
    val_crop: int | None = None
    val_max_images: int | None = None
    seed: int = 0
    device: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    workers: int = 0
    metadata: bool = False
    cache_mb: float = 1024.0
    precision: str | None = None
    channels_last: bool = False
    prior: str = "none"
    exposure: bool = False


class VGGLoss(nn.Module):
    """Mean squared difference of VGG-19 relu5_4 features (the seed's content loss).

    Inputs are ``(B, 3, H, W)`` RGB in [0, 1], normalised with ImageNet's mean and std as
    torchvision's VGG weights expect. The network is frozen.

    Args:
        weights: a torchvision ``vgg19`` state dict (only ``features.*`` up to relu5_4 is used) or
            a file holding one; ``None`` loads torchvision's ``VGG19_Weights.IMAGENET1K_V1`` from
            torch's hub cache (``<hub dir>/checkpoints/vgg19-dcbb9e9d.pth``) without downloading.

    Raises:
        IsplabError: no weights found (says how to supply them), or a file that is not such a state dict.
    """

    def __init__(self, weights: str | Path | Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.features = make_layers(cfgs["E"])[:VGG_RELU5_4]
        state = weights if isinstance(weights, Mapping) else _load_vgg_state(weights)
        prefix = "features."
        wanted = {f"{i}.{p}" for i, layer in enumerate(self.features) for p, _ in layer.named_parameters()}
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in wanted}
        missing = sorted(wanted - found.keys())
        if missing:
            raise IsplabError(
                f"VGG-19 weights lack {', '.join(prefix + k for k in missing[:3])}...: expected a torchvision vgg19 state dict"
            )
        self.features.load_state_dict(found)
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGLoss:
        # The feature extractor stays in eval mode whatever the surrounding module does.
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for ``(B, 3, H, W)`` ``pred`` and ``target``."""
        features = self.features(torch.cat([pred, target]).sub(self.mean).div(self.std))
        ours, theirs = features.chunk(2)
        return F.mse_loss(ours, theirs)


def _load_vgg_state(weights: str | Path | None) -> Mapping[str, torch.Tensor]:
    if weights is None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILE
        if not path.is_file():
            raise IsplabError(
                f"the VGG-19 loss needs ImageNet weights but {path} does not exist (isplab never downloads): "
                f"pass --vgg-weights FILE with a torchvision vgg19 state dict, copy {VGG_FILE} into "
                f"{path.parent}, or set the VGG weight to 0"
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise IsplabError(f"VGG-19 weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for files that are not checkpoints
        raise IsplabError(f"{path} is not a torchvision vgg19 state dict: {e}") from None
    if not isinstance(state, Mapping):
        raise IsplabError(f"{path} is not a torchvision vgg19 state dict (found a {type(state).__name__})")
    return state


class ISPModule(L.LightningModule):
    """Lightning wrapper: weighted loss, validation PSNR/SSIM, Adam (see the module docstring).

    The VGG network is left out of checkpoints (it is rebuilt from its weights), hence
    ``strict_loading = False``.
    """

    def __init__(self, model: nn.Module, config: ISPTrainConfig, log_file: Path | None = None) -> None:
        super().__init__()
        self.model, self.config, self.log_file = model, config, log_file
        self.vgg = VGGLoss(config.vgg_weights) if config.vgg > 0 else None
        self.strict_loading = False

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        """``(B, 4, h, w)`` -> ``(B, 3, 2h, 2w)``."""
        return self.model(packed)

    def _input(self, packed: torch.Tensor) -> torch.Tensor:
        return packed.contiguous(memory_format=torch.channels_last) if self.config.channels_last else packed

    def loss_terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted loss ``"loss"`` and its non-zero-weight terms (unweighted), by name."""
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        if c.mse:
            terms["mse"] = F.mse_loss(pred, target)
        if c.l1:
            terms["l1"] = F.l1_loss(pred, target)
        if c.ssim:
            terms["ssim"] = ssim_loss(pred, target)
        if self.vgg is not None:
            terms["vgg"] = self.vgg(pred, target)
        weights = {"mse": c.mse, "l1": c.l1, "ssim": c.ssim, "vgg": c.vgg}
        terms["loss"] = sum(weights[name] * value for name, value in terms.items())
        return terms

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        packed, target = batch
        terms = self.loss_terms(self.model(self._input(packed)).float(), target)
        # sync_dist: under DDP the logged loss is the mean over all ranks' patches, not rank 0's.
        self.log("train_loss", terms["loss"], prog_bar=True, sync_dist=True)
        self.log_dict({f"train_{name}": value for name, value in terms.items() if name != "loss"}, sync_dist=True)
        return terms["loss"]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        packed, target = batch
        pred = self.model(self._input(packed)).float().clamp(0.0, 1.0)
        size = packed.shape[0]
        self.log(MONITOR, psnr(pred, target), prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val_ssim", ssim(pred, target), prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val_mse", F.mse_loss(pred, target), batch_size=size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.log_file is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        metrics = self.trainer.callback_metrics
        values = " ".join(
            f"{name} {float(metrics[name]):.4f}" for name in ("train_loss", MONITOR, "val_ssim") if name in metrics
        )
        with self.log_file.open("a") as handle:
            handle.write(f"step {self.global_step}: {values}\n")

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizer(self.model.parameters(), lr=self.config.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("vgg.")}
        checkpoint["isp_config"] = getattr(self.model, "isp_config", None)


def train_isp(
    data_root: str | Path,
    model_dir: str | Path,
    config: ISPTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    val_split: str = "val",
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
) -> Path:
    """Train ``config.arch`` on ``data_root``'s train split (see the module docstring).

    Args:
        data_root: a dataset :func:`isplab.workflows.isp.data.open_pairs` recognises.
        model_dir: checkpoints, logs, ``config.json``, ``log.txt`` and ``model.pt`` go here.
        config: the options.
        resume: continue from ``model_dir/checkpoints/last.ckpt`` up to ``config.iters`` steps.
        overwrite: replace a previous run's outputs in ``model_dir`` (deleted just before
            training starts, after every other check has passed).
        val_split: the split validated on.
        progress: show a progress bar (``step k/N`` with an ETA).
        callbacks: extra Lightning callbacks.

    Returns:
        The best checkpoint by validation PSNR.

    Raises:
        IsplabError: bad options, ``model_dir`` holding a previous run (without ``resume`` or
            ``overwrite``, or with both) or not writable, data problems, VGG weights missing, or a resume
            checkpoint that is absent or was trained with another architecture.
        isplab.engine.TrainingInterrupted: Ctrl-C; ``last.ckpt`` then holds the steps done (one process) or the
            last validation (DDP), and ``resume=True`` continues from it.
    """
    _check_config(config)
    model_dir = Path(model_dir)
    # Under DDP, Lightning re-runs this function in each extra process once rank 0 has started
    # fitting, i.e. after rank 0 wrote its log: only rank 0 checks, cleans up and writes.
    run = prepare_run_dir(model_dir, RUN_OUTPUTS, overwrite=overwrite, resume=resume)
    checkpoint = run.checkpoint
    exposure = config.exposure and not config.metadata
    train_source = open_pairs(data_root, "train", metadata=config.metadata, cache_mb=config.cache_mb, exposure=exposure)
    val_source = open_pairs(data_root, val_split, metadata=config.metadata, exposure=exposure)
    if config.prior != "none" and train_source.packing != "dng":
        raise IsplabError(
            f"--prior {config.prior} renders packed R, Gr, Gb, B planes of DNG raws; {train_source.root} holds "
            f"{train_source.layout} raws packed {train_source.packing!r} (use --prior none)"
        )
    model = build_isp_model(config.arch, config.num_maps_base, metadata=config.metadata, prior=config.prior,
                            exposure=config.exposure and not config.metadata, **config.arch_options)
    if checkpoint is not None:
        _check_same_model(checkpoint, model)
    resolve_accelerator(config.device)  # an absent device is refused before anything is deleted
    module_log = run.log_file
    run.clear()  # --overwrite: the earlier run's files go only now that every check has passed

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
        precision=config.precision,
        callbacks=[SaveOnInterrupt(model_dir / "checkpoints" / LAST_CHECKPOINT), *callbacks],
    )
    # Built after build_trainer seeded torch: the same seed gives the same initial weights.
    model = build_isp_model(config.arch, config.num_maps_base, metadata=config.metadata, prior=config.prior,
                            exposure=config.exposure and not config.metadata, **config.arch_options)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    module = ISPModule(model, config, log_file=module_log)
    run.start(asdict(config), new=f"{config.arch}, {config.iters} steps", resumed=f"training to step {config.iters}")

    # Patch (seed, epoch, index) -> sample; the trainer's DatasetEpoch callback sets the epoch and,
    # under DDP, Lightning replaces the sequential sampler by a DistributedSampler.
    if config.workers > 0:
        train_source.preload()  # decoded once here, shared with the forked workers
    patches = PatchDataset(train_source, config.patch, config.patches_per_epoch, augment=True, seed=config.seed)
    val = FullImageDataset(val_source, multiple=model.size_multiple, crop=config.val_crop)
    if config.val_max_images is not None:
        val = Subset(val, range(min(config.val_max_images, len(val))))
    loader_options = dict(num_workers=config.workers, persistent_workers=config.workers > 0)
    train_loader = DataLoader(patches, config.batch_size, shuffle=False, drop_last=True, **loader_options)
    val_loader = DataLoader(val, batch_size=1, **loader_options)  # full images differ in size

    best = fit_interruptible(trainer, module, train_loader, val_loader, resume=checkpoint, total=config.iters,
                             log_file=module_log)
    # The last validation may precede the last step: save the final state for --resume too.
    trainer.save_checkpoint(model_dir / "checkpoints" / LAST_CHECKPOINT)
    if trainer.is_global_zero:
        save_isp_model(model, model_dir / "model.pt")
        with module_log.open("a") as handle:
            handle.write(f"finished at step {trainer.global_step}: model.pt written\n")
    return best if best is not None else model_dir / "checkpoints" / LAST_CHECKPOINT


def _check_config(config: ISPTrainConfig) -> None:
    check_at_least_one(config, ("iters", "eval_every", "batch_size", "patches_per_epoch"))
    if config.prior not in PRIORS:
        raise IsplabError(f"unknown prior {config.prior!r}: expected one of {', '.join(PRIORS)}")
    if config.patches_per_epoch < config.batch_size:
        raise IsplabError(
            f"patches_per_epoch ({config.patches_per_epoch}) must be at least batch_size ({config.batch_size})"
        )
    weights = {"mse": config.mse, "l1": config.l1, "ssim": config.ssim, "vgg": config.vgg}
    if any(w < 0 for w in weights.values()) or not any(weights.values()):
        raise IsplabError(f"loss weights must be >= 0 and not all zero, got {weights}")
    if config.precision not in PRECISIONS:
        raise IsplabError(f"unknown precision {config.precision!r}: expected one of {', '.join(map(str, PRECISIONS[1:]))}")
    if config.cache_mb < 0:
        raise IsplabError(f"cache_mb must be >= 0, got {config.cache_mb}")
    if config.ssim and config.patch < 11:
        raise IsplabError(f"the SSIM loss needs patches of at least 11 pixels, got patch {config.patch}")


def _check_same_model(checkpoint: Path, model: nn.Module) -> None:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get("isp_config")
    if saved is not None and saved != model.isp_config:
        raise IsplabError(
            f"cannot resume from {checkpoint}: it was trained as {saved} but the options give {model.isp_config}"
        )

