"""Bayer demosaicing: bilinear and Malvar-He-Cutler (2004), as fixed convolutions.

Borders: the mosaic is extended by reflection about the edge photosite (``c b | a b c``), which
keeps the CFA's 2-pixel period, so every border pixel is interpolated from samples of the right
colour and a flat colour is reproduced exactly over the whole image. (``colour-demosaicing`` pads by
repeating the edge pixel, which swaps colours at the border; the two agree everywhere once its
input is reflect-padded the same way, which is how the tests compare them.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from isplab.errors import IsplabError
from isplab.isp._params import cfa_map, check_image
from isplab.isp.bayer import check_pattern

METHODS = ("malvar", "bilinear")

# Bilinear: each missing colour is the mean of its nearest samples (divided by the scale below).
_BILINEAR_G_AT_RB = [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
_BILINEAR_AT_G_ROW = [[0.0, 0.0, 0.0], [2.0, 0.0, 2.0], [0.0, 0.0, 0.0]]
_BILINEAR_AT_G_COL = [list(column) for column in zip(*_BILINEAR_AT_G_ROW, strict=True)]
_BILINEAR_RB_AT_BR = [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]

# Malvar, He & Cutler, "High-quality linear interpolation for demosaicing of Bayer-patterned colour
# images", ICASSP 2004, Fig. 2 (all divided by 8).
_MALVAR_G_AT_RB = [
    [0.0, 0.0, -1.0, 0.0, 0.0],
    [0.0, 0.0, 2.0, 0.0, 0.0],
    [-1.0, 2.0, 4.0, 2.0, -1.0],
    [0.0, 0.0, 2.0, 0.0, 0.0],
    [0.0, 0.0, -1.0, 0.0, 0.0],
]
# R (or B) at a green site whose row neighbours are R (or B).
_MALVAR_AT_G_ROW = [
    [0.0, 0.0, 0.5, 0.0, 0.0],
    [0.0, -1.0, 0.0, -1.0, 0.0],
    [-1.0, 4.0, 5.0, 4.0, -1.0],
    [0.0, -1.0, 0.0, -1.0, 0.0],
    [0.0, 0.0, 0.5, 0.0, 0.0],
]
# ... whose column neighbours are R (or B).
_MALVAR_AT_G_COL = [list(column) for column in zip(*_MALVAR_AT_G_ROW, strict=True)]
# R at B sites and B at R sites.
_MALVAR_RB_AT_BR = [
    [0.0, 0.0, -1.5, 0.0, 0.0],
    [0.0, 2.0, 0.0, 2.0, 0.0],
    [-1.5, 0.0, 6.0, 0.0, -1.5],
    [0.0, 2.0, 0.0, 2.0, 0.0],
    [0.0, 0.0, -1.5, 0.0, 0.0],
]
# Sources stacked by _interpolate: 0 the mosaic itself, then the four filters.
_SRC_CFA, _SRC_G_AT_RB, _SRC_ROW, _SRC_COL, _SRC_RB_AT_BR = range(5)


def _pad_cfa_reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad H and W by ``pad`` reflecting about the edge pixel (numpy ``reflect``): keeps the CFA phase."""
    h, w = x.shape[-2:]
    if h <= pad or w <= pad:
        raise IsplabError(f"mosaic must be at least {pad + 1}x{pad + 1} to demosaic, got {h}x{w}")
    return F.pad(x, (pad, pad, pad, pad), mode="reflect")


def _kernels(kernels: list[list[list[float]]], scale: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(kernels, dtype=like.dtype, device=like.device).unsqueeze(1) / scale


def _sources(pattern: str) -> list[list[int]]:
    """For each output channel (R, G, B), the source to read at each tile position (row-major)."""
    colours = check_pattern(pattern)
    red_row = colours.index("R") // 2
    table: list[list[int]] = [[], [], []]
    for position, colour in enumerate(colours):
        on_red_row = position // 2 == red_row
        if colour == "G":
            table[0].append(_SRC_ROW if on_red_row else _SRC_COL)
            table[1].append(_SRC_CFA)
            table[2].append(_SRC_COL if on_red_row else _SRC_ROW)
        else:
            own, other = (0, 2) if colour == "R" else (2, 0)
            table[own].append(_SRC_CFA)
            table[1].append(_SRC_G_AT_RB)
            table[other].append(_SRC_RB_AT_BR)
    return table


def _interpolate(mosaic: torch.Tensor, pattern: str, kernels: list, scale: float) -> torch.Tensor:
    """Filter the mosaic once with each interpolation kernel, then pick per site and channel.

    Both methods are four kernels on the single-channel mosaic (G at R/B, R/B at the two kinds of
    green site, R at B and B at R) plus the mosaic itself; a gather selects, for every output
    pixel, the source its CFA position calls for.
    """
    check_image(mosaic, 1, "mosaic")
    table = torch.tensor(_sources(pattern), device=mosaic.device)  # (3, 4)
    pad = len(kernels[0]) // 2
    filtered = F.conv2d(_pad_cfa_reflect(mosaic, pad), _kernels(kernels, scale, mosaic))  # (B, 4, H, W)
    sources = torch.cat([mosaic, filtered], dim=1)  # (B, 5, H, W) indexed by _SRC_*
    index = cfa_map(table, *mosaic.shape[-2:]).transpose(0, 1)  # (1, 3, H, W)
    return torch.gather(sources, 1, index.expand(mosaic.shape[0], -1, -1, -1))


def demosaic_bilinear(mosaic: torch.Tensor, pattern: str) -> torch.Tensor:
    """Bilinear demosaicing (each colour interpolated from its own nearest samples only).

    Args:
        mosaic: ``(B, 1, H, W)`` Bayer mosaic, H, W >= 2.
        pattern: CFA pattern, e.g. ``"RGGB"``.

    Returns:
        ``(B, 3, H, W)`` RGB, same dtype and device; not clipped.
    """
    kernels = [_BILINEAR_G_AT_RB, _BILINEAR_AT_G_ROW, _BILINEAR_AT_G_COL, _BILINEAR_RB_AT_BR]
    return _interpolate(mosaic, pattern, kernels, 4.0)


def demosaic_malvar(mosaic: torch.Tensor, pattern: str) -> torch.Tensor:
    """Malvar-He-Cutler (2004) gradient-corrected linear demosaicing with its 5x5 kernels.

    Args:
        mosaic: ``(B, 1, H, W)`` Bayer mosaic, H, W >= 3.
        pattern: CFA pattern, e.g. ``"RGGB"``.

    Returns:
        ``(B, 3, H, W)`` RGB, same dtype and device; not clipped (the kernels can overshoot).
    """
    kernels = [_MALVAR_G_AT_RB, _MALVAR_AT_G_ROW, _MALVAR_AT_G_COL, _MALVAR_RB_AT_BR]
    return _interpolate(mosaic, pattern, kernels, 8.0)


def demosaic(mosaic: torch.Tensor, pattern: str, method: str = "malvar") -> torch.Tensor:
    """Demosaic a ``(B, 1, H, W)`` Bayer mosaic to ``(B, 3, H, W)`` RGB with ``method`` in :data:`METHODS`."""
    if method == "malvar":
        return demosaic_malvar(mosaic, pattern)
    if method == "bilinear":
        return demosaic_bilinear(mosaic, pattern)
    raise IsplabError(f"unknown demosaic method {method!r}: expected one of {', '.join(METHODS)}")
