"""White balance: per-channel gains on RGB images, Bayer mosaics and packed planes.

Gains are ``(3,)`` for the batch or ``(B, 3)`` per sample, in R, G, B order; both greens of a
Bayer tile get the G gain.
"""

from __future__ import annotations

import torch

from isplab.errors import IsplabError
from isplab.isp._params import as_float_tensor, cfa_map, check_image, per_sample
from isplab.isp.bayer import channel_index

# RGB channel of each packed plane R, Gr, Gb, B.
_PLANE_CHANNELS = [0, 1, 1, 2]


def apply_wb(rgb: torch.Tensor, gains) -> torch.Tensor:
    """Multiply ``(B, 3, H, W)`` RGB by ``gains`` ``(3,)`` or ``(B, 3)``."""
    check_image(rgb, 3, "rgb")
    return rgb * per_sample(gains, rgb, (3,), "gains")[:, :, None, None]


def apply_wb_mosaic(mosaic: torch.Tensor, gains, pattern: str) -> torch.Tensor:
    """Multiply each site of a ``(B, 1, H, W)`` Bayer mosaic by its colour's gain (``(3,)`` or ``(B, 3)``)."""
    check_image(mosaic, 1, "mosaic")
    tile = per_sample(gains, mosaic, (3,), "gains")[:, channel_index(pattern)]
    return mosaic * cfa_map(tile, *mosaic.shape[-2:])


def apply_wb_planes(planes: torch.Tensor, gains) -> torch.Tensor:
    """Multiply ``(B, 4, h, w)`` R, Gr, Gb, B planes by RGB ``gains`` ``(3,)`` or ``(B, 3)``."""
    check_image(planes, 4, "planes")
    return planes * per_sample(gains, planes, (3,), "gains")[:, _PLANE_CHANNELS, None, None]


def gains_from_neutral(neutral) -> torch.Tensor:
    """White-balance gains that map a neutral (grey) camera response to equal R, G, B.

    Args:
        neutral: ``(..., 3)`` camera RGB of a neutral surface (e.g. DNG AsShotNeutral), all > 0.

    Returns:
        ``(..., 3)`` gains ``1 / neutral`` scaled so the green gain is 1, same dtype as a float tensor
        ``neutral``, else float64.
    """
    neutral = as_float_tensor(neutral)
    if neutral.ndim < 1 or neutral.shape[-1] != 3:
        raise IsplabError(f"neutral must have shape (..., 3) (camera R, G, B), got {tuple(neutral.shape)}")
    if not bool((neutral > 0).all()):
        raise IsplabError(f"neutral must be positive in every channel, got {neutral.tolist()}")
    return neutral[..., 1:2] / neutral
