"""Training: the detector on normal-light images, then GenISP through that detector, frozen.

``isplab genisp detector train DATASET OUT_DIR`` (:func:`train_detector`): a torchvision detector
(default: isplab's small ``retinanet_resnet18_fpn``) on the normal-light sRGB renders, the stand-in
for a COCO-pretrained detector; AdamW with a cosine schedule; writes ``OUT_DIR/detector.pt``.

``isplab genisp train DATASET MODEL_DIR --detector PATH`` (:func:`train_genisp`): GenISP on one
camera's raws, the loss being the frozen detector's own training loss (focal + box regression for
RetinaNet, :func:`~isplab.workflows.genisp.detector.detection_loss`), with geometric and
photometric augmentation that moves the boxes with the image
(:class:`~isplab.workflows.genisp.data.Augment`). As the paper: Adam at 1e-2, the learning rate
times 0.1 at epochs 5 and 10, 15 epochs, batch 8. Validation: COCO AP (``val_ap``, a fresh metric
each validation) on the validation split; ``checkpoints/best.ckpt`` is the best by it.

Both write the run folder of ``docs/conventions.md`` §5 through the engine (``--resume``, DDP with
Lightning's ``DistributedSampler``, Ctrl-C keeps ``last.ckpt``).

``DATASET`` is a folder made by ``isplab genisp synth`` (``annotations/<source>_<split>.json``,
file names relative to the folder) or a COCO JSON file whose images lie beside
it (``image_dir`` elsewhere); a separate validation file is ``val_annotations``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from isplab.engine import (
    SaveOnInterrupt,
    build_trainer,
    configure_optimizer,
    fit_interruptible,
    prepare_run_dir,
)
from isplab.engine.trainer import LAST_CHECKPOINT, resolve_accelerator
from isplab.errors import IsplabError, check_at_least_one
from isplab.workflows.genisp.data import (
    Augment,
    CocoSet,
    DetectionDataset,
    detection_collate,
    load_coco,
)
from isplab.workflows.genisp.detector import (
    build_detector,
    detection_loss,
    freeze,
    load_detector,
    save_detector,
)
from isplab.workflows.genisp.evaluate import new_metric
from isplab.workflows.genisp.predict import apply_genisp

MONITOR = "val_ap"
GENISP_OUTPUTS = ("model.pt", "config.json", "log.txt", "checkpoints", "logs")
DETECTOR_OUTPUTS = ("detector.pt", "config.json", "log.txt", "checkpoints", "logs")
SMALL_DETECTOR = "retinanet_resnet18_fpn"


# --- data --------------------------------------------------------------------------------------


def open_split(dataset: str | Path, source: str, split: str, *, image_dir: str | Path | None = None,
               annotations: str | Path | None = None) -> CocoSet:
    """A split of ``dataset``: ``source`` is ``"normal"`` or a camera name (``cam-a``).

    A synth folder gives ``annotations/<source>_<split>.json``, whose file names (``normal/...``,
    ``raw/<source>/...``) are relative to the folder; a COCO JSON file is used as it is (``annotations`` overrides it, e.g. a
    separate validation file), its images in ``image_dir`` (default: the JSON's folder).

    Raises:
        IsplabError: missing files (naming them) or bad annotations.
    """
    dataset = Path(dataset)
    if annotations is not None or dataset.suffix.lower() == ".json":
        ann = Path(annotations) if annotations is not None else dataset
        return load_coco(ann, Path(image_dir) if image_dir is not None else ann.parent)
    if not dataset.is_dir():
        raise IsplabError(f"dataset {dataset} does not exist: expected a folder from isplab genisp synth or a COCO JSON file")
    ann = dataset / "annotations" / f"{source}_{split}.json"
    if not ann.is_file():
        have = sorted(p.stem for p in (dataset / "annotations").glob("*.json"))
        raise IsplabError(f"{ann} does not exist: expected {source}_{split}.json in {dataset / 'annotations'} (it holds {', '.join(have) or 'nothing'})")
    return load_coco(ann, image_dir if image_dir is not None else dataset)  # file names are relative to the folder


def num_classes(coco: CocoSet) -> int:
    """Detector classes for ``coco``: labels are its category ids, so ``max id + 1``."""
    return max(coco.categories) + 1


def _loader(dataset, batch_size: int, workers: int, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size, shuffle=shuffle, collate_fn=detection_collate, num_workers=workers,
                      persistent_workers=workers > 0, drop_last=False)


class _DetectionModuleBase(L.LightningModule):
    """Validation by COCO AP (fresh numbers each validation) and a line per epoch in ``log.txt``."""

    log_file: Path | None = None

    def on_validation_epoch_start(self) -> None:
        self.val_map.reset()

    def _validate(self, images, targets) -> None:
        detections = self.detect(images)
        self.val_map.update([{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections],
                            [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_map.reset()
            return
        result = self.val_map.compute()
        self.log(MONITOR, result["map"].float().to(self.device), prog_bar=True, sync_dist=True)
        self.log("val_ap50", result["map_50"].float().to(self.device), sync_dist=True)
        if self.log_file is None or not self.trainer.is_global_zero:
            return
        m = self.trainer.callback_metrics
        values = " ".join(f"{k} {float(m[k]):.4f}" for k in ("train_loss", MONITOR, "val_ap50") if k in m)
        with self.log_file.open("a") as handle:
            handle.write(f"epoch {self.current_epoch} step {self.global_step}: {values}\n")


# --- the detector ------------------------------------------------------------------------------


@dataclass
class DetectorTrainConfig:
    """Options of :func:`train_detector` (one dataclass, ``docs/conventions.md`` §7)."""

    detector: str = SMALL_DETECTOR
    weights: str | None = None
    short: int = 800
    long: int = 1333
    batch_size: int = 8
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    workers: int = 0
    image_dir: str | None = None
    val_annotations: str | None = None


class DetectorModule(_DetectionModuleBase):
    def __init__(self, detector: torch.nn.Module, config: DetectorTrainConfig, log_file: Path | None = None) -> None:
        super().__init__()
        self.detector, self.config, self.log_file = detector, config, log_file
        self.val_map = new_metric()

    def detect(self, images):
        return self.detector(list(images))

    def training_step(self, batch, batch_idx):
        images, targets = batch
        self.detector.train()
        loss, _ = detection_loss(self.detector, images, targets)
        self.log("train_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx):
        self._validate(*batch)

    def configure_optimizers(self):
        return configure_optimizer(self.detector.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay,
                                   optimizer="adamw", scheduler="cosine", max_epochs=self.config.epochs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["detector_config"] = getattr(self.detector, "detector_config", None)


def _check_common(config) -> None:
    check_at_least_one(config, ("epochs", "batch_size", "short", "long"))
    if config.short is not None and config.long is not None and config.long < config.short:
        raise IsplabError(f"long side {config.long} is shorter than the short side {config.short}")


def train_detector(
    dataset: str | Path,
    out_dir: str | Path,
    config: DetectorTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
) -> Path:
    """Train ``config.detector`` on the normal-light renders of ``dataset`` into ``out_dir``.

    Returns ``out_dir/detector.pt`` (:func:`~isplab.workflows.genisp.detector.load_detector` reads it).

    Raises:
        IsplabError: bad options, an existing run without ``resume``/``overwrite``, data problems.
    """
    _check_common(config)
    out_dir = Path(out_dir)
    run = prepare_run_dir(out_dir, DETECTOR_OUTPUTS, overwrite=overwrite, resume=resume, what="detector folder")
    train_set = open_split(dataset, "normal", "train", image_dir=config.image_dir)
    val_set = None
    if config.val_annotations or Path(dataset).is_dir():
        try:
            val_set = open_split(dataset, "normal", "val", image_dir=config.image_dir, annotations=config.val_annotations)
        except IsplabError:
            if config.val_annotations:
                raise
    detector_config = {"name": config.detector, "num_classes": num_classes(train_set), "min_size": config.short, "max_size": config.long}
    build_detector(**detector_config, weights=config.weights)  # checks the name and weights before any work
    resolve_accelerator(config.device)
    run.clear()
    trainer = build_trainer(
        out_dir, max_epochs=config.epochs, device=config.device, devices=config.devices, strategy=config.strategy,
        num_nodes=config.num_nodes, monitor=MONITOR if val_set else None, mode="max", seed=config.seed, progress=progress,
        log_every_n_steps=1, num_sanity_val_steps=0,
        callbacks=[SaveOnInterrupt(out_dir / "checkpoints" / LAST_CHECKPOINT), *callbacks],
    )
    detector = build_detector(**detector_config, weights=config.weights)  # after seeding: reproducible init
    detector.detector_config = detector_config
    run.start({**asdict(config), "dataset": str(dataset), "detector_config": detector_config},
              new=f"{config.detector}, {config.epochs} epochs", resumed=f"{config.detector}, {config.epochs} epochs")
    module = DetectorModule(detector, config, run.log_file)
    train_data = DetectionDataset(train_set, short=config.short, long=config.long, augment=config.augment, seed=config.seed,
                                  kind="rgb", augmentation=Augment(gain=(0.8, 1.25), noise=0.02))
    val_loader = None
    if val_set is not None:
        val_loader = _loader(DetectionDataset(val_set, short=config.short, long=config.long, kind="rgb"), config.batch_size, config.workers, False)
    fit_interruptible(trainer, module, _loader(train_data, config.batch_size, config.workers, True), val_loader,
                      resume=run.checkpoint, total=config.epochs, unit="epoch", log_file=run.log_file)
    if trainer.is_global_zero:
        save_detector(detector, out_dir / "detector.pt", detector_config)
        with run.log_file.open("a") as handle:
            handle.write(f"finished at step {trainer.global_step}: detector.pt written\n")
    return out_dir / "detector.pt"


# --- GenISP ------------------------------------------------------------------------------------


@dataclass
class GenISPTrainConfig:
    """Options of :func:`train_genisp`; the defaults are the paper's schedule."""

    camera: str = "cam-a"
    short: int | None = None  # None: the detector's min_size
    long: int | None = None  # None: the detector's max_size
    batch_size: int = 8
    epochs: int = 15
    lr: float = 1e-2
    milestones: list[int] = field(default_factory=lambda: [5, 10])
    gamma: float = 0.1
    augment: bool = True
    genisp: dict = field(default_factory=dict)
    tile: int = 0
    seed: int = 0
    device: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    workers: int = 0
    image_dir: str | None = None
    val_annotations: str | None = None
    limit_train_images: int | None = None
    #: With ``detector_weights`` (``"DEFAULT"``: torchvision's, downloaded; or a torchvision state-dict
    #: file), the frozen detector is ``detector_name`` built with those weights instead of a detector file.
    detector_name: str = "retinanet_resnet50_fpn"
    detector_weights: str | None = None
    detector_classes: int | None = 91


class GenISPModule(_DetectionModuleBase):
    """GenISP in front of the frozen detector; only GenISP's parameters are optimised."""

    def __init__(self, model: torch.nn.Module, detector: torch.nn.Module, config: GenISPTrainConfig, log_file: Path | None = None) -> None:
        super().__init__()
        self.model, self.config, self.log_file = model, config, log_file
        self.detector = freeze(detector)
        self.val_map = new_metric()

    def forward(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [apply_genisp(self.model, image, tile=self.config.tile) for image in images]

    def detect(self, images):
        return _eval_detect(self.detector, self(images))

    def training_step(self, batch, batch_idx):
        images, targets = batch
        loss, terms = detection_loss(self.detector, self(images), targets)
        self.log("train_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(images))
        for name, value in terms.items():
            self.log(f"train_{name}", value, sync_dist=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx):
        self._validate(*batch)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(self.config.milestones), gamma=self.config.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["genisp_config"] = getattr(self.model, "genisp_config", None)


def _eval_detect(detector: torch.nn.Module, images: list[torch.Tensor]) -> list[dict]:
    was = detector.training
    detector.eval()
    try:
        return detector(images)
    finally:
        detector.train(was)


def _frozen_detector(detector_path: str | Path | None, config: GenISPTrainConfig) -> torch.nn.Module:
    """The detector file of ``detector_path``, or ``config.detector_name`` with ``config.detector_weights``."""
    if config.detector_weights is None:
        if detector_path is None:
            raise IsplabError("GenISP needs a frozen detector: a detector file, or a detector name with weights (DEFAULT or a state-dict file)")
        return load_detector(detector_path)
    if detector_path is not None:
        raise IsplabError("give either a detector file or detector weights, not both")
    default = str(config.detector_weights).upper() == "DEFAULT"
    short, long = config.short or 800, config.long or 1333
    detector = build_detector(config.detector_name, num_classes=None if default else config.detector_classes,
                              weights=config.detector_weights, min_size=short, max_size=max(short, long))
    classes = 91 if default else config.detector_classes  # torchvision's COCO weights: 91 category ids
    detector.detector_config = {"name": config.detector_name, "num_classes": int(classes), "min_size": short, "max_size": max(short, long)}
    return freeze(detector)


def train_genisp(
    dataset: str | Path,
    model_dir: str | Path,
    detector_path: str | Path | None,
    config: GenISPTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
) -> Path:
    """Train GenISP on ``config.camera``'s raws of ``dataset`` through the frozen detector of
    ``detector_path`` (a file of ``isplab genisp detector train``; ``None`` with
    ``config.detector_weights``: a torchvision detector with those weights) into ``model_dir``.

    Returns ``model_dir/model.pt`` (:func:`isplab.models.genisp.load_genisp` reads it).

    Raises:
        IsplabError: bad options, an existing run without ``resume``/``overwrite``, data problems,
            an unusable detector file, a resume checkpoint of another GenISP configuration.
    """
    from isplab.models.genisp import genisp, save_genisp

    _check_common(config)
    model_dir = Path(model_dir)
    run = prepare_run_dir(model_dir, GENISP_OUTPUTS, overwrite=overwrite, resume=resume)
    detector = _frozen_detector(detector_path, config)
    det_config = detector.detector_config
    short = config.short or int(det_config["min_size"])
    long = config.long or max(short, int(det_config["max_size"]))
    train_set = open_split(dataset, config.camera, "train", image_dir=config.image_dir)
    if config.limit_train_images:
        train_set.images = train_set.images[: config.limit_train_images]
    if num_classes(train_set) > int(det_config["num_classes"]):
        raise IsplabError(f"{detector_path or config.detector_weights} detects {det_config['num_classes'] - 1} classes but {train_set.ann_path} uses category ids up to {max(train_set.categories)}")
    val_set = None
    if config.val_annotations or Path(dataset).is_dir():
        try:
            val_set = open_split(dataset, config.camera, "val", image_dir=config.image_dir, annotations=config.val_annotations)
        except IsplabError:
            if config.val_annotations:
                raise
    genisp(**config.genisp)  # checks the options
    checkpoint = run.checkpoint
    if checkpoint is not None:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get("genisp_config")
        if saved is not None and saved != genisp(**config.genisp).genisp_config:
            raise IsplabError(f"cannot resume from {checkpoint}: it was trained as {saved} but the options give {genisp(**config.genisp).genisp_config}")
    resolve_accelerator(config.device)
    run.clear()
    trainer = build_trainer(
        model_dir, max_epochs=config.epochs, device=config.device, devices=config.devices, strategy=config.strategy,
        num_nodes=config.num_nodes, monitor=MONITOR if val_set else None, mode="max", seed=config.seed, progress=progress,
        log_every_n_steps=1, num_sanity_val_steps=0,
        callbacks=[SaveOnInterrupt(model_dir / "checkpoints" / LAST_CHECKPOINT), *callbacks],
    )
    model = genisp(**config.genisp)  # after seeding: reproducible init
    options = {**asdict(config), "short": short, "long": long, "dataset": str(dataset), "detector": str(detector_path or config.detector_weights),
               "detector_config": det_config}
    run.start(options, new=f"GenISP on {config.camera}, {config.epochs} epochs", resumed=f"GenISP on {config.camera}, {config.epochs} epochs",
              details=f"frozen detector {det_config['name']} from {detector_path or config.detector_weights}\n")
    module = GenISPModule(model, detector, config, run.log_file)
    train_data = DetectionDataset(train_set, short=short, long=long, augment=config.augment, seed=config.seed, kind="raw")
    val_loader = None
    if val_set is not None:
        val_loader = _loader(DetectionDataset(val_set, short=short, long=long, kind="raw"), config.batch_size, config.workers, False)
    fit_interruptible(trainer, module, _loader(train_data, config.batch_size, config.workers, True), val_loader,
                      resume=checkpoint, total=config.epochs, unit="epoch", log_file=run.log_file)
    if trainer.is_global_zero:
        save_genisp(model, model_dir / "model.pt")
        with run.log_file.open("a") as handle:
            handle.write(f"finished at step {trainer.global_step}: model.pt written\n")
    return model_dir / "model.pt"
