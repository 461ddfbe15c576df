"""Bayer colour-filter-array layout: patterns, packing to planes and mosaicking.

A CFA pattern is a 4-letter string naming the 2x2 tile's colours in row-major order:
``RGGB``, ``BGGR``, ``GRBG`` or ``GBRG``. Packed planes are always in the canonical order
**R, Gr, Gb, B** whatever the sensor's pattern, where Gr is the green sharing a row with red
and Gb the green sharing a row with blue.

The functions accept numpy arrays or torch tensors (one implementation: slicing and stacking
only), with any leading batch dimensions: a mosaic is ``(..., H, W)``, packed planes are
``(..., 4, H/2, W/2)``.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from isplab.errors import IsplabError

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
PLANES = ("R", "Gr", "Gb", "B")

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` upper-cased, or raise if it is not one of :data:`PATTERNS`."""
    normalised = str(pattern).upper()
    if normalised not in PATTERNS:
        raise IsplabError(f"unknown CFA pattern {pattern!r}: expected one of {', '.join(PATTERNS)}")
    return normalised


def plane_offsets(pattern: str) -> dict[str, tuple[int, int]]:
    """Map each canonical plane (R, Gr, Gb, B) to its (row, col) offset in the 2x2 tile.

    >>> plane_offsets("GRBG")["R"]
    (0, 1)
    """
    pattern = check_pattern(pattern)
    tile = {(i // 2, i % 2): c for i, c in enumerate(pattern)}
    r = next(pos for pos, c in tile.items() if c == "R")
    b = next(pos for pos, c in tile.items() if c == "B")
    gr = (r[0], 1 - r[1])  # the green on red's row
    gb = (b[0], 1 - b[1])  # the green on blue's row
    return {"R": r, "Gr": gr, "Gb": gb, "B": b}


def tile_to_planes(pattern: str) -> list[int]:
    """Index into the canonical planes for each tile position (row-major).

    ``values_in_tile_order = [per_plane[i] for i in tile_to_planes(pattern)]`` turns a per-plane
    (R, Gr, Gb, B) quantity into the sensor's row-major 2x2 order, e.g. for black levels.
    """
    offsets = plane_offsets(pattern)
    by_position = {pos: PLANES.index(name) for name, pos in offsets.items()}
    return [by_position[(i // 2, i % 2)] for i in range(4)]


def channel_index(pattern: str) -> list[int]:
    """RGB channel (0=R, 1=G, 2=B) of each tile position (row-major), e.g. ``RGGB -> [0,1,1,2]``."""
    return ["RGB".index(c) for c in check_pattern(pattern)]


def _stack(arrays: list, axis: int):
    if isinstance(arrays[0], torch.Tensor):
        return torch.stack(arrays, dim=axis)
    return np.stack(arrays, axis=axis)


def _check_even(mosaic, name: str = "mosaic") -> None:
    h, w = mosaic.shape[-2:]
    if h % 2 or w % 2:
        raise IsplabError(f"{name} must have even height and width to pack into Bayer planes, got {h}x{w}")


def pack(mosaic: Array, pattern: str) -> Array:
    """Split a Bayer mosaic into half-resolution planes in R, Gr, Gb, B order.

    Args:
        mosaic: ``(..., H, W)`` array or tensor, H and W even.
        pattern: the sensor's CFA pattern.

    Returns:
        ``(..., 4, H/2, W/2)``, same type and dtype as ``mosaic``.
    """
    _check_even(mosaic)
    offsets = plane_offsets(pattern)
    planes = [mosaic[..., r::2, c::2] for r, c in (offsets[p] for p in PLANES)]
    return _stack(planes, axis=-3)


def unpack(planes: Array, pattern: str) -> Array:
    """Inverse of :func:`pack`: interleave ``(..., 4, h, w)`` R, Gr, Gb, B planes into ``(..., 2h, 2w)``."""
    if planes.shape[-3] != 4:
        raise IsplabError(f"expected 4 packed planes (R, Gr, Gb, B) in dim -3, got shape {tuple(planes.shape)}")
    h, w = planes.shape[-2:]
    shape = (*planes.shape[:-3], 2 * h, 2 * w)
    if isinstance(planes, torch.Tensor):
        out = planes.new_empty(shape)
    else:
        out = np.empty(shape, dtype=planes.dtype)
    for i, (r, c) in enumerate(plane_offsets(pattern)[p] for p in PLANES):
        out[..., r::2, c::2] = planes[..., i, :, :]
    return out


def to_half_rgb(mosaic: Array, pattern: str) -> Array:
    """Half-resolution RGB from a mosaic, the two greens averaged.

    Args:
        mosaic: ``(..., H, W)``; integer input is promoted to float32.

    Returns:
        ``(..., 3, H/2, W/2)`` float.
    """
    planes = pack(mosaic, pattern)
    if isinstance(planes, torch.Tensor):
        planes = planes if planes.is_floating_point() else planes.float()
    elif not np.issubdtype(planes.dtype, np.floating):
        planes = planes.astype(np.float32)
    r, gr, gb, b = (planes[..., i, :, :] for i in range(4))
    return _stack([r, (gr + gb) / 2, b], axis=-3)


def mosaic(rgb: Array, pattern: str) -> Array:
    """Sample a full-resolution RGB image through a Bayer CFA.

    Args:
        rgb: ``(..., 3, H, W)``, H and W even.

    Returns:
        ``(..., H, W)`` mosaic, same type and dtype.
    """
    if rgb.shape[-3] != 3:
        raise IsplabError(f"expected 3 colour channels in dim -3, got shape {tuple(rgb.shape)}")
    _check_even(rgb, "image")
    colour = {"R": 0, "Gr": 1, "Gb": 1, "B": 2}
    offsets = plane_offsets(pattern)
    planes = [rgb[..., colour[p], offsets[p][0] :: 2, offsets[p][1] :: 2] for p in PLANES]
    return unpack(_stack(planes, axis=-3), pattern)
