"""Export PyTorch models to TFLite (LiteRT), optionally quantised, and check them.

Conversion uses ``litert-torch`` and checking uses ``ai-edge-litert``'s interpreter; both come
with the optional extra: ``pip install 'isplab[tflite]'``. They are imported only when needed.

Precisions (``quantize``):

* ``None``: float32.
* ``"fp16"``: float16 weights, dequantised to float32 by the runtime; computation stays float32.
* ``"int8"``: dynamic-range quantisation: per-channel int8 weights, activations quantised on the
  fly where a kernel supports it; inputs/outputs stay float32.

Default parity tolerances per precision are listed in :mod:`isplab.export.parity`.

Layout: the TFLite model keeps the PyTorch module's input/output layout and order; shapes are
static (those of the example inputs). A consumer that needs channels-last tensors wraps the
model in :class:`NHWCWrapper` before exporting. For example libcamera's neural AWB expects
input 0 float32 ``[1, H, W, 3]`` (image), input 1 float32 ``[1]`` and output float32 ``[1]``::

    awb = NHWCWrapper(model)  # model(image (1, 3, H, W), x (1,)) -> (1,)
    export_tflite(awb, (torch.rand(1, H, W, 3), torch.rand(1)), "awb.tflite")
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from isplab.errors import IsplabError, MissingDependencyError
from isplab.export.parity import (
    ExportResult,
    check_quantize,
    compare_outputs,
    default_tolerance,
    eval_mode,
    torch_outputs,
)


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one TFLite input or output tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class TFLiteSignature:
    """Inputs and outputs of a TFLite model, in the interpreter's tensor order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class NHWCWrapper(nn.Module):
    """Give a channels-first model a channels-last interface.

    4-D inputs are taken as ``(B, H, W, C)`` and handed to ``module`` as ``(B, C, H, W)``; 4-D
    outputs are returned as ``(B, H, W, C)``. Tensors of any other rank (e.g. a ``(1,)``
    parameter or a ``(B, 3)`` gain vector) pass through unchanged.

    Args:
        module: Model taking and returning channels-first tensors; it may return a tensor or a
            tuple/list of tensors.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.module(*(x.permute(0, 3, 1, 2) if x.ndim == 4 else x for x in inputs))
        if isinstance(out, torch.Tensor):
            return _to_nhwc(out)
        return type(out)(_to_nhwc(t) for t in out)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.ndim == 4 else x


def export_tflite(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | PathLike[str],
    *,
    quantize: str | None = None,
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> ExportResult:
    """Convert ``model`` to a ``.tflite`` file with litert-torch and check it.

    The model is converted and run in eval mode (each submodule's mode is restored afterwards).
    With ``check=True`` the file is run by ai-edge-litert's interpreter on ``example_inputs``
    and compared with the PyTorch outputs.

    Args:
        model: Module to convert; ``model(*example_inputs)`` must return a tensor or a
            tuple/list of tensors.
        example_inputs: Inputs to trace with; they fix the model's (static) input shapes.
        path: Destination ``.tflite`` file.
        quantize: ``None`` (float32), ``"fp16"`` or ``"int8"`` (see module docstring).
        check: Run the parity check; a failure raises :class:`~isplab.errors.ParityError`.
        atol: Absolute parity tolerance; ``None`` uses the per-precision default.
        rtol: Relative parity tolerance; ``None`` uses the per-precision default.

    Returns:
        The written file, its size and the parity report.

    Raises:
        MissingDependencyError: If the ``tflite`` extra is not installed.
        IsplabError: On an invalid ``quantize``.
        ParityError: If the interpreter's outputs differ from PyTorch's beyond the tolerance
            (the file is left in place for inspection).
    """
    check_quantize(quantize)
    litert_torch = _require("litert_torch")
    path = Path(path)
    quant_config = None
    if quantize is not None:
        # The "generative" recipes apply one weight recipe to every supported op (regex ".*"),
        # so they quantise plain conv nets too, despite their name.
        recipes = _require("litert_torch.generative.quantize.quant_recipes")
        quant_config = (
            recipes.full_fp16_recipe() if quantize == "fp16" else recipes.full_dynamic_recipe()
        )
    with eval_mode(model), torch.no_grad():
        litert_torch.convert(model, tuple(example_inputs), quant_config=quant_config).export(
            str(path)
        )

    reports = ()
    if check:
        default_atol, default_rtol = default_tolerance(quantize)
        reports = (
            compare_outputs(
                torch_outputs(model, example_inputs),
                run_tflite(path, [t.detach().cpu().numpy() for t in example_inputs]),
                default_atol if atol is None else atol,
                default_rtol if rtol is None else rtol,
                what=f"TFLite model '{path}' ({quantize or 'fp32'}) vs PyTorch",
            ),
        )
    return ExportResult(
        path=path, size_bytes=path.stat().st_size, quantize=quantize, parity=reports
    )


class TFLiteRunner:
    """A TFLite model loaded once into ai-edge-litert's interpreter, called many times.

    ``runner(inputs) -> outputs`` with the same contract as :func:`run_tflite`; use it when running
    a model over a dataset (loading the interpreter costs more than a small model's inference).
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)
        self.interpreter = _interpreter(self.path)
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.input_details):
            raise IsplabError(
                f"TFLite model '{self.path}' expects {len(self.input_details)} inputs, got {len(inputs)}"
            )
        for i, (detail, x) in enumerate(zip(self.input_details, inputs)):
            x = np.asarray(x, dtype=detail["dtype"])
            if x.shape != tuple(detail["shape"]):
                raise IsplabError(
                    f"TFLite model '{self.path}' input {i} ({detail['name']}) has static shape "
                    f"{detail['shape'].tolist()}, got {list(x.shape)}"
                )
            self.interpreter.set_tensor(detail["index"], x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self.output_details]


def run_tflite(path: str | PathLike[str], inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run a TFLite model once with ai-edge-litert's interpreter.

    Args:
        path: ``.tflite`` file.
        inputs: One array per model input, in the interpreter's input order (that of
            :func:`tflite_signature`), each of exactly the model's static shape.

    Returns:
        The model's outputs, in the interpreter's output order.

    Raises:
        MissingDependencyError: If ai-edge-litert is not installed.
        IsplabError: If the file does not exist or the number or shapes of inputs are wrong.
    """
    return TFLiteRunner(path)(inputs)


def tflite_signature(path: str | PathLike[str]) -> TFLiteSignature:
    """Names, shapes and dtypes of a TFLite model's inputs and outputs, in tensor order.

    Raises:
        MissingDependencyError: If ai-edge-litert is not installed.
        IsplabError: If the file does not exist.
    """
    interpreter = _interpreter(path)

    def specs(details: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(d["name"], tuple(int(n) for n in d["shape"]), np.dtype(d["dtype"]))
            for d in details
        )

    return TFLiteSignature(
        inputs=specs(interpreter.get_input_details()),
        outputs=specs(interpreter.get_output_details()),
    )


def _interpreter(path: str | PathLike[str]):
    path = Path(path)
    interpreter_module = _require("ai_edge_litert.interpreter")
    if not path.is_file():
        raise IsplabError(f"TFLite model file not found: '{path}'")
    try:
        interpreter = interpreter_module.Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise IsplabError(f"'{path}' is not a TFLite model the LiteRT interpreter can load ({error})") from None
    return interpreter


def _require(module: str) -> ModuleType:
    """Import an optional dependency of the ``tflite`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"TFLite export needs the optional module '{module}', which could not be imported "
            f"({e}); install it with: pip install 'isplab[tflite]'"
        ) from e
