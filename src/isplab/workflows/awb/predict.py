"""One inference function for AWB models, used by training, evaluation, verification and export.

:func:`predict` runs a PyTorch model (an ``nn.Module`` or an isplab ``.pt``) or a libcamera-contract
``.tflite`` (a file or a loaded :class:`~isplab.export.TFLiteRunner`) over ``(N, H, W, 3)`` zone
statistics and ``(N,)`` lux, and returns ``(N,)`` kelvin as float64. :func:`load_predictor` loads a
model file once, for many calls::

    predictor = load_predictor("model.tflite")   # or model.pt
    kelvin = predictor(images, lux)              # predictor.target is "pisp" or "vc4"
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.export import TFLiteRunner
from isplab.workflows.awb.constants import TARGET_SIZES, describe_size
from isplab.workflows.awb.model import load_awb_model, model_target

__all__ = ["Predictor", "dataset_sensors", "load_predictor", "predict"]

ModelLike = nn.Module | TFLiteRunner | str | PathLike


class Predictor:
    """A loaded AWB model as a function ``(images (N, H, W, 3), lux (N,)) -> (N,)`` kelvin (float64).

    Attributes:
        target: the target whose zone grid the model takes (``"pisp"``/``"vc4"``).
        source: the model file (``None`` for a model given as an object).
    """

    def __init__(
        self, function: Callable[[np.ndarray, np.ndarray], np.ndarray], target: str, source: Path | None
    ) -> None:
        self._function = function
        self.target = target
        self.source = source

    def __call__(self, images: np.ndarray, lux: np.ndarray, sensors: list[str] | None = None) -> np.ndarray:
        """``sensors``: the images' sensor names, for a PyTorch model with a sensor embedding (see :func:`predict`)."""
        images, lux = _arrays(images, lux)
        height, width = TARGET_SIZES[self.target]
        if images.shape[1:] != (height, width, 3):
            raise IsplabError(
                f"model '{self.source}' is for {self.target} ({width} wide x {height} high zones), "
                f"got images of shape {images.shape[1:]}"
            )
        return np.asarray(self._function(images, lux, sensors), dtype=np.float64)


def load_predictor(model: ModelLike | Predictor) -> Predictor:
    """A :class:`Predictor` for a ``.tflite`` (run with LiteRT), an isplab ``.pt`` AWB model (run with
    PyTorch), a loaded runner, or a model built by :func:`isplab.workflows.awb.model.build_awb_model`.

    Raises:
        IsplabError: missing file, a file that is not an AWB model, or a ``.tflite`` whose image
            input is not ``[1, H, W, 3]`` of a target's zone grid.
    """
    if isinstance(model, Predictor):
        return model
    if isinstance(model, nn.Module):
        return Predictor(_torch_function(model), model_target(model), None)
    if isinstance(model, TFLiteRunner):
        runner = model
    else:
        path = Path(model)
        if path.suffix.lower() != ".tflite":
            net = load_awb_model(path)
            return Predictor(_torch_function(net), model_target(net), path)
        runner = TFLiteRunner(path)
    shape = tuple(int(n) for n in runner.input_details[0]["shape"])
    targets = [t for t, (h, w) in TARGET_SIZES.items() if shape == (1, h, w, 3)]
    if not targets:
        sizes = ", ".join(f"{t} [1, {h}, {w}, 3]" for t, (h, w) in TARGET_SIZES.items())
        raise IsplabError(f"TFLite model '{runner.path}' has image input shape {list(shape)}: expected {sizes}")
    return Predictor(lambda images, lux, sensors=None: _predict_tflite(runner, images, lux), targets[0], runner.path)


def _torch_function(net: nn.Module) -> Callable[..., np.ndarray]:
    return lambda images, lux, sensors=None: _predict_torch(net, images, lux, 256, _sensor_indices(net, sensors))


def dataset_sensors(dataset) -> list[str]:
    """The sensor of each image of an :class:`~isplab.workflows.awb.dataset.AWBDataset` (from its file name)."""
    return [sample.sensor for sample in dataset.samples]


def predict(
    model: ModelLike | Predictor,
    images: np.ndarray,
    lux: np.ndarray,
    *,
    sensors: list[str] | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Predicted colour temperatures of ``(N, H, W, 3)`` statistics in ``[0, 1]`` and ``(N,)`` lux.

    Args:
        model: an AWB ``nn.Module`` (any ``forward(image, lux) -> kelvin``; run in eval mode on its
            own device, then restored), a loaded :class:`~isplab.export.TFLiteRunner`, a
            :class:`Predictor`, or a ``.pt``/``.tflite`` file.
        sensors: ``(N,)`` the images' sensor names, used by a model trained with a sensor
            embedding (:class:`isplab.models.awb.SensorAWB`) and ignored by others; such a model
            without them predicts for its selected sensor (:func:`isplab.models.awb.select_sensor`).
        batch_size: images per PyTorch forward pass (TFLite models run one image at a time, as
            libcamera does).

    Returns:
        ``(N,)`` float64 kelvin.

    Raises:
        IsplabError: the images do not fit the model's input, ``images`` and ``lux`` differ in
            length, the model file cannot be loaded, or a jointly trained model meets a sensor it
            does not know (or no sensor at all), naming the sensors it knows.
    """
    images, lux = _arrays(images, lux)
    if sensors is not None and len(sensors) != len(images):
        raise IsplabError(f"got {len(images)} images but {len(sensors)} sensor names")
    if isinstance(model, nn.Module):
        return _predict_torch(model, images, lux, batch_size, _sensor_indices(model, sensors))
    if isinstance(model, TFLiteRunner):
        return _predict_tflite(model, images, lux)
    return load_predictor(model)(images, lux, sensors)


def _sensor_indices(model: nn.Module, sensors: list[str] | None) -> np.ndarray | None:
    from isplab.models.awb import model_sensors

    known = model_sensors(model)
    if known is None or sensors is None:
        return None
    from isplab.workflows.awb.train import sensor_indices

    return sensor_indices(known, list(sensors))


def _arrays(images: np.ndarray, lux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, dtype=np.float32)
    lux = np.asarray(lux, dtype=np.float32).ravel()
    if images.ndim != 4 or images.shape[-1] != 3:
        raise IsplabError(f"expected (N, H, W, 3) zone statistics, got an array of shape {images.shape}")
    if len(images) != len(lux):
        raise IsplabError(f"got {len(images)} images but {len(lux)} lux values")
    return images, lux


@torch.no_grad()
def _predict_torch(
    model: nn.Module, images: np.ndarray, lux: np.ndarray, batch_size: int = 256, sensor: np.ndarray | None = None
) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        out = []
        for start in range(0, len(images), batch_size):
            image = torch.as_tensor(images[start : start + batch_size], device=device)
            light = torch.as_tensor(lux[start : start + batch_size], device=device)
            extra = {} if sensor is None else {"sensor": torch.as_tensor(sensor[start : start + batch_size], device=device)}
            out.append(model(image, light, **extra).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def _predict_tflite(runner: TFLiteRunner, images: np.ndarray, lux: np.ndarray) -> np.ndarray:
    expected = tuple(int(n) for n in runner.input_details[0]["shape"])
    if expected != (1, *images.shape[1:]):
        raise IsplabError(
            f"TFLite model '{runner.path}' takes images of shape {list(expected)} ({describe_size(expected[1:3])}), "
            f"but the images are {list(images.shape[1:])} ({describe_size(images.shape[1:3])})"
        )
    return np.array([float(runner([image[None], lux[i : i + 1]])[0].item()) for i, image in enumerate(images)])
