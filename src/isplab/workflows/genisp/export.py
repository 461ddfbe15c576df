"""``isplab genisp export MODEL``: GenISP alone as ONNX, checked with onnxruntime.

GenISP is the part that ships in front of a detector. The graph takes ``xyz`` ``(N, 3, H, W)``
float32 — the camera-XYZ input of :func:`isplab.workflows.genisp.preprocess.raw_to_xyz`, H and W
dynamic — and returns ``image`` ``(N, 3, H, W)``, the image the detector is given (before the
detector's own mean/std normalisation). :func:`isplab.export.export_onnx` compares onnxruntime with
PyTorch on a random input and on one twice as large; :func:`export_genisp` also checks one of an
odd size (every size uses its own shrink factor for ConvWB/ConvCC), and raises if any differs
beyond the tolerance.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from isplab.cli_options import parse_quantize
from isplab.export import export_onnx
from isplab.export.onnx import run_onnx
from isplab.export.parity import (
    QUANTIZE_MODES,
    ExportResult,
    compare_outputs,
    default_tolerance,
    torch_outputs,
)
from isplab.io.paths import prepare_output_file

#: Input of the traced example: wide enough that ConvWB/ConvCC shrink it by area averaging.
EXAMPLE_SIZE = (1, 3, 320, 544)
ODD_SIZE = (1, 3, 203, 517)


class ExportableGenISP(nn.Module):
    """GenISP's forward with a shrink the ONNX graph computes for each input size.

    :func:`isplab.models.genisp.shrink` averages ``k x k`` blocks with ``k = floor(side / 256)``
    through ``avg_pool2d``, whose kernel the exporter fixes at the traced size; here the same
    blocks are averaged by a reshape whose sizes follow the input, then resized bilinearly as there.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.size = int(model.conv_wb.size)
        self.area = model.conv_wb.resize_mode == "area"

    def shrink(self, x: torch.Tensor) -> torch.Tensor:
        if self.area:
            b, c, h, w = x.shape
            kh, kw = torch.sym_max(1, h // self.size), torch.sym_max(1, w // self.size)
            x = x[:, :, : (h // kh) * kh, : (w // kw) * kw].reshape(b, c, h // kh, kh, w // kw, kw).mean(dim=(3, 5))
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        wb, cc = self.model.conv_wb, self.model.conv_cc
        gains = wb.head(wb.features(self.shrink(xyz)))
        balanced = xyz * gains[:, :, None, None]
        matrix = cc.head(cc.features(self.shrink(balanced))).reshape(-1, 3, 3)
        return self.model.convnet(torch.einsum("bck,bkhw->bchw", matrix, balanced))


def _example(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    # a dark, coloured camera-XYZ-like input
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    return x * torch.tensor([0.05, 0.08, 0.03])[None, :, None, None]


def export_genisp(model_path: str | Path, output: str | Path | None = None, *, quantize: str | None = None,
                  overwrite: bool = False) -> ExportResult:
    """Write ``output`` (default: ``MODEL`` with ``.onnx``) and check it with onnxruntime.

    Raises:
        IsplabError: unusable model, existing output without ``overwrite``, bad ``quantize``.
        ParityError: onnxruntime disagrees with PyTorch beyond the tolerance.
    """
    from isplab.models.genisp import load_genisp

    model_path = Path(model_path)
    output = Path(output) if output is not None else model_path.with_suffix(".onnx")
    precision = parse_quantize(quantize)
    if precision == "float16" and "float16" not in QUANTIZE_MODES:
        precision = "fp16"  # isplab.export's spelling
    prepare_output_file(output, overwrite=overwrite, what="ONNX file")
    model = load_genisp(model_path).eval()
    result = export_onnx(ExportableGenISP(model), (_example(EXAMPLE_SIZE, 1),), output, input_names=["xyz"], output_names=["image"],
                         dynamic_axes={"xyz": {2: "height", 3: "width"}}, quantize=precision)
    odd = [_example(ODD_SIZE, 2)]
    atol, rtol = default_tolerance(precision)
    report = compare_outputs(torch_outputs(model, odd), run_onnx(output, [t.numpy() for t in odd]), atol, rtol,
                             what=f"ONNX model '{output}' ({precision or 'fp32'}) vs PyTorch on inputs of shape {list(ODD_SIZE)}")
    return ExportResult(path=result.path, size_bytes=result.size_bytes, quantize=result.quantize, parity=(*result.parity, report))
