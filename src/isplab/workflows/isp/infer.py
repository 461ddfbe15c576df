"""Full-resolution inference of a learned ISP in overlapping tiles, blended without seams.

A 12 MP frame does not fit a network's activations in memory at once, so :func:`run_full_resolution`
cuts the packed raw ``(4, h, w)`` into ``tile x tile`` tiles that overlap their neighbours by at
least ``overlap`` packed pixels, runs them a few at a time, and adds each output tile into a
preallocated ``(2h, 2w, 3)`` image with a weight window. Memory beyond the input and the output
therefore depends on the tile size and batch, not on the image size.

Blending window (per axis, separable; distances ``d`` in output pixels from a tile edge that lies
inside the image): weight 0 for ``d < overlap / 2`` (the border band, where the network saw
padding instead of the neighbouring pixels), then a raised-cosine ramp ``0.5 - 0.5 cos(pi t)``
over the next ``overlap / 2`` pixels, then 1. Tile edges on the image border keep weight 1, as a
whole-image pass would see the same padding there. Weights are normalised to sum to one at every
pixel, so the result is a convex combination of tile outputs: for a network whose receptive field
reaches fewer than ``overlap / 4`` packed pixels, tiled and whole-image outputs are identical;
for larger ones (U-Nets) the difference is bounded by how much the far context matters, and the
smooth ramps keep it from showing as a seam.

Input preparation is the same everywhere (:func:`isplab.workflows.isp.data.model_input`): a
metadata-aware model (``isp_config["metadata"]``, ``isplab isp train --metadata``) gets the packed
planes white-balanced, colour-corrected and exposed with each raw's own metadata, in training, validation,
``isp test`` (:func:`source_for`) and ``isp run`` (:func:`load_packed` with ``metadata=True``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from isplab.errors import IsplabError
from isplab.export import eval_mode
from isplab.io.image import to_uint8, write_image
from isplab.io.paths import prepare_output_dir
from isplab.models.isp import uses_exposure, uses_metadata
from isplab.workflows.isp.data import PairSource, exposure_gain, model_input, raw_colour_transform, read_mosaic


@dataclass
class ProcessResult:
    """Outcome of :func:`process_files`: written outputs and ``(input, error message)`` failures."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.written)} written, {len(self.failed)} failed"]
        lines += [f"  wrote {path}" for path in self.written]
        lines += [f"  FAILED {path}: {error}" for path, error in self.failed]
        return "\n".join(lines)


def load_packed(path: str | Path, packing: str = "dng", *, metadata: bool = False, exposure: bool = False) -> torch.Tensor:
    """Read a raw file and prepare the network input ``(4, H/2, W/2)`` float32.

    Args:
        path: ``"dng"`` packing: any raw LibRaw reads (DNG, NEF, ...), normalised by its black and
            white levels (clipped to [0, 1]) and packed R, Gr, Gb, B. ``"challenge"`` packing: a
            single-channel 16-bit PNG raw of the MAI layout, scaled by ``1 / (4 * 255)`` and packed
            (B, Gb, R, Gr) as the challenge's loader does (see :mod:`isplab.workflows.isp.data`).
        packing: one of :data:`~isplab.workflows.isp.data.PACKINGS`.
        metadata: white-balance and colour-correct the planes with the file's own metadata, as
            metadata-aware models expect (``dng`` packing only).
        exposure: brighten the mosaic by the file's own exposure (DNG ``BaselineExposure``), as
            exposure-aware blind models expect (``dng`` packing only; implied by ``metadata``).

    Raises:
        IsplabError: unknown packing, unreadable file, a challenge raw that is not single-channel,
            or ``metadata`` with the challenge packing or a file without a colour matrix.
    """
    if metadata and packing != "dng":
        raise IsplabError(
            f"{path}: a metadata-aware model needs raws with white balance and colour matrix (packing 'dng'), "
            f"not {packing!r} raws"
        )
    if exposure and packing != "dng":
        raise IsplabError(f"{path}: an exposure-aware model needs raws that carry their exposure (packing 'dng'), not {packing!r} raws")
    mosaic, pattern = read_mosaic(path, packing)
    if exposure and not metadata:
        mosaic = mosaic * exposure_gain(path)
    return model_input(mosaic, pattern, packing, raw_colour_transform(path) if metadata else None)


def source_for(model: nn.Module, source: PairSource) -> PairSource:
    """``source`` prepared for ``model``: colour-corrected inputs when the model is metadata-aware.

    Raises:
        IsplabError: a metadata-aware model and raws without metadata (MAI/Zurich PNG raws).
    """
    wanted, exposure = uses_metadata(model), uses_exposure(model) and not uses_metadata(model)
    if source.metadata == wanted and source.exposure == exposure:
        return source
    return replace(source, metadata=wanted, exposure=exposure, _cache={}, _cached_bytes=[0])


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with overlaps ``>= overlap``.

    The fewest tiles that achieve the overlap, spread evenly (the first at 0, the last ending at
    ``length``); a single tile at 0 when ``length <= tile``.
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    # floor(i * step) with step <= tile - overlap (an integer) keeps every gap <= tile - overlap.
    step = (length - tile) / (count - 1)
    return [math.floor(i * step) for i in range(count - 1)] + [length - tile]


def blend_weights(starts: list[int], size: int, length: int, overlap: int) -> list[np.ndarray]:
    """Per-tile 1-D blending windows along one axis, normalised to sum to 1 at every position.

    Args:
        starts: tile starts (output pixels), sorted.
        size: tile size (output pixels).
        length: axis length (output pixels).
        overlap: requested overlap (output pixels); band and ramp are ``overlap / 4`` each.

    Returns:
        One ``(size,)`` float32 window per tile (see the module docstring).
    """
    band = ramp = overlap / 4
    d = np.arange(size, dtype=np.float64) + 0.5  # pixel centres' distance from the leading edge
    windows = []
    for i, start in enumerate(starts):
        window = np.ones(size)
        if i > 0:
            window *= _ramp(d, band, ramp)
        if i < len(starts) - 1:
            window *= _ramp(d[::-1], band, ramp)
        windows.append(window)
    total = np.zeros(length)
    for start, window in zip(starts, windows):
        total[start : start + size] += window
    return [(window / total[start : start + size]).astype(np.float32) for start, window in zip(starts, windows)]


def _ramp(d: np.ndarray, band: float, ramp: float) -> np.ndarray:
    if ramp == 0:
        return np.ones_like(d)
    t = np.clip((d - band) / ramp, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def run_full_resolution(
    model: nn.Module,
    raw: str | Path | np.ndarray | torch.Tensor,
    *,
    tile: int = 512,
    overlap: int = 32,
    device: str | torch.device = "cpu",
    packing: str = "dng",
    batch_size: int = 2,
) -> np.ndarray:
    """Run an ISP model on a whole image of any size in overlapping, smoothly blended tiles.

    Args:
        model: ``(B, 4, h, w) -> (B, 3, 2h, 2w)``; its ``size_multiple`` attribute (default 1)
            is the divisor ``h`` and ``w`` need.
        raw: a raw file (read with :func:`load_packed`, ``packing`` and, for a metadata-aware
            model, its own metadata) or an already prepared ``(4, h, w)`` float array/tensor in the
            model's input scale.
        tile: tile size in packed pixels, rounded down to a multiple of ``size_multiple`` (at
            least one multiple). An image dimension smaller than a tile becomes one tile,
            reflect-padded up to the multiple (replicate-padded if too small to reflect).
        overlap: minimum overlap between neighbouring tiles in packed pixels; outputs within
            ``overlap / 4`` packed pixels of an inner tile edge are discarded and the next
            ``overlap / 4`` ramp smoothly (see the module docstring).
        device: where the model runs (the model is moved there); the result is on the CPU.
        packing: for file input, ``"dng"`` or ``"challenge"``.
        batch_size: tiles per forward pass; with ``tile`` it bounds the activation memory.

    Returns:
        ``(2h, 2w, 3)`` float32 RGB (as the model outputs it, not clipped).

    Raises:
        IsplabError: bad tile/overlap, a packed array not shaped ``(4, h, w)``, or an unreadable file.
    """
    if isinstance(raw, (np.ndarray, torch.Tensor)):
        packed = raw
    else:
        packed = load_packed(raw, packing, metadata=uses_metadata(model), exposure=uses_exposure(model))
    packed = torch.as_tensor(packed, dtype=torch.float32)
    if packed.ndim != 3 or packed.shape[0] != 4:
        raise IsplabError(f"expected a packed raw of shape (4, h, w), got {tuple(packed.shape)}")
    multiple = int(getattr(model, "size_multiple", 1))
    tile = max(multiple, tile - tile % multiple)
    if not 0 <= overlap < tile or batch_size < 1:
        raise IsplabError(
            f"need 0 <= overlap < tile and batch_size >= 1 (tile rounded to a multiple of {multiple}), "
            f"got tile={tile}, overlap={overlap}, batch_size={batch_size}"
        )
    _, h, w = packed.shape
    tile_h, tile_w = min(tile, h), min(tile, w)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    row_weights = blend_weights([2 * s for s in rows], 2 * tile_h, 2 * h, 2 * overlap)
    col_weights = blend_weights([2 * s for s in cols], 2 * tile_w, 2 * w, 2 * overlap)
    out = np.zeros((2 * h, 2 * w, 3), dtype=np.float32)

    grid = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    with eval_mode(model.to(device)), torch.inference_mode():
        for batch in _chunks(grid, batch_size):
            tiles = torch.stack([packed[:, rows[i] : rows[i] + tile_h, cols[j] : cols[j] + tile_w] for i, j in batch])
            result = model(_pad_to_multiple(tiles, multiple).to(device))
            result = result[..., : 2 * tile_h, : 2 * tile_w].permute(0, 2, 3, 1).float().cpu().numpy()
            for (i, j), rgb in zip(batch, result):
                weight = row_weights[i][:, None, None] * col_weights[j][None, :, None]
                y, x = 2 * rows[i], 2 * cols[j]
                out[y : y + 2 * tile_h, x : x + 2 * tile_w] += rgb * weight
    return out


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``(B, C, h, w)`` at the bottom/right up to multiples of ``multiple``."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if not pad_h and not pad_w:
        return x
    # Reflection continues the image's texture; it needs pad < size, so tiny images replicate.
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def check_outputs(paths: Iterable[str | Path], out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """The ``out_dir/<stem>.png`` each raw file of ``paths`` will be written to, checked before any work.

    Raises:
        IsplabError: ``out_dir`` is a file or not writable, two inputs share a stem (their outputs
            would collide), or (without ``overwrite``) an output already exists.
    """
    paths = [Path(p) for p in paths]
    targets: dict[str, Path] = {}
    for path in paths:
        if path.stem in targets:
            raise IsplabError(
                f"{targets[path.stem]} and {path} would both be written to {Path(out_dir) / (path.stem + '.png')}: "
                "expected inputs with different file names"
            )
        targets[path.stem] = path
    prepare_output_dir(out_dir, overwrite=overwrite, names=[f"{stem}.png" for stem in targets], what="output folder")
    return [Path(out_dir) / f"{stem}.png" for stem in targets]


def process_files(
    paths: Iterable[str | Path],
    model: nn.Module,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    tile: int = 512,
    overlap: int = 32,
    device: str | torch.device = "cpu",
    packing: str = "dng",
    batch_size: int = 2,
) -> ProcessResult:
    """Run :func:`run_full_resolution` on each raw file and write ``out_dir/<stem>.png`` (8-bit sRGB).

    Outputs are checked first (:func:`check_outputs`): an existing one without ``overwrite`` is
    refused before any inference. Then it is a batch job: a file that fails (unreadable, not a
    raw) is recorded in :attr:`ProcessResult.failed` with the reason, and the others still run.

    Raises:
        IsplabError: see :func:`check_outputs`.
    """
    paths = [Path(p) for p in paths]
    targets = check_outputs(paths, out_dir, overwrite=overwrite)
    if uses_metadata(model) and packing != "dng":
        raise IsplabError(
            f"this model is metadata-aware (trained with --metadata): it needs raws with white balance and colour "
            f"matrix (packing 'dng'), not {packing!r} raws"
        )
    result = ProcessResult()
    for path, target in zip(paths, targets):
        try:
            rgb = run_full_resolution(
                model, path, tile=tile, overlap=overlap, device=device, packing=packing, batch_size=batch_size
            )
            result.written.append(write_image(target, to_uint8(rgb), overwrite=overwrite))
        except (IsplabError, OSError, RuntimeError) as error:  # report and go on with the next file
            result.failed.append((path, f"{type(error).__name__}: {error}"))
    return result
