"""Options of AWB training: one dataclass shared by ``train``, ``auto-train`` and ``evaluate --cv``.

Kept free of torch imports so the command line can show its defaults without loading them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from isplab.errors import IsplabError

__all__ = ["LOSSES", "TrainConfig", "load_train_config", "reference_config", "train_config_from_dict"]

LOSSES = ("mse", "l1")


@dataclass
class TrainConfig:
    """Training options (names follow the reference ``train.py`` where it has them).

    The defaults: a ``blend`` of 3 ``chroma`` networks and 3 MLPs on colour-constancy features
    (:class:`isplab.models.awb.BlendAWBNet`), an L1 loss (mean mired error), up to 240 epochs of batch 64, Adam at
    2e-3 halved after 10 epochs without improvement, early stopping after 30, multiplicative
    noise and horizontal flips but no rotation, zoom or re-lighting.
    :func:`reference_config` gives the reference recipe.

    Attributes:
        epochs: maximum epochs.
        batch_size: images per step.
        lr: Adam learning rate.
        patience: early stopping after this many epochs without improvement of the monitored
            loss (training loss, or validation loss when a validation set is given); ``None`` never.
        lr_patience, lr_factor: multiply the LR by ``lr_factor`` after ``lr_patience`` epochs without improvement.
        weight_decay: AdamW weight decay (0: plain Adam).
        arch, ensemble, arch_options: the model, see :func:`isplab.workflows.awb.model.build_awb_model`.
        loss: ``"mse"`` (mean squared mired error / 1000, the reference) or ``"l1"`` (mean mired error).
        noise, lux_noise: half-widths of the multiplicative uniform noise on image and lux.
        flip: random horizontal flips.
        rotation: maximum rotation as a fraction of a full turn (Keras ``RandomRotation``).
        zoom: maximum relative zoom in or out.
        relight: half-width in mireds of the re-lighting shift (0: off); labels stay in 2800..7600 K.
        flip_average: the trained model averages its prediction with that of the mirrored statistics
            (:class:`isplab.models.awb.CalibratedAWB`, exported with the model).
        calibrate: the trained model ends with an affine map of its mireds fitted by least squares
            on its own training images (:func:`isplab.models.awb.fit_calibration`), exported with it.
        sensor_embedding: train one network jointly on all sensors with a learned vector per sensor
            (:class:`isplab.models.awb.SensorAWB`; the sensors come from the file names and are
            recorded in the model); export one TFLite per sensor (``awb export --sensor S``).
        tuning_dir: extra folder searched for the sensors' tuning files (re-lighting).
        seed: seed of initialisation and augmentation (whose random numbers are drawn from
            ``(seed, epoch, rank)``).
        device: ``"cpu"``, ``"cuda"``, ``"auto"``... (:func:`isplab.engine.resolve_accelerator`).
        devices, strategy, num_nodes: Lightning's multi-device settings (e.g. ``devices=2,
            strategy="ddp"``); each rank then trains on its own share of every epoch's images.
    """

    epochs: int = 240  # 150 -> 240: grouped CV mean -0.36 mireds on pisp and vc4 (benchmarks/awb_rpi.py)
    batch_size: int = 64
    lr: float = 2e-3
    patience: int | None = 30
    lr_patience: int = 10
    lr_factor: float = 0.5
    weight_decay: float = 0.0
    arch: str = "blend"  # chroma -> blend: grouped CV mean -0.8 (vc4) and -0.9 (pisp) mireds (benchmarks/awb_rpi.py)
    ensemble: int = 3
    arch_options: dict[str, Any] = field(default_factory=dict)
    loss: str = "l1"  # mse -> l1 with the blend: grouped CV worst -5 (vc4) and -9 (pisp) mireds (benchmarks/awb_rpi.py)
    noise: float = 0.1
    lux_noise: float = 0.2
    flip: bool = True
    rotation: float = 0.0
    zoom: float = 0.0
    relight: float = 0.0
    flip_average: bool = False
    calibrate: bool = False
    sensor_embedding: bool = False
    tuning_dir: str | None = None
    seed: int = 0
    device: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    num_nodes: int = 1


def reference_config(**overrides: Any) -> TrainConfig:
    """The reference recipe: reference network, batch 8, Adam 1e-3, up to 200 epochs, no re-lighting."""
    settings: dict[str, Any] = dict(
        arch="reference", ensemble=1, epochs=200, batch_size=8, lr=1e-3, rotation=0.1, zoom=0.1, relight=0.0
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def train_config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from a JSON-like dict (:func:`dataclasses.asdict` of one, or part of it).

    Missing keys take the defaults; ``filters`` lists in ``arch_options`` stay lists (the network
    builder makes them tuples).

    Raises:
        IsplabError: not a dict, or keys :class:`TrainConfig` does not have (naming ``source``).
    """
    if not isinstance(values, dict):
        raise IsplabError(f"{source}: expected a JSON object of training options, got {type(values).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise IsplabError(f"{source}: unknown training options {', '.join(unknown)} (expected some of {', '.join(sorted(known))})")
    if not isinstance(values.get("arch_options", {}), dict):
        raise IsplabError(f"{source}: arch_options must be a JSON object")
    return TrainConfig(**values)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` JSON file (e.g. ``isplab awb search``'s ``best_config.json``).

    Raises:
        IsplabError: missing file, not JSON, or unknown keys, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise IsplabError(f"training config {path} not found")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IsplabError(f"training config {path} is not JSON: {e}") from None
    return train_config_from_dict(values, str(path))


def config_json(config: TrainConfig) -> str:
    """``config`` as the indented JSON :func:`load_train_config` reads."""
    return json.dumps(asdict(config), indent=2)
