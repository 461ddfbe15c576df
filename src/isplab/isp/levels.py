"""Black/white level normalisation of raw data: raw DN <-> [0, 1].

``normalized = (raw - black) / (white - black)`` with one black level per Bayer plane (R, Gr, Gb, B,
the order of :mod:`isplab.isp.bayer`) and one white level per image.
"""

from __future__ import annotations

import torch

from isplab.isp._params import (
    cfa_map,
    check_image,
    eager_inplace_ok,
    per_sample,
    run_chunks,
)
from isplab.isp.bayer import tile_to_planes


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Raw DN often arrive as integers (uint16); compute in float32 then."""
    return x if not isinstance(x, torch.Tensor) or x.is_floating_point() else x.float()


def _plane_levels(planes: torch.Tensor, black_level, white_level) -> tuple[torch.Tensor, torch.Tensor]:
    """Black ``(B', 4, 1, 1)`` and white ``(B', 1, 1, 1)`` levels, broadcastable to ``planes``."""
    black = per_sample(black_level, planes, (4,), "black_level")[:, :, None, None]
    white = per_sample(white_level, planes, (), "white_level")[:, None, None, None]
    return black, white


def _mosaic_levels(mosaic: torch.Tensor, black_level, white_level, pattern: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Black ``(B', 1, H, W)`` (each plane's level at its CFA sites) and white ``(B', 1, 1, 1)``."""
    black = per_sample(black_level, mosaic, (4,), "black_level")[:, tile_to_planes(pattern)]
    white = per_sample(white_level, mosaic, (), "white_level")[:, None, None, None]
    return cfa_map(black, *mosaic.shape[-2:]), white


def normalize_planes(planes: torch.Tensor, black_level, white_level, clip: bool = True) -> torch.Tensor:
    """Map packed raw planes from DN to [0, 1].

    Args:
        planes: ``(B, 4, h, w)`` R, Gr, Gb, B planes in raw DN (integer input is promoted to float32).
        black_level: ``(4,)`` or ``(B, 4)``, per plane in R, Gr, Gb, B order.
        white_level: number, ``()`` or ``(B,)``: the saturation level in DN.
        clip: clamp the result to [0, 1].

    Returns:
        ``(B, 4, h, w)`` normalised planes.
    """
    planes = check_image(_as_float(planes), 4, "planes")
    black, white = _plane_levels(planes, black_level, white_level)
    out = (planes - black) / (white - black)
    return out.clamp(0.0, 1.0) if clip else out


def denormalize_planes(planes: torch.Tensor, black_level, white_level) -> torch.Tensor:
    """Inverse of :func:`normalize_planes` (without clipping): ``(B, 4, h, w)`` [0, 1] -> raw DN (float)."""
    check_image(planes, 4, "planes")
    black, white = _plane_levels(planes, black_level, white_level)
    return planes * (white - black) + black


def normalize_mosaic(mosaic: torch.Tensor, black_level, white_level, pattern: str, clip: bool = True) -> torch.Tensor:
    """Map a Bayer mosaic from DN to [0, 1], each site using its plane's black level.

    Args:
        mosaic: ``(B, 1, H, W)`` raw DN (integer input is promoted to float32).
        black_level: ``(4,)`` or ``(B, 4)`` in R, Gr, Gb, B order (not the sensor's tile order).
        white_level: number, ``()`` or ``(B,)``.
        pattern: the CFA pattern, e.g. ``"RGGB"``.
        clip: clamp the result to [0, 1].

    Returns:
        ``(B, 1, H, W)`` normalised mosaic.
    """
    if _integer_mosaic(mosaic) and eager_inplace_ok(black_level, white_level):
        return _normalize_integer_mosaic(mosaic, black_level, white_level, pattern, clip)
    mosaic = check_image(_as_float(mosaic), 1, "mosaic")
    black, white = _mosaic_levels(mosaic, black_level, white_level, pattern)
    out = (mosaic - black) / (white - black)
    return out.clamp(0.0, 1.0) if clip else out


# Elements per chunk of :func:`_normalize_integer_mosaic` (1 MB of float32).
_NORMALIZE_CHUNK_ELEMENTS = 1 << 18


def _integer_mosaic(mosaic) -> bool:
    """A non-empty integer ``(B, 1, H, W)`` tensor with even H and W."""
    return (
        isinstance(mosaic, torch.Tensor)
        and not mosaic.is_floating_point()
        and mosaic.ndim == 4
        and mosaic.shape[1] == 1
        and mosaic.numel() > 0
        and mosaic.shape[-2] % 2 == 0
        and mosaic.shape[-1] % 2 == 0
    )


def _normalize_integer_mosaic(mosaic: torch.Tensor, black_level, white_level, pattern: str, clip: bool) -> torch.Tensor:
    """:func:`normalize_mosaic` of raw integers (e.g. uint16 DN) straight into one float32 buffer.

    The same arithmetic per site, in place chunk by chunk (the temporaries stay in cache), with the
    levels broadcast over the 2x2 tile instead of tiled over the image.
    """
    batch, _, height, width = mosaic.shape
    out = torch.empty(mosaic.shape, dtype=torch.float32, device=mosaic.device)
    black, white = _mosaic_levels(out[..., :2, :2], black_level, white_level, pattern)  # (B', 1, 2, 2), (B', 1, 1, 1)
    scale = white - black  # per tile position, as ``white - black`` per site
    black, scale = (t.reshape(-1, 1, 1, 2, 1, 2) for t in (black, scale))  # over (B, 1, rows/2, 2, W/2, 2)
    step = 2 * max(1, _NORMALIZE_CHUNK_ELEMENTS // (2 * width * batch)) if mosaic.device.type == "cpu" else height

    def chunk(top: int, _scratch: dict) -> None:
        bottom = min(height, top + step)
        target = out[:, :, top:bottom]
        target.copy_(mosaic[:, :, top:bottom])
        sites = target.view(batch, 1, (bottom - top) // 2, 2, width // 2, 2)
        sites.sub_(black).div_(scale)
        if clip:
            sites.clamp_(0.0, 1.0)

    run_chunks(chunk, range(0, height, step))
    return out


def denormalize_mosaic(mosaic: torch.Tensor, black_level, white_level, pattern: str) -> torch.Tensor:
    """Inverse of :func:`normalize_mosaic` (without clipping): ``(B, 1, H, W)`` [0, 1] -> raw DN (float)."""
    check_image(mosaic, 1, "mosaic")
    black, white = _mosaic_levels(mosaic, black_level, white_level, pattern)
    return mosaic * (white - black) + black
