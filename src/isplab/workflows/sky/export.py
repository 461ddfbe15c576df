"""``isplab sky export MODEL``: the sky network as ONNX, checked with onnxruntime.

The graph takes ``image`` ``(N, 3, H, W)`` float32 — the network input of
:func:`isplab.workflows.sky.hdr.network_input` (log-encoded HDR or LDR in [0, 1]), H and W dynamic
multiples of the model's ``size_multiple`` — and returns ``sky`` ``(N, 1, H, W)``, the sigmoid
probability. :func:`isplab.export.export_onnx` compares onnxruntime with PyTorch on a random input
and on one twice as large, and raises if they differ beyond its tolerance.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from isplab.cli_options import parse_quantize
from isplab.export import export_onnx
from isplab.export.parity import QUANTIZE_MODES, ExportResult
from isplab.io.paths import prepare_output_file
from isplab.workflows.sky.model import load_sky_model


class _Probability(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image))


def export_sky(model_path: str | Path, output: str | Path | None = None, *, quantize: str | None = None, overwrite: bool = False) -> ExportResult:
    """Write ``output`` (default: ``MODEL`` with ``.onnx``) and check it with onnxruntime.

    Raises:
        IsplabError: unusable model, existing output without ``overwrite``, bad ``quantize``.
        ParityError: onnxruntime disagrees with PyTorch beyond the tolerance.
    """
    model_path = Path(model_path)
    output = Path(output) if output is not None else model_path.with_suffix(".onnx")
    precision = parse_quantize(quantize)
    if precision == "float16" and "float16" not in QUANTIZE_MODES:
        precision = "fp16"  # isplab.export's spelling
    prepare_output_file(output, overwrite=overwrite, what="ONNX file")
    model = load_sky_model(model_path)
    side = math.lcm(int(model.size_multiple), 32)
    example = (torch.rand(1, 3, side, 2 * side, generator=torch.Generator().manual_seed(1)),)
    return export_onnx(
        _Probability(model), example, output, input_names=["image"], output_names=["sky"],
        dynamic_axes={"image": {2: "height", 3: "width"}}, quantize=precision,
    )
