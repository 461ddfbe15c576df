"""Train the sky U-Net on random patches with Lightning (``isplab sky train DATASET MODEL_DIR``).

Loss: binary cross-entropy on the logits plus ``jaccard`` (smp's soft Jaccard) or ``dice``.
Validation: IoU (torchmetrics ``BinaryJaccardIndex`` at probability 0.5) on fixed patches of the
validation images, which are whole images held out by :func:`~isplab.workflows.sky.data.split_by_image`.
``MODEL_DIR`` gets the run folder of ``docs/conventions.md`` section 5 (``model.pt``,
``config.json``, ``checkpoints/{best,last}.ckpt`` (best by ``val_iou``), ``logs/``, ``log.txt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryJaccardIndex

from isplab.engine import SaveOnInterrupt, build_trainer, configure_optimizer, fit_interruptible, prepare_run_dir
from isplab.engine.trainer import LAST_CHECKPOINT, resolve_accelerator
from isplab.errors import IsplabError, check_at_least_one
from isplab.workflows.sky.data import PatchOptions, SkyPatchDataset, open_dataset, split_by_image
from isplab.workflows.sky.hdr import LogEncoding
from isplab.workflows.sky.model import build_sky_model, save_sky_model

MONITOR = "val_iou"
RUN_OUTPUTS = ("model.pt", "config.json", "log.txt", "checkpoints", "logs")
LOSSES = ("jaccard", "dice")


@dataclass
class SkyTrainConfig:
    """Training options (one dataclass, see ``docs/conventions.md`` section 7)."""

    encoder: str = "resnet34"
    encoder_depth: int = 5
    decoder_channels: list[int] | None = None
    encoder_weights: str | None = None
    encoding: dict = field(default_factory=lambda: LogEncoding().to_dict())
    loss: str = "jaccard"
    patch: int = 256
    scale: tuple[float, float] = (0.5, 2.0)
    batch_size: int = 8
    lr: float = 1e-3
    epochs: int = 20
    patches_per_epoch: int = 512
    val_patches: int = 64
    val_fraction: float = 0.25
    seed: int = 0
    device: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    workers: int = 0


class SkyModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, config: SkyTrainConfig, log_file: Path | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.model, self.config, self.log_file = model, config, log_file
        region = smp.losses.JaccardLoss if config.loss == "jaccard" else smp.losses.DiceLoss
        self.region_loss = region(mode="binary", from_logits=True)
        self.val_iou = BinaryJaccardIndex()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target) + self.region_loss(logits, target)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self.model(x), y)
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.log("val_loss", self.loss(logits, y), sync_dist=True, batch_size=x.shape[0])
        self.val_iou.update(torch.sigmoid(logits), y.int())
        self.log(MONITOR, self.val_iou, prog_bar=True, batch_size=x.shape[0])

    def on_validation_epoch_end(self) -> None:
        if self.log_file is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        m = self.trainer.callback_metrics
        values = " ".join(f"{k} {float(m[k]):.4f}" for k in ("train_loss", "val_loss", MONITOR) if k in m)
        with self.log_file.open("a") as handle:
            handle.write(f"epoch {self.current_epoch} step {self.global_step}: {values}\n")

    def configure_optimizers(self):
        return configure_optimizer(self.model.parameters(), lr=self.config.lr, optimizer="adamw", scheduler="cosine", max_epochs=self.config.epochs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sky_config"] = getattr(self.model, "sky_config", None)


def _check(config: SkyTrainConfig) -> None:
    if config.loss not in LOSSES:
        raise IsplabError(f"unknown loss {config.loss!r}: expected one of {', '.join(LOSSES)}")
    check_at_least_one(config, ("epochs", "batch_size", "patches_per_epoch", "val_patches", "patch"))
    if config.patches_per_epoch < config.batch_size:
        raise IsplabError(f"patches_per_epoch ({config.patches_per_epoch}) must be at least batch_size ({config.batch_size})")
    if config.patch % (2**config.encoder_depth):
        raise IsplabError(f"patch {config.patch} must be a multiple of {2**config.encoder_depth} (2^encoder_depth)")


def train_sky(
    dataset: str | Path,
    model_dir: str | Path,
    config: SkyTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
) -> Path:
    """Train on ``dataset`` (see :func:`~isplab.workflows.sky.data.open_dataset`) into ``model_dir``.

    Returns ``model_dir/model.pt``.

    Ctrl-C saves the steps done as ``checkpoints/last.ckpt`` (one process) and raises
    :class:`~isplab.engine.TrainingInterrupted`; ``resume=True`` continues from it. A SLURM
    requeue of the same command continues from Lightning's ``hpc_ckpt_*.ckpt``.

    Raises:
        IsplabError: bad options, an existing run without ``resume``/``overwrite`` (or with both), data problems,
            a missing resume checkpoint or one of another architecture.
    """
    _check(config)
    model_dir = Path(model_dir)
    # Under DDP, Lightning re-runs this function in each extra process after rank 0 has started:
    # only rank 0 checks, cleans and writes the run's files.
    run = prepare_run_dir(model_dir, RUN_OUTPUTS, overwrite=overwrite, resume=resume)
    checkpoint = run.checkpoint
    samples = open_dataset(dataset)
    train_samples, val_samples = split_by_image(samples, config.val_fraction, config.seed)
    for sample in samples:  # every label is checked before any training starts
        sample.load()
    model = build_sky_model(config.encoder, config.encoder_depth, config.decoder_channels, config.encoding, config.encoder_weights)
    if checkpoint is not None:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get("sky_config")
        if saved is not None and saved != model.sky_config:
            raise IsplabError(f"cannot resume from {checkpoint}: it was trained as {saved} but the options give {model.sky_config}")
    resolve_accelerator(config.device)
    run.clear()  # --overwrite: the earlier run's files go only now that every check has passed
    trainer = build_trainer(
        model_dir,
        max_epochs=config.epochs,
        device=config.device,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        monitor=MONITOR if val_samples else None,
        mode="max",
        seed=config.seed,
        progress=progress,
        log_every_n_steps=max(1, min(10, config.patches_per_epoch // config.batch_size)),
        num_sanity_val_steps=0,
        callbacks=[SaveOnInterrupt(model_dir / "checkpoints" / LAST_CHECKPOINT), *callbacks],
    )
    # built after the trainer seeded torch: the same seed gives the same initial weights
    model = build_sky_model(config.encoder, config.encoder_depth, config.decoder_channels, config.encoding, config.encoder_weights)
    log_file = run.log_file
    options = {**asdict(config), "train_images": [s.name for s in train_samples], "val_images": [s.name for s in val_samples]}
    run.start(options, new=f"{config.encoder}, {config.epochs} epochs", resumed=f"{config.encoder}, {config.epochs} epochs")
    module = SkyModule(model, config, log_file)
    encoding = LogEncoding.from_dict(config.encoding)
    patch_options = PatchOptions(patch=config.patch, scale=tuple(config.scale))
    train_set = SkyPatchDataset(train_samples, patch_options, config.patches_per_epoch, seed=config.seed, encoding=encoding)
    loader_options = dict(num_workers=config.workers, persistent_workers=config.workers > 0)
    train_loader = DataLoader(train_set, config.batch_size, shuffle=False, drop_last=True, **loader_options)
    val_loader = None
    if val_samples:
        val_set = SkyPatchDataset(val_samples, patch_options, config.val_patches, augment=False, seed=config.seed + 1, encoding=encoding)
        val_loader = DataLoader(val_set, config.batch_size, **loader_options)
    steps = config.epochs * (config.patches_per_epoch // config.batch_size)
    fit_interruptible(trainer, module, train_loader, val_loader, resume=checkpoint, total=steps, log_file=log_file)
    trainer.save_checkpoint(model_dir / "checkpoints" / LAST_CHECKPOINT)
    if trainer.is_global_zero:
        save_sky_model(model, model_dir / "model.pt")
        with log_file.open("a") as handle:
            handle.write(f"finished at step {trainer.global_step}: model.pt written\n")
    return model_dir / "model.pt"
