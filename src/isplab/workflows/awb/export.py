"""Export an AWB model to the TFLite contract libcamera's ``rpi.nn.awb`` loads.

Contract (``../shared/docs/awb-libcamera.md``): input 0 float32 ``[1, H, W, 3]`` zone statistics,
input 1 float32 ``[1]`` lux, output 0 float32 ``[1]`` colour temperature in kelvin; H x W is 32 x 32
on PiSP and 12 x 16 on VC4; all preprocessing inside the model. The exported file is checked with
the LiteRT interpreter: exact signature, then agreement with the PyTorch model in mireds over a
dataset (or random statistics when none is given). float32 and float16 exports that differ by more
than :data:`MIRED_TOLERANCE` raise :class:`~isplab.errors.ParityError` and write nothing; int8
(dynamic range) differences are reported, not enforced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isplab.errors import IsplabError, ParityError
from isplab.export import TFLiteRunner, export_tflite, tflite_signature
from isplab.io.paths import prepare_output_file
from isplab.workflows.awb.constants import TARGET_SIZES
from isplab.workflows.awb.dataset import AWBDataset
from isplab.workflows.awb.predict import predict

# CLI spelling (the seed's model_converter.py) -> isplab.export's.
QUANTIZE = {None: None, "float32": None, "float16": "fp16", "fp16": "fp16", "int8": "int8"}
#: float32 and float16 must agree with PyTorch within this many mireds on every image; int8 is reported.
MIRED_TOLERANCE = {None: 1.0, "fp16": 1.0, "int8": None}
_UNSET = object()


@dataclass
class AWBExportResult:
    """What :func:`export_awb` wrote and measured."""

    path: Path
    target: str
    quantize: str | None
    size_bytes: int
    images_checked: int
    max_mired_difference: float
    mean_mired_difference: float
    tolerance_mired: float | None


def contract_shapes(target: str) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """``(input shapes, output shapes)`` libcamera expects for ``target``."""
    if target not in TARGET_SIZES:
        raise IsplabError(f"unknown AWB target {target!r}: expected one of {', '.join(TARGET_SIZES)}")
    h, w = TARGET_SIZES[target]
    return [(1, h, w, 3), (1,)], [(1,)]


def check_contract(path: str | Path, target: str) -> None:
    """Raise unless the ``.tflite`` at ``path`` has exactly libcamera's AWB signature for ``target``."""
    inputs, outputs = contract_shapes(target)
    signature = tflite_signature(path)
    found_in = [(spec.shape, spec.dtype) for spec in signature.inputs]
    found_out = [(spec.shape, spec.dtype) for spec in signature.outputs]
    expected_in = [(shape, np.dtype(np.float32)) for shape in inputs]
    expected_out = [(shape, np.dtype(np.float32)) for shape in outputs]
    if found_in != expected_in or found_out != expected_out:
        image = found_in[0][0] if found_in else None
        other = [t for t, (h, w) in TARGET_SIZES.items() if t != target and image == (1, h, w, 3)]
        if other:
            h, w = TARGET_SIZES[target]
            raise IsplabError(
                f"{path} is a {other[0]} model (image input {list(image)}) but the target is {target}, "
                f"whose statistics are [1, {h}, {w}, 3]: use the {target} model or --target {other[0]}"
            )
        raise IsplabError(
            f"{path}: not libcamera's {target} AWB contract: expected inputs {inputs} and outputs {outputs} "
            f"(float32), found inputs {[s for s, _ in found_in]} and outputs {[s for s, _ in found_out]}"
        )


def _check_inputs(target: str, dataset: AWBDataset | None, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if dataset is not None:
        if dataset.target != target:
            raise IsplabError(f"the model is for {target} but the check dataset is for {dataset.target}")
        return dataset.images.astype(np.float32), dataset.lux.astype(np.float32)
    rng = np.random.default_rng(seed)
    h, w = TARGET_SIZES[target]
    # Plausible statistics: a random illuminant tint times random reflectances, lux log-uniform.
    tint = rng.uniform(0.3, 1.0, size=(count, 1, 1, 3))
    images = (tint * rng.uniform(0.05, 1.0, size=(count, h, w, 3))).astype(np.float32)
    lux = np.exp(rng.uniform(np.log(5), np.log(5000), size=count)).astype(np.float32)
    return images, lux


def export_awb(
    model: nn.Module,
    target: str,
    out_path: str | Path,
    *,
    quantize: str | None = None,
    dataset: AWBDataset | None = None,
    random_checks: int = 200,
    overwrite: bool = False,
    seed: int = 0,
    tolerance: float | None | object = _UNSET,
) -> AWBExportResult:
    """Convert ``model`` to TFLite with libcamera's AWB contract and check it with LiteRT.

    Args:
        model: ``forward(image (B, H, W, 3), lux (B,)) -> (B,)`` kelvin (see ``isplab.models.awb``);
            a model with a sensor embedding must have its sensor selected
            (:func:`isplab.models.awb.select_sensor`): the sensor is then baked into the file.
        target: ``"pisp"`` or ``"vc4"``.
        out_path: the ``.tflite`` to write; written under a temporary name and renamed only once
            every check has passed, so a failed export leaves nothing half-written.
        quantize: ``None``/``"float32"``, ``"float16"`` or ``"int8"`` (dynamic range: float I/O).
        dataset: images to check agreement on; without one, ``random_checks`` random statistics.
        overwrite: replace an existing ``out_path``.
        tolerance: largest allowed difference in mireds on any image, ``None`` to only report it;
            default :data:`MIRED_TOLERANCE` of the precision.

    Raises:
        IsplabError: ``out_path`` exists (without ``overwrite``) or cannot be written, checked
            before converting; check images of another target; a joint model without a selected sensor.
        ParityError: the export differs from PyTorch by more than the tolerance on an image.
    """
    from isplab.models.awb import model_sensors, sensor_part

    if model_sensors(model) is not None and sensor_part(model).selected is None:
        raise IsplabError(
            f"this AWB model was trained jointly on sensors {', '.join(model_sensors(model))}: export one per sensor "
            "(awb export --sensor S, or isplab.models.awb.select_sensor)"
        )
    if quantize not in QUANTIZE:
        raise IsplabError(f"unknown quantisation {quantize!r}: expected one of float16, int8")
    quantize = QUANTIZE[quantize]
    out_path = prepare_output_file(out_path, overwrite=overwrite, what="TFLite model")
    images, lux = _check_inputs(target, dataset, random_checks, seed)
    shapes, _ = contract_shapes(target)
    if tuple(images.shape[1:]) != shapes[0][1:]:
        raise IsplabError(f"check images have shape {images.shape[1:]}, {target} needs {shapes[0][1:]}")

    model = model.eval().cpu()
    partial = out_path.with_name(f".{out_path.name}.partial")
    try:
        example = (torch.from_numpy(images[:1]), torch.from_numpy(lux[:1]))
        # Element-wise parity is judged below in mireds over many images, not on one example.
        export_tflite(model, example, partial, quantize=quantize, check=False)
        check_contract(partial, target)
        exported = predict(TFLiteRunner(partial), images, lux)
        reference = predict(model, images, lux)
        difference = np.abs(1e6 / exported - 1e6 / reference)  # no clamping: model vs its export
        if tolerance is _UNSET:
            tolerance = MIRED_TOLERANCE[quantize]
        if tolerance is not None and difference.max() > tolerance:
            worst = int(difference.argmax())
            raise ParityError(
                f"{out_path}: TFLite ({quantize or 'float32'}) differs from PyTorch by {difference.max():.3f} mireds "
                f"on image {worst} (tolerance {tolerance} mired)"
            )
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
    return AWBExportResult(
        path=out_path,
        target=target,
        quantize=quantize,
        size_bytes=out_path.stat().st_size,
        images_checked=len(images),
        max_mired_difference=float(difference.max()),
        mean_mired_difference=float(difference.mean()),
        tolerance_mired=tolerance,
    )
