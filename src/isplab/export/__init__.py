"""Export trained models to ONNX and TFLite, with parity checks against PyTorch and quantisation.

:func:`export_onnx` / :func:`export_tflite` write the file, run it with its own runtime
(onnxruntime / ai-edge-litert) and raise :class:`~isplab.errors.ParityError` when its outputs
differ from the PyTorch model's beyond the per-precision tolerance (see :mod:`.parity`).
The TFLite functions need the optional extra ``pip install 'isplab[tflite]'``.
"""

from __future__ import annotations

from isplab.export.onnx import export_onnx, run_onnx
from isplab.export.parity import (
    ExportResult,
    ParityReport,
    compare_outputs,
    default_tolerance,
    eval_mode,
    torch_outputs,
)
from isplab.export.tflite import (
    NHWCWrapper,
    TensorSpec,
    TFLiteRunner,
    TFLiteSignature,
    export_tflite,
    run_tflite,
    tflite_signature,
)

__all__ = [
    "ExportResult",
    "NHWCWrapper",
    "ParityReport",
    "TFLiteRunner",
    "TFLiteSignature",
    "TensorSpec",
    "compare_outputs",
    "default_tolerance",
    "eval_mode",
    "export_onnx",
    "export_tflite",
    "run_onnx",
    "run_tflite",
    "tflite_signature",
    "torch_outputs",
]
