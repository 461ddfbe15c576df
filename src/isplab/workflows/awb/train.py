"""Train AWB networks on statistics datasets, with the reference recipe's augmentation and more.

:func:`train_model` mirrors the reference ``train.py``: mean squared mired error / 1000, Adam,
early stopping and learning-rate reduction on the training loss (there is no validation set
unless one is given), multiplicative noise on the image (+-10%) and lux (+-20%), horizontal flips,
rotation and zoom (:func:`reference_config`), and per-image repeat counts from auto-train's
duplicates file. All augmentation runs as batched torch ops inside the training step.

Re-lighting (``TrainConfig.relight``) additionally moves each image to another colour temperature
and its label with it. The statistics are ``CCM5000 . diag(g5000) . camRGB``, and a change of
illuminant from T to T' is approximately the per-channel camera gain
``k = (r(T') / r(T), 1, b(T') / b(T))`` with r, b the sensor's CT curve, so the re-lit image is
``CCM5000 . diag(k) . CCM5000^-1 . stats`` (the 5000 K gains commute with ``diag(k)``). It needs
each sensor's tuning file (:mod:`isplab.workflows.awb.tuning`); images of sensors without one are
not re-lit.

Training goes through :func:`isplab.engine.build_trainer`: a run folder (``run_dir``) holds
``config.json``, ``log.txt``, ``checkpoints/{best,last}.ckpt`` and ``logs/``; ``resume=True``
continues from ``checkpoints/last.ckpt`` (``config.epochs`` is then the total), and Ctrl-C stops
after Lightning's graceful shutdown with :class:`~isplab.engine.TrainingInterrupted`, leaving
``last.ckpt`` at the last finished epoch (:func:`isplab.engine.fit_interruptible`). Under DDP
(``devices``/``strategy``/``num_nodes``) Lightning's ``DistributedSampler`` gives each rank its own
share of the image indices of every epoch.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader

from isplab.engine import (
    build_trainer,
    configure_optimizer,
    fit_interruptible,
    is_global_zero,
    resolve_checkpoint,
)
from isplab.errors import IsplabError
from isplab.models.awb import (
    base_net,
    calibrated,
    fit_calibration,
    member_loss_weights,
    member_mireds,
    model_sensors,
    with_sensor_embedding,
)
from isplab.workflows.awb.config import LOSSES, TrainConfig, reference_config
from isplab.workflows.awb.constants import TEMPERATURE_RANGE
from isplab.workflows.awb.dataset import AWBDataset
from isplab.workflows.awb.model import build_awb_model, load_awb_model

__all__ = [
    "AWBModule", "RUN_FILES", "RelightTables", "TrainConfig", "geometric_augment",
    "reference_config", "relight", "relight_tables", "add_test_time", "sensor_indices", "train_model",
]

#: Mired grid on which each sensor's CT curve is tabulated for re-lighting.
_RELIGHT_GRID = 256


@dataclass
class RelightTables:
    """What re-lighting needs, per image and per sensor.

    Attributes:
        sensor: ``(N,)`` int64 index into ``curves``.
        ccm, ccm_inv: ``(N, 3, 3)`` the image's sensor's 5000 K CCM and its inverse.
        rb: ``(N, 2)`` CT-curve r, b at the image's true temperature.
        curves: ``(S, G, 2)`` CT-curve r, b of each sensor on ``G`` mireds evenly spanning 2800..7600 K.
        enabled: ``(N,)`` bool, False for images whose sensor has no tuning file.
    """

    sensor: torch.Tensor
    ccm: torch.Tensor
    ccm_inv: torch.Tensor
    rb: torch.Tensor
    curves: torch.Tensor
    enabled: torch.Tensor


def relight_tables(dataset: AWBDataset, tuning_dir: str | Path | None = None) -> RelightTables:
    """Look up each sensor's tuning and tabulate its CT curve and 5000 K CCM for re-lighting.

    Sensors without a tuning file are warned about and their images are not re-lit.

    Raises:
        IsplabError: no sensor of the dataset has a tuning file.
    """
    from isplab.workflows.awb.tuning import find_tuning, load_tuning

    sensors = sorted({s.sensor for s in dataset.samples})
    mireds = _mired_grid()
    tunings, curves = {}, []
    for sensor in sensors:
        try:
            tunings[sensor] = load_tuning(find_tuning(sensor, dataset.target, tuning_dir))
        except IsplabError as e:
            warnings.warn(f"images of sensor {sensor} will not be re-lit: {e}", stacklevel=2)
        tuning = tunings.get(sensor)
        curves.append([tuning.gains_at(1e6 / m) if tuning else (1.0, 1.0) for m in mireds.tolist()])
    if not tunings:
        raise IsplabError(
            f"re-lighting needs the sensors' tuning files but none was found for {', '.join(sensors)}: "
            "pass tuning_dir (--tuning-dir) or set relight=0"
        )
    index = {s: i for i, s in enumerate(sensors)}
    ccm, rb, enabled = [], [], []
    for sample in dataset.samples:
        tuning = tunings.get(sample.sensor)
        ccm.append(np.asarray(tuning.ccm_at(5000.0), dtype=np.float64) if tuning else np.eye(3))
        rb.append(tuning.gains_at(sample.true_temp) if tuning else (1.0, 1.0))
        enabled.append(tuning is not None)
    ccm_t = torch.tensor(np.array(ccm), dtype=torch.float64)
    return RelightTables(
        sensor=torch.tensor([index[s.sensor] for s in dataset.samples]),
        ccm=ccm_t.float(),
        ccm_inv=torch.linalg.inv(ccm_t).float(),
        rb=torch.tensor(np.array(rb), dtype=torch.float32),
        curves=torch.tensor(np.array(curves), dtype=torch.float32),
        enabled=torch.tensor(enabled),
    )


def _mired_grid() -> torch.Tensor:
    low, high = 1e6 / TEMPERATURE_RANGE[1], 1e6 / TEMPERATURE_RANGE[0]
    return torch.linspace(low, high, _RELIGHT_GRID, dtype=torch.float64)


def relight(
    image: torch.Tensor, mireds: torch.Tensor, shift: torch.Tensor, index: torch.Tensor, tables: RelightTables
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move images to new colour temperatures along their sensors' CT curves.

    Args:
        image: ``(B, H, W, 3)`` statistics.
        mireds: ``(B,)`` their true mireds (clamped to the label range).
        shift: ``(B,)`` requested change in mireds.
        index: ``(B,)`` the images' rows in ``tables``.
        tables: from :func:`relight_tables`.

    Returns:
        The re-lit images clipped to ``[0, 1]`` (as the converter clips), and their new mireds
        (rounded to the tables' grid, within 2800..7600 K; unchanged for images that cannot be re-lit).
    """
    grid = _mired_grid().to(image)
    step = grid[1] - grid[0]
    slot = ((mireds + shift - grid[0]) / step).round().long().clamp(0, len(grid) - 1)
    new_rb = tables.curves[tables.sensor[index], slot]
    gain = new_rb / tables.rb[index]
    k = torch.stack([gain[:, 0], torch.ones_like(gain[:, 0]), gain[:, 1]], dim=1)
    k = torch.where(tables.enabled[index, None], k, torch.ones_like(k))
    matrix = tables.ccm[index] @ torch.diag_embed(k) @ tables.ccm_inv[index]
    lit = torch.einsum("bij,bhwj->bhwi", matrix, image).clamp(0.0, 1.0)
    new_mireds = torch.where(tables.enabled[index], grid[slot], mireds)
    return lit, new_mireds


def geometric_augment(
    image: torch.Tensor, flip: bool, rotation: float, zoom: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random horizontal flip, rotation (fraction of a turn) and zoom of ``(B, H, W, 3)`` images.

    Resampling is bilinear with reflected borders, like Keras' ``RandomRotation``/``RandomZoom``.
    Random numbers come from ``generator`` (default: torch's global one).
    """
    batch = image.shape[0]
    x = image.permute(0, 3, 1, 2)

    def uniform() -> torch.Tensor:
        return torch.rand(batch, device=image.device, generator=generator)

    if flip:
        flipped = uniform() < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    if rotation > 0 or zoom > 0:
        angle = (uniform() * 2 - 1) * rotation * 2 * math.pi
        scale = 1 + (uniform() * 2 - 1) * zoom
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x.permute(0, 2, 3, 1)


class AWBModule(L.LightningModule):
    """Lightning wrapper: holds the (small) dataset on the training device and augments whole batches.

    Batches are index tensors into the dataset, so a ``DistributedSampler`` splits the images
    between ranks. The images are plain attributes, not buffers: checkpoints hold only the
    model, and DDP does not broadcast the dataset at every step.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: AWBDataset,
        config: TrainConfig,
        tables: RelightTables | None = None,
        monitor: str = "train_loss",
        log_file: Path | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.monitor = monitor
        self.log_file = log_file
        low, high = TEMPERATURE_RANGE
        self.data = {
            "images": torch.from_numpy(dataset.images),
            "lux": torch.from_numpy(dataset.lux),
            "mireds": 1e6 / torch.from_numpy(dataset.true_temp).clamp(low, high),
        }
        known = model_sensors(model)
        if known is not None:  # a sensor embedding: each image's index into the model's sensors
            self.data["sensor"] = torch.tensor(sensor_indices(known, [s.sensor for s in dataset.samples]))
        self.tables = tables
        self._generator: torch.Generator | None = None

    def on_train_epoch_start(self) -> None:
        self.seed_augmentation(self.current_epoch, self.global_rank)

    def seed_augmentation(self, epoch: int, rank: int) -> None:
        """Draw this epoch's augmentation from ``(seed, epoch, rank)``: ranks differ, and a
        resumed epoch repeats, whatever torch's global random state."""
        state = np.random.SeedSequence([self.config.seed, epoch, rank]).generate_state(1)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(int(state[0]))

    def _uniform(self, like: torch.Tensor) -> torch.Tensor:
        """Uniform ``[-1, 1)`` noise of ``like``'s shape from the epoch's generator."""
        return torch.rand(like.shape, device=like.device, dtype=like.dtype, generator=self._generator) * 2 - 1

    def _on_device(self) -> tuple[dict[str, torch.Tensor], RelightTables | None]:
        if self.data["images"].device != self.device:
            self.data = {name: t.to(self.device) for name, t in self.data.items()}
            if self.tables is not None:
                fields = RelightTables.__dataclass_fields__
                self.tables = RelightTables(**{n: getattr(self.tables, n).to(self.device) for n in fields})
        return self.data, self.tables

    def _batch(self, index: torch.Tensor, augment: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        data, tables = self._on_device()
        image, lux, mireds = data["images"][index], data["lux"][index], data["mireds"][index]
        if not augment:
            return image, lux, mireds
        cfg = self.config
        if cfg.relight > 0 and tables is not None:
            shift = self._uniform(mireds) * cfg.relight
            image, mireds = relight(image, mireds, shift, index, tables)
        image = image * (1 + self._uniform(image) * cfg.noise)
        lux = lux * (1 + self._uniform(lux) * cfg.lux_noise)
        image = geometric_augment(image, cfg.flip, cfg.rotation, cfg.zoom, self._generator)
        return image, lux, mireds

    def _loss(self, index: torch.Tensor, augment: bool) -> torch.Tensor:
        image, lux, mireds = self._batch(index, augment)
        sensor = self.data["sensor"][index] if "sensor" in self.data else None
        error = member_mireds(self.model, image, lux, sensor) - mireds  # (members, B)
        per_member = error.abs().mean(dim=1) if self.config.loss == "l1" else (error**2).mean(dim=1) / 1000.0
        weights = member_loss_weights(self.model)
        if weights is None:
            return per_member.mean()
        weights = weights.to(per_member)
        return (weights * per_member).sum() / weights.sum()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, augment=True)
        # sync_dist: every rank must see the same monitored value (LR schedule, early stopping).
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss = self._loss(batch, augment=False)
        self.log("val_loss", loss, on_epoch=True, batch_size=len(batch), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.config
        return configure_optimizer(
            self.model.parameters(),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            optimizer="adamw" if cfg.weight_decay > 0 else "adam",
            scheduler="plateau",
            monitor=self.monitor,
            gamma=cfg.lr_factor,
            plateau_patience=cfg.lr_patience,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["awb_config"] = getattr(self.model, "awb_config", None)


class _TextLog(Callback):
    """Appends one line per epoch (losses, learning rate) to the run's ``log.txt``; each fit starts a section."""

    def __init__(self, path: Path, header: str) -> None:
        self.path, self.header = path, header

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.path.open("a") as handle:
            handle.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {self.header}\n")

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        values = " ".join(f"{name} {float(metrics[name]):.4f}" for name in ("train_loss", "val_loss") if name in metrics)
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        with self.path.open("a") as handle:
            handle.write(f"epoch {trainer.current_epoch}: {values}" + (f" lr {lr:.3g}" if lr is not None else "") + "\n")


#: What a training run writes into its run folder (checked by :func:`isplab.engine.prepare_run_dir`).
RUN_FILES = ("checkpoints", "logs", "config.json", "log.txt")


def train_model(
    dataset: AWBDataset,
    config: TrainConfig | None = None,
    *,
    weights: np.ndarray | None = None,
    input_model: nn.Module | str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    val_dataset: AWBDataset | None = None,
    callbacks: list[Callback] | None = None,
    sensors: list[str] | None = None,
) -> nn.Module:
    """Train an AWB model on ``dataset`` and return it (CPU, eval mode).

    Args:
        dataset: training images of one target.
        config: options; default :class:`TrainConfig`.
        weights: ``(N,)`` positive integer repeat counts (the duplicates file): image ``i`` appears
            ``weights[i]`` times per epoch.
        input_model: model or ``.pt`` path to continue training from (its arch wins over ``config``'s).
        run_dir: the run folder (``config.json``, ``log.txt``, checkpoints, logs); ``None``: a
            temporary folder, deleted afterwards.
        resume: continue from ``run_dir/checkpoints/last.ckpt`` up to ``config.epochs`` in total.
        progress: show a progress bar.
        val_dataset: optional held-out images; early stopping and LR reduction then watch their loss.
        callbacks: extra Lightning callbacks.
        sensors: with ``config.sensor_embedding``, the sensors a new embedding knows (default: the
            dataset's); one without training images keeps the identity (the shared network).

    Raises:
        IsplabError: empty dataset, bad weights or loss, an input model of another target, or a
            resume without a checkpoint or from one of another model.
        isplab.engine.TrainingInterrupted: Ctrl-C; ``run_dir``'s ``last.ckpt`` holds the last finished epoch.
    """
    config = config or TrainConfig()
    if len(dataset) == 0:
        raise IsplabError("cannot train on an empty dataset")
    if config.loss not in LOSSES:
        raise IsplabError(f"unknown AWB loss {config.loss!r}: expected one of {', '.join(LOSSES)}")
    if config.epochs < 1 or config.batch_size < 1:
        raise IsplabError(f"epochs and batch_size must be at least 1, got {config.epochs} and {config.batch_size}")
    repeats = np.ones(len(dataset), dtype=np.int64) if weights is None else np.asarray(weights)
    if repeats.shape != (len(dataset),) or (repeats < 1).any() or not np.issubdtype(repeats.dtype, np.integer):
        raise IsplabError(f"weights must be {len(dataset)} positive integer repeat counts, got {repeats!r}")
    if resume and input_model is not None:
        raise IsplabError("resume continues the run's own model: do not also give an input model")
    if run_dir is None:
        if resume:
            raise IsplabError("resume needs the run folder (run_dir) that holds checkpoints/last.ckpt")
        with tempfile.TemporaryDirectory(prefix="isplab-awb-") as tmp:
            return train_model(
                dataset, config, weights=weights, input_model=input_model, run_dir=tmp,
                progress=progress, val_dataset=val_dataset, callbacks=callbacks, sensors=sensors,
            )
    run_dir = Path(run_dir)
    checkpoint = resolve_checkpoint(run_dir, resume or None)

    monitor = "val_loss" if val_dataset is not None else "train_loss"
    header = f"fit: {config.epochs} epochs" + (f", resumed from {checkpoint}" if checkpoint else "")
    trainer = build_trainer(
        run_dir,
        max_epochs=config.epochs,
        device=config.device,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        monitor=monitor,
        early_stopping_patience=config.patience,
        seed=config.seed,
        progress=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[_TextLog(run_dir / "log.txt", header), *(callbacks or [])],
    )
    model = _initial_model(dataset, config, input_model, sensors)
    if checkpoint is not None:
        _check_same_model(checkpoint, model)
    tables = relight_tables(dataset, config.tuning_dir) if config.relight > 0 else None
    val_loader = None
    data = dataset
    if val_dataset is not None:
        # Validation images are appended to the module's data (never augmented) so one module serves both.
        data = _concat(dataset, val_dataset)
        tables = tables and _pad_tables(tables, len(val_dataset))
        val_loader = DataLoader(torch.arange(len(dataset), len(data)), batch_size=256)
    module = AWBModule(model, data, config, tables, monitor)
    index = torch.from_numpy(np.repeat(np.arange(len(dataset)), repeats))
    loader = DataLoader(index, batch_size=config.batch_size, shuffle=True)
    if is_global_zero():
        (run_dir / "config.json").write_text(json.dumps(
            {**asdict(config), "target": dataset.target, "images": len(dataset), "resumed": bool(checkpoint)}, indent=2
        ))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        # Ctrl-C: last.ckpt stays at the last finished epoch (Lightning writes it at each epoch's end).
        fit_interruptible(trainer, module, loader, val_loader, resume=checkpoint, total=config.epochs, unit="epoch",
                          log_file=run_dir / "log.txt")
    return add_test_time(module.model.cpu().eval(), dataset, config)


def add_test_time(model: nn.Module, dataset: AWBDataset, config: TrainConfig) -> nn.Module:
    """``model`` with ``config``'s test-time flip averaging and calibration (:class:`CalibratedAWB`),
    the calibration fitted on ``dataset`` (the training images, each once, unaugmented);
    ``model`` itself when the config asks for neither."""
    if not (config.flip_average or config.calibrate):
        return model
    from isplab.workflows.awb.predict import dataset_sensors, predict

    wrapped = calibrated(model, flip=config.flip_average).eval()
    if config.calibrate:
        low, high = TEMPERATURE_RANGE
        predicted = 1e6 / predict(wrapped, dataset.images, dataset.lux, sensors=dataset_sensors(dataset))
        scale, offset = fit_calibration(predicted, 1e6 / np.clip(dataset.true_temp.astype(np.float64), low, high))
        wrapped.scale.fill_(scale)
        wrapped.offset.fill_(offset)
    return wrapped


def _check_same_model(checkpoint: Path, model: nn.Module) -> None:
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception:
        raise IsplabError(f"cannot resume: {checkpoint} is not a readable training checkpoint") from None
    config = saved.get("awb_config") if isinstance(saved, dict) else None
    if config is None:
        raise IsplabError(f"cannot resume: {checkpoint} is not an AWB training checkpoint")
    if config != model.awb_config:
        raise IsplabError(
            f"cannot resume from {checkpoint}: it was trained as {config} but the options give {model.awb_config}"
        )


def sensor_indices(known: list[str], names: list[str]) -> np.ndarray:
    """``(N,)`` indices of the images' sensors ``names`` in a joint model's sensor list ``known``.

    Raises:
        IsplabError: a sensor the model does not know, naming the ones it does.
    """
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise IsplabError(
            f"unknown sensor {', '.join(unknown)}: this AWB model was trained jointly on {', '.join(known)}"
        )
    position = {name: i for i, name in enumerate(known)}
    return np.array([position[name] for name in names], dtype=np.int64)


def _initial_model(
    dataset: AWBDataset, config: TrainConfig, input_model: nn.Module | str | Path | None, sensors: list[str] | None = None
) -> nn.Module:
    target = dataset.target
    if input_model is None:
        model = build_awb_model(target, config.arch, ensemble=config.ensemble, **config.arch_options)
    else:
        model = copy.deepcopy(input_model) if isinstance(input_model, nn.Module) else load_awb_model(input_model)
        model = base_net(model)  # training continues the network; test-time parts are redone from the config
        model_target = getattr(model, "awb_config", {}).get("target")
        if model_target != target:
            raise IsplabError(f"input model is for target {model_target!r} but the dataset is {target!r}")
    if config.sensor_embedding and model_sensors(model) is None:
        present = {s.sensor for s in dataset.samples}
        if sensors is not None and not present <= set(sensors):
            raise IsplabError(f"sensors {sorted(present - set(sensors))} have training images but are not in {list(sensors)}")
        model = with_sensor_embedding(model, list(sensors) if sensors is not None else sorted(present))
    return model.train()


def _concat(a: AWBDataset, b: AWBDataset) -> AWBDataset:
    if a.target != b.target:
        raise IsplabError(f"validation set is for target {b.target!r} but the training set is {a.target!r}")
    return AWBDataset(
        samples=a.samples + b.samples,
        images=np.concatenate([a.images, b.images]),
        lux=np.concatenate([a.lux, b.lux]),
        true_temp=np.concatenate([a.true_temp, b.true_temp]),
        camera_temp=np.concatenate([a.camera_temp, b.camera_temp]),
        target=a.target,
    )


def _pad_tables(tables: RelightTables, count: int) -> RelightTables:
    """Extend per-image tables with ``count`` never-re-lit rows (validation images are not augmented)."""
    def pad(t: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, value.expand(count, *t.shape[1:])])

    eye = torch.eye(3)
    return RelightTables(
        sensor=pad(tables.sensor, torch.tensor(0)),
        ccm=pad(tables.ccm, eye),
        ccm_inv=pad(tables.ccm_inv, eye),
        rb=pad(tables.rb, torch.ones(2)),
        curves=tables.curves,
        enabled=pad(tables.enabled, torch.tensor(False)),
    )
