"""Image resizing: to a fixed size, or to fit a box keeping the aspect ratio.

``mode="area"`` is a box filter weighting each source pixel by its overlap with the output pixel's
footprint, the definition OpenCV's ``INTER_AREA`` uses when shrinking: exact for any scale factor,
not only integer ones. ``"bilinear"``/``"bicubic"`` are :func:`torch.nn.functional.interpolate`
(half-pixel centres, ``align_corners=False``), optionally antialiased when shrinking.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from isplab.errors import IsplabError
from isplab.isp._params import check_image

MODES = ("area", "bilinear", "bicubic")


def _area_weights(n_in: int, n_out: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and overlap weights ``(n_out, K)`` of a 1-D box resampling ``n_in -> n_out``.

    Output pixel ``i`` covers ``[i * s, (i + 1) * s)`` in source pixels (``s = n_in / n_out``);
    its value is the mean of the source over that interval, i.e. each source pixel ``j`` weighted by
    ``|[j, j + 1) ∩ [i s, (i + 1) s)| / s``. K bounds the number of source pixels touched.
    """
    scale = n_in / n_out
    taps = math.ceil(scale) + 1
    start = torch.arange(n_out, dtype=torch.float64) * scale
    first = start.floor()
    index = first[:, None] + torch.arange(taps, dtype=torch.float64)  # (n_out, K)
    overlap = torch.minimum(index + 1, start[:, None] + scale) - torch.maximum(index, start[:, None])
    weights = overlap.clamp(min=0.0) / scale
    index = index.clamp(max=n_in - 1).long()  # taps past the edge have zero weight
    return index.to(like.device), weights.to(like)


def _area_resize_last(x: torch.Tensor, n_out: int) -> torch.Tensor:
    """Box-resample the last dimension of ``x`` to ``n_out`` samples."""
    index, weights = _area_weights(x.shape[-1], n_out, x)
    taps = x.index_select(-1, index.reshape(-1)).unflatten(-1, index.shape)  # (..., n_out, K)
    return (taps * weights).sum(-1)


def resize(img: torch.Tensor, size: tuple[int, int], mode: str = "area", antialias: bool = True) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to ``size = (W, H)`` (OpenCV's width-first order).

    Args:
        img: ``(B, C, H, W)`` float.
        size: output ``(width, height)``, both >= 1.
        mode: one of :data:`MODES`; ``"area"`` is meant for shrinking (when enlarging it repeats
            pixels, blending only where an output pixel straddles two source pixels).
        antialias: low-pass before shrinking in ``"bilinear"``/``"bicubic"`` (as PIL does);
            ``"area"`` is always antialiased.

    Returns:
        ``(B, C, height, width)``, differentiable.
    """
    check_image(img, None, "img")
    if mode not in MODES:
        raise IsplabError(f"unknown resize mode {mode!r}: expected one of {', '.join(MODES)}")
    width, height = _check_size(size, "size")
    if mode == "area":
        out = _area_resize_last(img, width)
        return _area_resize_last(out.transpose(-1, -2), height).transpose(-1, -2)
    return F.interpolate(img, size=(height, width), mode=mode, align_corners=False, antialias=antialias)


def fit_size(width: int, height: int, max_size: int | tuple[int, int]) -> tuple[int, int]:
    """Largest ``(W, H)`` with the aspect ratio of ``width x height`` that fits in ``max_size``.

    ``max_size`` is a square side or a ``(W, H)`` box. The scale is ``min(box_W / W, box_H / H)``
    (so smaller images are enlarged, as keras-retinanet's ``resize_image`` does); sizes are rounded
    to the nearest integer, at least 1.
    """
    box_w, box_h = _check_size((max_size, max_size) if isinstance(max_size, int) else max_size, "max_size")
    scale = min(box_w / width, box_h / height)
    return (min(box_w, max(1, math.floor(width * scale + 0.5))), min(box_h, max(1, math.floor(height * scale + 0.5))))


def resize_keep_aspect(
    img: torch.Tensor, max_size: int | tuple[int, int], mode: str = "area", antialias: bool = True
) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to the largest size fitting in ``max_size`` (see :func:`fit_size`)."""
    check_image(img, None, "img")
    return resize(img, fit_size(img.shape[-1], img.shape[-2], max_size), mode=mode, antialias=antialias)


def _check_size(size, name: str) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise IsplabError(f"{name} must be a (width, height) pair of positive integers, got {size!r}")
    return int(size[0]), int(size[1])
