"""Export a learned ISP as the Mobile AI 2021 challenge submits it: NHWC, packed raw in, RGB out.

Two models, both taking the packed raw ``[1, h, w, 4]`` float32 (the network's own input scale) and
returning RGB ``[1, 2h, 2w, 3]`` in [0, 1], channels last as the challenge's TFLite models are:

* a dynamic-size model ``[1, h, w, 4] -> [1, 2h, 2w, 3]`` (h, w any multiple of the model's
  ``size_multiple``), scored for quality on full-resolution images; ONNX only, since TFLite
  shapes are static;
* a fixed-size model ``[1, 544, 960, 4] -> [1, 1088, 1920, 3]`` (one full-HD frame), timed on the
  phone.

Each file is checked against the PyTorch model by :mod:`isplab.export` (the dynamic ONNX model at
two sizes); a mismatch raises :class:`~isplab.errors.ParityError`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.export import NHWCWrapper, export_onnx, export_tflite

FORMATS = ("onnx", "tflite")
#: The challenge's timed input: a 1088 x 1920 frame packed to 544 x 960 x 4.
FIXED_SIZE = (544, 960)


class _NHWCISP(NHWCWrapper):
    """:class:`NHWCWrapper` with a one-tensor ``forward(raw)``.

    torch.export cannot attach per-tensor dynamic shapes to ``NHWCWrapper``'s ``*inputs`` (it sees
    one tuple argument), so the dynamic-size export needs a named positional parameter.
    """

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return super().forward(raw)


def export_isp(
    model: nn.Module,
    out_dir: str | Path,
    format: str = "onnx",
    quantize: str | None = None,
    *,
    fixed_size: tuple[int, int] = FIXED_SIZE,
) -> list[Path]:
    """Write the challenge's submission models for ``model`` into ``out_dir`` (existing files are replaced).

    Args:
        model: ``(B, 4, h, w) -> (B, 3, 2h, 2w)`` ISP with a ``size_multiple`` attribute (default 1);
            its ``isp_config["arch"]`` (if any) names the files.
        out_dir: destination folder (created).
        format: ``"onnx"``: ``<arch>_dynamic.onnx`` and ``<arch>_<h>x<w>.onnx``; ``"tflite"``:
            ``<arch>_<h>x<w>.tflite`` only — TFLite models have static shapes, so there is no
            dynamic-size TFLite model (needs ``pip install 'isplab[tflite]'``).
        quantize: ``None``, ``"fp16"`` or ``"int8"`` (see :mod:`isplab.export`); adds a
            ``_fp16`` / ``_int8`` suffix to the file names.
        fixed_size: packed ``(h, w)`` of the fixed model; the challenge's is 544 x 960, smaller
            sizes make quick tests.

    Returns:
        The written files: for ONNX the dynamic model first, then the fixed one.

    Raises:
        IsplabError: unknown format, or ``fixed_size`` not a multiple of ``size_multiple``.
        ParityError: an exported file disagrees with the PyTorch model.
        MissingDependencyError: TFLite requested without the ``tflite`` extra.
    """
    if format not in FORMATS:
        raise IsplabError(f"unknown export format {format!r}: expected one of {', '.join(FORMATS)}")
    multiple = int(getattr(model, "size_multiple", 1))
    h, w = fixed_size
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise IsplabError(f"fixed_size {h}x{w} must be positive multiples of the model's size_multiple {multiple}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = getattr(model, "isp_config", {}).get("arch", "isp")
    suffix = f"_{quantize}" if quantize else ""
    wrapped = _NHWCISP(model).cpu()
    fixed_input = (torch.rand(1, h, w, 4, generator=torch.Generator().manual_seed(0)),)

    if format == "tflite":
        return [export_tflite(wrapped, fixed_input, out_dir / f"{arch}_{h}x{w}{suffix}.tflite", quantize=quantize).path]

    names = {"input_names": ["raw"], "output_names": ["rgb"], "quantize": quantize}
    # Small to trace (export_onnx also checks at twice the size) yet a multiple of size_multiple.
    side = math.lcm(multiple, 32)
    dynamic_input = (torch.rand(1, side, side, 4, generator=torch.Generator().manual_seed(1)),)
    dynamic = export_onnx(
        wrapped, dynamic_input, out_dir / f"{arch}_dynamic{suffix}.onnx",
        dynamic_axes={"raw": {1: "height", 2: "width"}}, **names,
    )
    fixed = export_onnx(wrapped, fixed_input, out_dir / f"{arch}_{h}x{w}{suffix}.onnx", **names)
    return [dynamic.path, fixed.path]
