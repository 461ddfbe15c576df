"""Export PyTorch models to ONNX, optionally quantised, and check them with onnxruntime.

Precisions (``quantize``):

* ``None``: float32 graph.
* ``"fp16"``: weights *and* computation in float16, inputs/outputs kept float32
  (``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``); onnxruntime
  falls back to float32 kernels, with casts, for operators lacking a float16 CPU kernel.
* ``"int8"``: onnxruntime dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``):
  int8 weights, activations quantised on the fly per inference; inputs/outputs stay float32.

Default parity tolerances per precision are listed in :mod:`isplab.export.parity`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16
from torch import nn

from isplab.errors import IsplabError
from isplab.export.parity import (
    ExportResult,
    check_quantize,
    compare_outputs,
    default_tolerance,
    eval_mode,
    torch_outputs,
)

DynamicAxes = dict[str, dict[int, str] | Sequence[int]]


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | PathLike[str],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    opset: int | None = None,
    quantize: str | None = None,
    check: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> ExportResult:
    """Export ``model`` to an ONNX file and check it against the PyTorch model.

    The model is exported and run in eval mode (each submodule's mode is restored afterwards).
    With ``check=True`` the ``.onnx`` file is run with onnxruntime (CPU) on ``example_inputs``
    and, when ``dynamic_axes`` are declared, also on a second random input set whose dynamic
    axes are twice as long (doubling keeps any divisibility the model needs, e.g. by a
    downsampling factor); its values are uniform in the range of the example input.

    Args:
        model: Module to export; ``model(*example_inputs)`` must return a tensor or a tuple/list
            of tensors.
        example_inputs: Inputs to trace with, e.g. ``(torch.rand(1, 4, 64, 64),)``.
        path: Destination ``.onnx`` file (a single file: weights are stored inline).
        input_names: ONNX input names, one per example input; defaults to the names of the
            ``forward`` parameters.
        output_names: ONNX output names; defaults to the exporter's names.
        dynamic_axes: ``{input_name: {axis: dim_name}}`` or ``{input_name: [axis, ...]}``, e.g.
            ``{"raw": {2: "height", 3: "width"}}``. Axes sharing a ``dim_name`` must be equal.
            Entries for output names are accepted but not needed: the exporter infers which
            output axes are dynamic.
        opset: ONNX opset version; ``None`` uses the exporter's default.
        quantize: ``None`` (float32), ``"fp16"`` or ``"int8"`` (see module docstring).
        check: Run the parity check(s); a failure raises :class:`~isplab.errors.ParityError`.
        atol: Absolute parity tolerance; ``None`` uses the per-precision default.
        rtol: Relative parity tolerance; ``None`` uses the per-precision default.

    Returns:
        The written file, its size and the parity reports (one per checked input set).

    Raises:
        IsplabError: On invalid ``quantize``, names or ``dynamic_axes``.
        ParityError: If onnxruntime's outputs differ from PyTorch's beyond the tolerance (the
            file is left in place for inspection).
    """
    check_quantize(quantize)
    path = Path(path)
    input_names = _input_names(model, example_inputs, input_names)
    dynamic_shapes = _dynamic_shapes(input_names, output_names, dynamic_axes)

    # The torch.export-based ("dynamo") exporter rather than the legacy TorchScript one: in torch
    # 2.14 the legacy exporter is deprecated ("will be removed"), and for dynamic H/W the dynamo
    # exporter fails loudly when the model specialises on a size, where the TorchScript tracer
    # bakes it into the graph as a constant with only a TracerWarning. Both gave identical
    # results on conv nets with dynamic H/W.
    with eval_mode(model), torch.no_grad():
        program = torch.onnx.export(
            model,
            tuple(example_inputs),
            None,
            input_names=list(input_names),
            output_names=None if output_names is None else list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    _save(program.model_proto, path, quantize)

    reports = ()
    if check:
        default_atol, default_rtol = default_tolerance(quantize)
        atol = default_atol if atol is None else atol
        rtol = default_rtol if rtol is None else rtol
        input_sets = [list(example_inputs)]
        if dynamic_shapes is not None:
            input_sets.append(_resized_inputs(example_inputs, dynamic_shapes))
        reports = tuple(
            compare_outputs(
                torch_outputs(model, inputs),
                run_onnx(path, [t.detach().cpu().numpy() for t in inputs]),
                atol,
                rtol,
                what=(
                    f"ONNX model '{path}' ({quantize or 'fp32'}) vs PyTorch on inputs of shape "
                    f"{[tuple(t.shape) for t in inputs]}"
                ),
            )
            for inputs in input_sets
        )
    return ExportResult(
        path=path, size_bytes=path.stat().st_size, quantize=quantize, parity=reports
    )


def run_onnx(path: str | PathLike[str], inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX model with onnxruntime on the CPU.

    Args:
        path: ``.onnx`` file.
        inputs: One array per model input, in the model's input order.

    Returns:
        The model's outputs, in order.

    Raises:
        IsplabError: If the file does not exist or the number of inputs is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise IsplabError(f"ONNX model file not found: '{path}'")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    specs = session.get_inputs()
    if len(inputs) != len(specs):
        raise IsplabError(
            f"ONNX model '{path}' expects {len(specs)} inputs {[s.name for s in specs]}, "
            f"got {len(inputs)}"
        )
    return session.run(None, {spec.name: np.asarray(x) for spec, x in zip(specs, inputs)})


def _save(model: onnx.ModelProto, path: Path, quantize: str | None) -> None:
    if quantize == "int8":
        quantize_dynamic(model, path, weight_type=QuantType.QInt8)
    elif quantize == "fp16":
        onnx.save_model(convert_float_to_float16(model, keep_io_types=True), path)
    else:
        onnx.save_model(model, path)


def _input_names(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], input_names: Sequence[str] | None
) -> list[str]:
    if input_names is None:
        params = [
            p.name
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(params) >= len(example_inputs):
            return params[: len(example_inputs)]
        return [f"input{i}" for i in range(len(example_inputs))]
    if len(input_names) != len(example_inputs):
        raise IsplabError(
            f"input_names {list(input_names)} has {len(input_names)} names for "
            f"{len(example_inputs)} example inputs"
        )
    return list(input_names)


def _dynamic_shapes(
    input_names: Sequence[str],
    output_names: Sequence[str] | None,
    dynamic_axes: DynamicAxes | None,
) -> tuple[dict[int, str] | None, ...] | None:
    """Translate legacy-style ``dynamic_axes`` into torch.export ``dynamic_shapes``.

    String dim names become ``Dim.DYNAMIC`` dimensions named after them in the ONNX graph.
    """
    if not dynamic_axes:
        return None
    unknown = set(dynamic_axes) - set(input_names) - set(output_names or ())
    if unknown:
        raise IsplabError(
            f"dynamic_axes names {sorted(unknown)} are neither inputs {list(input_names)} "
            f"nor outputs {list(output_names or [])}"
        )
    shapes = []
    for name in input_names:
        axes = dynamic_axes.get(name)
        if axes is not None and not isinstance(axes, dict):
            axes = {axis: f"{name}_dim{axis}" for axis in axes}
        shapes.append(axes or None)
    return tuple(shapes) if any(shapes) else None


def _resized_inputs(
    example_inputs: Sequence[torch.Tensor], dynamic_shapes: Sequence[dict[int, str] | None]
) -> list[torch.Tensor]:
    """Random inputs like ``example_inputs`` with every dynamic axis twice as long."""
    generator = torch.Generator().manual_seed(0)
    resized = []
    for tensor, axes in zip(example_inputs, dynamic_shapes):
        shape = [n * 2 if axis in (axes or {}) else n for axis, n in enumerate(tensor.shape)]
        lo, hi = tensor.min().item(), tensor.max().item()
        if tensor.dtype.is_floating_point:
            values = torch.rand(shape, generator=generator) * (hi - lo) + lo
        else:
            values = torch.randint(int(lo), int(hi) + 1, shape, generator=generator)
        resized.append(values.to(dtype=tensor.dtype, device=tensor.device))
    return resized
