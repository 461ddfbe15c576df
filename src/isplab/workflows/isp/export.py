"""Export a learned ISP as the Mobile AI 2021 challenge submits it: NHWC, packed raw in, RGB out.

Two models, both taking the packed raw ``[1, h, w, 4]`` float32 (the network's own input scale) and
returning RGB ``[1, 2h, 2w, 3]`` in [0, 1], channels last as the challenge's TFLite models are:

* a dynamic-size model ``[1, h, w, 4] -> [1, 2h, 2w, 3]`` (h, w any multiple of the model's
  ``size_multiple``), scored for quality on full-resolution images; ONNX only, since TFLite
  shapes are static;
* a fixed-size model ``[1, 544, 960, 4] -> [1, 1088, 1920, 3]`` (one full-HD frame), timed on the
  phone.

A metadata-aware model (``isplab isp train --metadata``) exports the network alone: its input is
the packed raw already white-balanced, colour-corrected and exposed with the raw's own metadata
(:func:`isplab.workflows.isp.data.model_input`, as ``isp run`` prepares it), since those numbers
differ per photo and come from the file, not from the graph. A model with the classical prior
(``--prior classical``) exports with its prior inside the graph (it needs nothing but the input).

Each file is checked against the PyTorch model by :mod:`isplab.export` (the dynamic ONNX model at
two sizes); a mismatch raises :class:`~isplab.errors.ParityError`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from isplab.cli_options import parse_quantize
from isplab.errors import IsplabError
from isplab.export import NHWCWrapper, export_onnx, export_tflite
from isplab.export.parity import QUANTIZE_MODES
from isplab.io.paths import prepare_output_file

FORMATS = ("onnx", "tflite")
#: ``--quantize`` names -> :mod:`isplab.export`'s, where it still spells float16 ``"fp16"``
_EXPORT_PRECISION = {"float16": "float16" if "float16" in QUANTIZE_MODES else "fp16"}
#: The challenge's timed input: a 1088 x 1920 frame packed to 544 x 960 x 4.
FIXED_SIZE = (544, 960)


class _NHWCISP(NHWCWrapper):
    """:class:`NHWCWrapper` with a one-tensor ``forward(raw)``.

    torch.export cannot attach per-tensor dynamic shapes to ``NHWCWrapper``'s ``*inputs`` (it sees
    one tuple argument), so the dynamic-size export needs a named positional parameter.
    """

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return super().forward(raw)


def export_paths(
    model: nn.Module,
    out_dir: str | Path,
    format: str = "onnx",
    quantize: str | None = None,
    *,
    fixed_size: tuple[int, int] = FIXED_SIZE,
    overwrite: bool = False,
) -> list[Path]:
    """The files :func:`export_isp` writes, checked before any export work.

    Raises:
        IsplabError: unknown format or precision, ``fixed_size`` not a multiple of the model's
            ``size_multiple``, an output that exists (without ``overwrite``), or an unwritable folder.
    """
    if format not in FORMATS:
        raise IsplabError(f"unknown export format {format!r}: expected one of {', '.join(FORMATS)}")
    quantize = parse_quantize(quantize)
    multiple = int(getattr(model, "size_multiple", 1))
    h, w = fixed_size
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise IsplabError(f"fixed_size {h}x{w} must be positive multiples of the model's size_multiple {multiple}")
    out_dir = Path(out_dir)
    arch = getattr(model, "isp_config", {}).get("arch", "isp")
    suffix = f"_{quantize}" if quantize else ""
    if format == "tflite":
        paths = [out_dir / f"{arch}_{h}x{w}{suffix}.tflite"]
    else:
        paths = [out_dir / f"{arch}_dynamic{suffix}.onnx", out_dir / f"{arch}_{h}x{w}{suffix}.onnx"]
    for path in paths:
        prepare_output_file(path, overwrite=overwrite, what="export")
    return paths


def export_isp(
    model: nn.Module,
    out_dir: str | Path,
    format: str = "onnx",
    quantize: str | None = None,
    *,
    fixed_size: tuple[int, int] = FIXED_SIZE,
    overwrite: bool = False,
) -> list[Path]:
    """Write the challenge's submission models for ``model`` into ``out_dir``.

    Every architecture of :func:`isplab.models.isp.build_isp_model` exports to both formats (a
    test exports each one and checks it against PyTorch).

    Args:
        model: ``(B, 4, h, w) -> (B, 3, 2h, 2w)`` ISP with a ``size_multiple`` attribute (default 1);
            its ``isp_config["arch"]`` (if any) names the files.
        out_dir: destination folder (created).
        format: ``"onnx"``: ``<arch>_dynamic.onnx`` and ``<arch>_<h>x<w>.onnx``; ``"tflite"``:
            ``<arch>_<h>x<w>.tflite`` only — TFLite models have static shapes, so there is no
            dynamic-size TFLite model (needs ``pip install 'isplab[tflite]'``).
        quantize: ``None``, ``"float16"`` (alias ``"fp16"``) or ``"int8"`` (see :mod:`isplab.export`);
            adds a ``_float16`` / ``_int8`` suffix to the file names.
        fixed_size: packed ``(h, w)`` of the fixed model; the challenge's is 544 x 960, smaller
            sizes make quick tests.
        overwrite: replace existing files (refused otherwise, before any export).

    Returns:
        The written files: for ONNX the dynamic model first, then the fixed one.

    Raises:
        IsplabError: see :func:`export_paths`.
        ParityError: an exported file disagrees with the PyTorch model.
        MissingDependencyError: TFLite requested without the ``tflite`` extra.
    """
    paths = export_paths(model, out_dir, format, quantize, fixed_size=fixed_size, overwrite=overwrite)
    quantize = parse_quantize(quantize)
    precision = _EXPORT_PRECISION.get(quantize, quantize)
    multiple = int(getattr(model, "size_multiple", 1))
    h, w = fixed_size
    wrapped = _NHWCISP(model).cpu()
    fixed_input = (torch.rand(1, h, w, 4, generator=torch.Generator().manual_seed(0)),)

    if format == "tflite":
        return [export_tflite(wrapped, fixed_input, paths[0], quantize=precision).path]

    names = {"input_names": ["raw"], "output_names": ["rgb"], "quantize": precision}
    # Small to trace (export_onnx also checks at twice the size) yet a multiple of size_multiple.
    side = math.lcm(multiple, 32)
    dynamic_input = (torch.rand(1, side, side, 4, generator=torch.Generator().manual_seed(1)),)
    dynamic = export_onnx(wrapped, dynamic_input, paths[0], dynamic_axes={"raw": {1: "height", 2: "width"}}, **names)
    fixed = export_onnx(wrapped, fixed_input, paths[1], **names)
    return [dynamic.path, fixed.path]
