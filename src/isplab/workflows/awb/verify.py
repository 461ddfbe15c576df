"""Check an AWB model on individual images: predicted vs labelled vs camera temperature.

The counterpart of the seed's ``verify.py``. Inputs are either statistics PNGs named
``<user>,<sensor>,<id>,<true_temp>,<lux>,<camera_temp>.png`` or annotated DNGs, which go through
the same conversion as ``isplab awb convert``. The model is a ``.pt`` (PyTorch) or a ``.tflite``
(libcamera contract); :func:`isplab.workflows.awb.predict.load_predictor` hides the difference.
Typical use::

    for row in verify(["a.dng", "b.png"], "model.tflite", tuning_dir="tunings/pisp"):
        print(row.path.name, row.predicted_temp, row.true_temp, row.failure)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from isplab.errors import IsplabError
from isplab.io import read_image
from isplab.workflows.awb.constants import TARGET_SIZES
from isplab.workflows.awb.convert import convert_dng
from isplab.workflows.awb.dataset import mired_error, parse_stats_name
from isplab.workflows.awb.predict import Predictor, load_predictor

__all__ = ["Predictor", "VerifyRow", "load_predictor", "verify"]


@dataclass(frozen=True)
class VerifyRow:
    """One file's result; a file that could not be processed has only ``path`` and ``failure``."""

    path: Path
    predicted_temp: float | None = None
    true_temp: float | None = None
    camera_temp: float | None = None
    lux: float | None = None
    failure: str | None = None

    @property
    def error_mired(self) -> float | None:
        """The model's error in mireds (true temperature clamped as in training)."""
        return None if self.failure else float(mired_error(self.predicted_temp, self.true_temp))

    @property
    def camera_error_mired(self) -> float | None:
        """The camera estimate's error in mireds."""
        return None if self.failure else float(mired_error(self.camera_temp, self.true_temp))


def verify(
    paths: Sequence[str | PathLike[str]],
    model: str | PathLike[str] | Predictor,
    *,
    target: str | None = None,
    tuning_dir: str | PathLike[str] | None = None,
) -> list[VerifyRow]:
    """Predict the colour temperature of each file and compare it with its labels.

    Args:
        paths: statistics ``.png`` files and/or annotated ``.dng`` files.
        model: a model file (see :func:`load_predictor`) or a loaded :class:`Predictor`.
        target: ``"pisp"``/``"vc4"``; defaults to the model's. DNGs are converted for it.
        tuning_dir: extra folder searched for the sensors' tuning files (DNGs only).

    Returns:
        One row per path, in order. A file that cannot be read, parsed or converted gives a row
        with ``failure`` set to the reason; the other files are still processed.

    Raises:
        IsplabError: the model cannot be loaded, or ``target`` is not the model's.
    """
    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    if target is None:
        target = predictor.target
    elif target != predictor.target:
        raise IsplabError(f"model '{predictor.source}' is for {predictor.target}, not for the requested target {target}")
    rows = []
    for path in map(Path, paths):
        try:
            image, true_temp, lux, camera_temp, sensor = _load(path, target, tuning_dir)
            # The sensor (from the file name) picks a jointly trained model's sensor vector.
            predicted = float(predictor(image[None], np.array([lux]), [sensor])[0])
        except IsplabError as e:
            rows.append(VerifyRow(path, failure=str(e)))
            continue
        rows.append(VerifyRow(path, predicted, true_temp, camera_temp, lux))
    return rows


def _load(
    path: Path, target: str, tuning_dir: str | PathLike[str] | None
) -> tuple[np.ndarray, float, float, float, str]:
    """``(image (H, W, 3) float32 in [0, 1], true_temp, lux, camera_temp, sensor)`` of a PNG or DNG."""
    if not path.is_file():
        raise IsplabError(f"'{path}' not found" if not path.exists() else f"'{path}' is not a file")
    suffix = path.suffix.lower()
    if suffix == ".dng":
        stats, true_temp, lux, camera_temp, sensor = convert_dng(path, target, tuning_dir=tuning_dir)
        return (np.asarray(stats, dtype=np.float32) / 65535.0, float(true_temp), float(lux), float(camera_temp),
                sensor)
    if suffix != ".png":
        raise IsplabError(f"'{path}': expected a statistics .png or an annotated .dng, not '{path.suffix}'")
    sample = parse_stats_name(path)
    image = read_image(path)
    height, width = TARGET_SIZES[target]
    if image.shape != (height, width, 3) or image.dtype != np.uint16:
        raise IsplabError(
            f"'{path}' is {image.dtype} of shape {image.shape}: expected a 16-bit RGB PNG, "
            f"{width} wide x {height} high for {target}"
        )
    return image.astype(np.float32) / 65535.0, sample.true_temp, sample.lux, sample.camera_temp, sample.sensor
