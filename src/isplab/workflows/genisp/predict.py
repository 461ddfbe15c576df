"""The one GenISP inference function (:func:`apply_genisp`) and ``isplab genisp run``.

:func:`apply_genisp` runs a GenISP model on a ``(B, 3, H, W)`` camera-XYZ batch, whole or tiled.
Tiled (``tile`` > 0 and the image larger than a tile), it gives the same result as the whole
image (within float rounding, about 1e-6) with memory bounded by the tile size:

- ConvWB and ConvCC see the whole image shrunk to 256x256 (:func:`isplab.models.genisp.shrink`),
  as in the untiled model; their gains and matrix are per-pixel operations applied tile by tile;
- the shallow ConvNet runs on tiles with a 2-pixel halo (its two 3x3 convolutions); its
  InstanceNorm layers normalise over the **whole image**, so their statistics are gathered
  first, one pass over the tiles per InstanceNorm layer, and then used in every tile.

Training, evaluation, ``run`` and the ONNX parity check all call it (``docs/conventions.md`` §7).

``isplab genisp run RAW... -m MODEL -o OUT`` (:func:`run_files`) writes for each raw
``OUT/<stem>.png``: the GenISP output (the image the detector sees), clipped to [0, 1] and saved as
16-bit PNG; optionally ``<stem>.tiff`` (float32) and/or ``<stem>.exr`` with the unclipped values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isplab.errors import IsplabError

HALO = 2  # the ConvNet's receptive-field radius: two 3x3 convolutions
FORMATS = ("png", "tiff", "exr")


def _convnet_layers(model: nn.Module) -> list[nn.Module]:
    return list(model.convnet.layers)


def _instance_norm(x: torch.Tensor, norm: nn.InstanceNorm2d, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    y = (x - mean[:, :, None, None]) / torch.sqrt(var[:, :, None, None] + norm.eps)
    if norm.affine:
        y = y * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]
    return y


def _tiles(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    return [(y, min(y + tile, height), x, min(x + tile, width)) for y in range(0, height, tile) for x in range(0, width, tile)]


def _run_layers(layers: list[nn.Module], x: torch.Tensor, stats: list[tuple[torch.Tensor, torch.Tensor]], stop: int) -> torch.Tensor:
    """Apply ``layers[:stop]``, the InstanceNorms with the given whole-image statistics."""
    norm_index = 0
    for layer in layers[:stop]:
        if isinstance(layer, nn.InstanceNorm2d):
            mean, var = stats[norm_index]
            x = _instance_norm(x, layer, mean, var)
            norm_index += 1
        else:
            x = layer(x)
    return x


def _tiled(model: nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
    from isplab.models.genisp import shrink

    batch, _, height, width = x.shape
    size = model.conv_wb.size
    small = shrink(x, size, model.conv_wb.resize_mode)
    gains = model.conv_wb.gains(small)  # shrink is linear: shrink(wb(x)) == wb(shrink(x))
    matrix = model.conv_cc.matrix(small * gains[:, :, None, None])

    def color(patch: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bck,bkhw->bchw", matrix, patch * gains[:, :, None, None])

    def halo_crop(y0, y1, x0, x1):
        ty0, ty1, tx0, tx1 = max(0, y0 - HALO), min(height, y1 + HALO), max(0, x0 - HALO), min(width, x1 + HALO)
        patch = color(x[:, :, ty0:ty1, tx0:tx1])
        return patch, (y0 - ty0, y0 - ty0 + (y1 - y0), x0 - tx0, x0 - tx0 + (x1 - x0))

    layers = _convnet_layers(model)
    norms = [i for i, layer in enumerate(layers) if isinstance(layer, nn.InstanceNorm2d)]
    tiles = _tiles(height, width, tile)
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []
    for index in norms:  # one pass per InstanceNorm: its input's mean and variance over the whole image
        total = sq = None
        for y0, y1, x0, x1 in tiles:
            patch, (iy0, iy1, ix0, ix1) = halo_crop(y0, y1, x0, x1)
            h = _run_layers(layers, patch, stats, index)[:, :, iy0:iy1, ix0:ix1].double()
            s, q = h.sum(dim=(2, 3)), (h * h).sum(dim=(2, 3))
            total, sq = (s, q) if total is None else (total + s, sq + q)
        count = height * width
        mean = total / count
        var = (sq / count - mean * mean).clamp_min(0)
        stats.append((mean.to(x.dtype), var.to(x.dtype)))
    out = x.new_empty((batch, 3, height, width))
    for y0, y1, x0, x1 in tiles:
        patch, (iy0, iy1, ix0, ix1) = halo_crop(y0, y1, x0, x1)
        out[:, :, y0:y1, x0:x1] = _run_layers(layers, patch, stats, len(layers))[:, :, iy0:iy1, ix0:ix1]
    return out


def apply_genisp(model: nn.Module, xyz: torch.Tensor, *, tile: int = 0) -> torch.Tensor:
    """GenISP's output for a ``(B, 3, H, W)`` (or ``(3, H, W)``) camera-XYZ image.

    Args:
        tile: 0 runs the whole image at once; otherwise the ConvNet runs on ``tile`` x ``tile``
            tiles (see the module docstring: same result, bounded memory). Gradients flow either way.
    """
    single = xyz.ndim == 3
    x = xyz[None] if single else xyz
    if x.ndim != 4 or x.shape[1] != 3:
        raise IsplabError(f"GenISP expects a (B, 3, H, W) camera-XYZ image, got shape {tuple(xyz.shape)}")
    if tile and tile < 1:
        raise IsplabError(f"tile must be 0 (whole image) or positive, got {tile}")
    if not tile or (x.shape[2] <= tile and x.shape[3] <= tile):
        out = model(x)
    else:
        out = _tiled(model, x, int(tile))
    return out[0] if single else out


def process_raw(model: nn.Module, path: str | Path, *, short: int | None = 800, long: int | None = 1333,
                tile: int = 0, device: str | torch.device = "cpu") -> np.ndarray:
    """Raw file -> GenISP output ``(H, W, 3)`` float32, the input resized keeping its aspect ratio
    (``short``/``long`` sides; ``None`` keeps the half-resolution packed size).

    Raises:
        IsplabError: unreadable raw or no colour matrix (naming the file).
    """
    from isplab.io.raw import read_raw
    from isplab.workflows.genisp.preprocess import load_raw_xyz, raw_to_xyz

    if short is None:
        xyz = raw_to_xyz(read_raw(path))
    else:
        xyz, _ = load_raw_xyz(path, short, long or short)
    x = torch.from_numpy(np.ascontiguousarray(xyz)).permute(2, 0, 1)[None].to(device)
    with torch.no_grad():
        out = apply_genisp(model, x, tile=tile)
    return out[0].permute(1, 2, 0).float().cpu().numpy()


def output_paths(raw: Path, out_dir: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    return [out_dir / f"{raw.stem}.{fmt}" for fmt in formats]


@dataclass
class RunResult:
    written: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)


def run_files(
    raws: Sequence[str | Path],
    model_path: str | Path,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = ("png",),
    short: int | None = 800,
    long: int | None = 1333,
    tile: int = 1024,
    device: str = "cpu",
    overwrite: bool = False,
    on_file: Callable[[Path, str | None], None] | None = None,
) -> RunResult:
    """``isplab genisp run``: each raw's GenISP output under ``out_dir`` (see the module docstring).

    Every output is checked before any work; a raw that fails is reported (``on_file`` and
    ``failures``) and the others carry on.

    Raises:
        IsplabError: unusable model, unknown format, existing outputs without ``overwrite``, two
            raws with the same stem, or an unwritable ``out_dir``.
    """
    from isplab.io.image import to_uint16, write_image
    from isplab.io.paths import check_writable_dir, prepare_output_file
    from isplab.models.genisp import load_genisp

    formats = [f.lower().lstrip(".").replace("tif", "tiff").replace("tifff", "tiff") for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise IsplabError(f"unknown output format {bad[0]!r}: expected {', '.join(FORMATS)}")
    out_dir = check_writable_dir(out_dir)
    stems = [Path(p).stem for p in raws]
    duplicate = next((s for s in stems if stems.count(s) > 1), None)
    if duplicate:
        raise IsplabError(f"two raws are named {duplicate}.*: their outputs would collide in {out_dir}")
    for raw in raws:
        for path in output_paths(Path(raw), out_dir, formats):
            prepare_output_file(path, overwrite=overwrite)
    model = load_genisp(model_path).to(device)
    result = RunResult()
    for raw in map(Path, raws):
        try:
            image = process_raw(model, raw, short=short, long=long, tile=tile, device=device)
            for path, fmt in zip(output_paths(raw, out_dir, formats), formats):
                data = to_uint16(np.clip(image, 0.0, 1.0)) if fmt == "png" else image.astype(np.float32)
                write_image(path, data, overwrite=overwrite)
                result.written.append(path)
            if on_file:
                on_file(raw, None)
        except IsplabError as error:
            result.failures.append((raw, str(error)))
            if on_file:
                on_file(raw, str(error))
    return result
