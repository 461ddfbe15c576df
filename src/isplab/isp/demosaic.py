"""Bayer demosaicing: bilinear and Malvar-He-Cutler (2004), linear filters with fixed kernels.

The kernels are the published ones, but they are not convolved over every pixel: on the packed
``(4, H/2, W/2)`` planes each output colour at each of the four tile positions is a small weighted
sum of shifted planes (its own kernel's non-zero taps only, partial sums shared), the equivalent of
stride-2 per-phase convolutions. With no gradient to record, a CPU image is processed in chunks of
rows that stay in cache, spread over ``torch.get_num_threads()`` threads (:func:`demosaic_packed`);
with one, the same sums run out of place for autograd.

Borders: the mosaic is extended by reflection about the edge photosite (``c b | a b c``), which
keeps the CFA's 2-pixel period, so every border pixel is interpolated from samples of the right
colour and a flat colour is reproduced exactly over the whole image. (``colour-demosaicing`` pads by
repeating the edge pixel, which swaps colours at the border; the two agree everywhere once its
input is reflect-padded the same way, which is how the tests compare them.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from isplab.errors import IsplabError
from isplab.isp._params import check_image, eager_inplace_ok, run_chunks, scratch_tensor
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
# The source each output reads at each CFA site: the mosaic itself, or one of the four filters.
_SRC_CFA, _SRC_G_AT_RB, _SRC_ROW, _SRC_COL, _SRC_RB_AT_BR = range(5)
_KERNELS = {
    "bilinear": ((_BILINEAR_G_AT_RB, _BILINEAR_AT_G_ROW, _BILINEAR_AT_G_COL, _BILINEAR_RB_AT_BR), 4.0),
    "malvar": ((_MALVAR_G_AT_RB, _MALVAR_AT_G_ROW, _MALVAR_AT_G_COL, _MALVAR_RB_AT_BR), 8.0),
}
# Packed sites (rows x columns x batch) per chunk on the CPU: the chunk's planes and temporaries
# (a few MB) stay in cache.
_CHUNK_ELEMENTS = 1 << 15


def _pad_cfa_reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad H and W by ``pad`` reflecting about the edge pixel (numpy ``reflect``): keeps the CFA phase."""
    h, w = x.shape[-2:]
    if h <= pad or w <= pad:
        raise IsplabError(f"mosaic must be at least {pad + 1}x{pad + 1} to demosaic, got {h}x{w}")
    return F.pad(x, (pad, pad, pad, pad), mode="reflect")


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


Tap = tuple[int, int, int]  # (packed plane = tile position, row shift, column shift) into the padded planes


@functools.cache
def _plan(pattern: str, method: str) -> tuple[tuple[tuple[float, tuple[Tap, ...]], ...], ...]:
    """Each output's recipe on the packed planes, for outputs ordered (channel R, G, B) x (tile position).

    Output channel ``c`` at tile position ``(dy, dx)`` of packed site ``(i, j)`` is the mosaic pixel
    ``(2i + dy, 2j + dx)``; a kernel tap at offset ``(a, b)`` reads mosaic pixel
    ``(2i + dy + a, 2j + dx + b)``, which is packed plane ``((dy + a) % 2, (dx + b) % 2)`` at packed
    site ``(i + (dy + a) // 2, j + (dx + b) // 2)``. Planes padded by one packed site on each side
    (two mosaic pixels) make that a slice starting at ``(dy + a + 2) // 2`` in ``0..2``. A recipe is
    the taps grouped by weight: ``sum(weight * sum(plane slices))``, the kernel's scale folded in.
    """
    if method not in _KERNELS:
        raise IsplabError(f"unknown demosaic method {method!r}: expected one of {', '.join(METHODS)}")
    kernels, scale = _KERNELS[method]
    table = _sources(pattern)
    recipes = []
    for channel in range(3):
        for position in range(4):
            dy, dx = divmod(position, 2)
            source = table[channel][position]
            if source == _SRC_CFA:
                recipes.append(((1.0, ((position, 1, 1),)),))
                continue
            kernel = kernels[source - 1]
            radius = len(kernel) // 2
            groups: dict[float, list[Tap]] = {}
            for a in range(-radius, radius + 1):
                for b in range(-radius, radius + 1):
                    weight = kernel[a + radius][b + radius]
                    if weight:
                        tap = (((dy + a) % 2) * 2 + (dx + b) % 2, (dy + a + 2) // 2, (dx + b + 2) // 2)
                        groups.setdefault(weight / scale, []).append(tap)
            recipes.append(tuple((weight, tuple(taps)) for weight, taps in groups.items()))
    return tuple(recipes)


def _pad_for_packing(mosaic: torch.Tensor, method: str) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, 1, 2h + 4, 2w + 4)`` with h, w = ceil(H/2), ceil(W/2).

    The mosaic sits at offset (2, 2), so packing keeps its CFA phase; the kernel's reach (1 pixel for
    bilinear, 2 for Malvar) is reflected about the edge photosite, anything beyond it is zero and
    never read with a non-zero weight (the extra row/column of an odd size feeds only cropped outputs).
    """
    h, w = mosaic.shape[-2:]
    reach = len(_KERNELS[method][0][0]) // 2
    x = _pad_cfa_reflect(mosaic, reach)
    extra = 2 - reach
    if extra or h % 2 or w % 2:
        x = F.pad(x, (extra, extra + w % 2, extra, extra + h % 2))
    return x


def _reflect(index: int, size: int) -> int:
    """Reflect an index about the first/last element (``c b | a b c``), clamped when beyond reach."""
    index = -index if index < 0 else index
    index = 2 * (size - 1) - index if index >= size else index
    return min(max(index, 0), size - 1)


def _padded_rows(mosaic: torch.Tensor, first: int, stop: int, scratch: dict | None = None) -> torch.Tensor:
    """Rows ``first:stop`` of the mosaic padded as :func:`_pad_for_packing` pads it, without padding
    the whole image: equal wherever a kernel has a non-zero weight. Needs H, W >= 6."""
    batch, _, height, width = mosaic.shape
    rows = scratch_tensor(scratch, "rows", (batch, 1, stop - first, width + 4 + width % 2), mosaic)
    top = first - 2  # the mosaic row of the first buffer row
    valid = range(max(top, 0), min(stop - 2, height))
    rows[:, :, valid.start - top : valid.stop - top, 2 : 2 + width].copy_(mosaic[:, :, valid.start : valid.stop])
    for row in range(top, stop - 2):  # beyond the first/last row: reflected
        if row not in valid:
            rows[:, :, row - top, 2 : 2 + width].copy_(mosaic[:, :, _reflect(row, height)])
    for column in (-2, -1, *range(width, width + 2 + width % 2)):
        rows[..., column + 2].copy_(rows[..., _reflect(column, width) + 2])
    return rows


def _interpolate_packed(
    q: torch.Tensor, pattern: str, method: str, out: torch.Tensor | None = None, scratch: dict | None = None
) -> torch.Tensor:
    """Demosaic padded packed planes ``(B, 4, n + 2, m + 2)`` (tile order).

    Each output channel at each tile position is one small weighted sum of shifted plane slices at
    packed resolution (instead of full-resolution 5x5 kernels on every pixel and a selection);
    partial sums shared by several outputs are computed once.

    With ``out``, a ``(B, 3, 4, n, m)`` buffer, the sums are accumulated in place into it, phase by
    phase (no autograd), and it is returned. Without it the result is built out of place (autograd
    records it) and interleaved: ``(B, 3, 2n, 2m)``. ``scratch`` holds reusable temporaries
    (:func:`~isplab.isp._params.scratch_tensor`).
    """
    rows, cols = q.shape[-2:]
    n, m = rows - 2, cols - 2
    inplace = out is not None
    sums: dict[tuple[Tap, ...], torch.Tensor] = {}

    def tap_sum(taps: tuple[Tap, ...]) -> torch.Tensor:
        if taps not in sums:
            slices = [q[:, p, r : r + n, c : c + m] for p, r, c in taps]
            if len(slices) == 1:
                total = slices[0]
            elif inplace:
                total = torch.add(slices[0], slices[1], out=scratch_tensor(scratch, len(sums), slices[0].shape, q))
            else:
                total = slices[0] + slices[1]
            for more in slices[2:]:
                total = total.add_(more) if inplace else total + more
            sums[taps] = total
        return sums[taps]

    results = []
    for index, recipe in enumerate(_plan(pattern, method)):
        (weight, taps), rest = recipe[0], recipe[1:]
        if inplace:
            target = out[:, index // 4, index % 4]
            torch.mul(tap_sum(taps), weight, out=target)
            for weight, taps in rest:
                target.add_(tap_sum(taps), alpha=weight)
        else:
            target = tap_sum(taps) * weight if weight != 1.0 else tap_sum(taps)
            for weight, taps in rest:
                target = torch.add(target, tap_sum(taps), alpha=weight)
            results.append(target)
    if inplace:
        return out
    return F.pixel_shuffle(torch.stack(results, dim=1), 2)  # (B, 12 = channel x position, n, m) -> (B, 3, 2n, 2m)


def demosaic_packed(
    mosaic: torch.Tensor,
    pattern: str,
    method: str,
    *,
    prepare: Callable[[torch.Tensor, bool], torch.Tensor] | None = None,
    finish: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    needs_grad: bool = False,
) -> torch.Tensor:
    """Demosaic with per-phase sums on packed planes, with hooks for the per-pixel ops around it.

    Args:
        mosaic: ``(B, 1, H, W)``.
        pattern: a checked CFA pattern; method: ``"malvar"`` or ``"bilinear"``.
        prepare: per-site op on padded packed planes ``(B, 4, n, m)`` in tile order before
            demosaicing (white balance, clipping), called as ``prepare(planes, inplace)``.
        finish: per-pixel op after demosaicing (colour matrix, gamma), called as
            ``finish(rgb, buffer)`` on ``(B, 3, ...)`` camera RGB (any layout after the channel
            dimension); it returns the same shape. ``buffer`` is ``None`` out of place, else a
            tensor like ``rgb`` that it may use for its result (and ``rgb`` is its to overwrite).
        needs_grad: an input of ``prepare``/``finish`` requires a gradient.

    In place (``inplace`` true, a ``buffer`` given) the hooks may modify their arguments (buffers
    of the function's own) and must record no autograd graph. That is the case when no gradient is
    needed and nothing traces the call: a CPU image is then processed in chunks of packed rows, so
    that temporaries stay in cache and are reused from chunk to chunk, on
    ``torch.get_num_threads()`` threads. Otherwise it is processed in one piece, out of place.

    Returns:
        ``(B, 3, H, W)``, contiguous.
    """
    check_image(mosaic, 1, "mosaic")
    height, width = mosaic.shape[-2:]
    batch, h, w = mosaic.shape[0], (height + 1) // 2, (width + 1) // 2
    grad = torch.is_grad_enabled() and (needs_grad or mosaic.requires_grad)
    if grad or not eager_inplace_ok():
        q = F.pixel_unshuffle(_pad_for_packing(mosaic, method), 2)
        out = _interpolate_packed(q if prepare is None else prepare(q, False), pattern, method)
        out = out if finish is None else finish(out, None)
    else:
        if min(height, width) < 6:
            padded = _pad_for_packing(mosaic, method)  # tiny: pad it all (raises if too small)

            def rows_of(first: int, stop: int, scratch: dict) -> torch.Tensor:
                return padded[:, :, first:stop]
        else:

            def rows_of(first: int, stop: int, scratch: dict) -> torch.Tensor:
                return _padded_rows(mosaic, first, stop, scratch)

        out = mosaic.new_empty(batch, 3, 2 * h, 2 * w)
        chunked = mosaic.device.type == "cpu"
        step = max(1, _CHUNK_ELEMENTS // max(1, w * batch)) if chunked else h

        def chunk(top: int, scratch: dict) -> None:
            bottom = min(h, top + step)
            rows = rows_of(2 * top, 2 * bottom + 4, scratch)
            q = scratch_tensor(scratch, "q", (batch, 4, bottom - top + 2, w + 2), mosaic)
            for position in range(4):  # strided copies: much faster than pixel_(un)shuffle on the CPU
                q[:, position].copy_(rows[:, 0, position // 2 :: 2, position % 2 :: 2])
            if prepare is not None:
                q = prepare(q, True)
            rgb = scratch_tensor(scratch, "rgb", (batch, 3, 4, bottom - top, w), mosaic)
            rgb = _interpolate_packed(q, pattern, method, out=rgb, scratch=scratch)
            if finish is not None:
                rgb = finish(rgb, scratch_tensor(scratch, "finish", rgb.shape, mosaic))
            for position in range(4):
                dy, dx = divmod(position, 2)
                out[:, :, 2 * top + dy : 2 * bottom : 2, dx::2].copy_(rgb[:, :, position])

        if chunked:
            run_chunks(chunk, range(0, h, step))
        else:
            chunk(0, {})
    if out.shape[-2:] != (height, width):
        out = out[..., :height, :width].contiguous()
    return out


def demosaic_bilinear(mosaic: torch.Tensor, pattern: str) -> torch.Tensor:
    """Bilinear demosaicing (each colour interpolated from its own nearest samples only).

    Args:
        mosaic: ``(B, 1, H, W)`` Bayer mosaic, H, W >= 2.
        pattern: CFA pattern, e.g. ``"RGGB"``.

    Returns:
        ``(B, 3, H, W)`` RGB, same dtype and device; not clipped.
    """
    return demosaic_packed(mosaic, check_pattern(pattern), "bilinear")


def demosaic_malvar(mosaic: torch.Tensor, pattern: str) -> torch.Tensor:
    """Malvar-He-Cutler (2004) gradient-corrected linear demosaicing with its 5x5 kernels.

    Args:
        mosaic: ``(B, 1, H, W)`` Bayer mosaic, H, W >= 3.
        pattern: CFA pattern, e.g. ``"RGGB"``.

    Returns:
        ``(B, 3, H, W)`` RGB, same dtype and device; not clipped (the kernels can overshoot).
    """
    return demosaic_packed(mosaic, check_pattern(pattern), "malvar")


def demosaic(mosaic: torch.Tensor, pattern: str, method: str = "malvar") -> torch.Tensor:
    """Demosaic a ``(B, 1, H, W)`` Bayer mosaic to ``(B, 3, H, W)`` RGB with ``method`` in :data:`METHODS`."""
    if method == "malvar":
        return demosaic_malvar(mosaic, pattern)
    if method == "bilinear":
        return demosaic_bilinear(mosaic, pattern)
    raise IsplabError(f"unknown demosaic method {method!r}: expected one of {', '.join(METHODS)}")
