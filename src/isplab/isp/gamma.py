"""The sRGB transfer function (IEC 61966-2-1), exact piecewise form.

Negative values use the linear segment and values above 1 the power segment, as in
``colour.cctf_encoding(..., "sRGB")``, so the functions are defined (and invertible) everywhere.
"""

from __future__ import annotations

import torch

from isplab.isp._params import eager_inplace_ok

# End of the linear segment in linear light, and its image. The standard's rounded constants make
# the power segment start 3e-8 lower (0.04044991); values in that sliver decode linearly, as in
# colour-science, so the round trip is exact except within ~1e-8 of the breakpoint.
_LINEAR_BREAK = 0.0031308
_ENCODED_BREAK = 12.92 * _LINEAR_BREAK


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Encode linear light to sRGB: ``12.92 x`` below 0.0031308, else ``1.055 x^(1/2.4) - 0.055``.

    Any shape; differentiable everywhere (the power is evaluated on clamped input so its infinite
    slope at 0 never reaches the gradient).
    """
    if eager_inplace_ok(x):
        return linear_to_srgb_(x.clone())
    power = 1.055 * x.clamp(min=_LINEAR_BREAK) ** (1 / 2.4) - 0.055
    return torch.where(x <= _LINEAR_BREAK, 12.92 * x, power)


def linear_to_srgb_(x: torch.Tensor) -> torch.Tensor:
    """:func:`linear_to_srgb` in place on ``x`` (which it returns); the same values, no autograd.

    For buffers the caller owns (it saves a full-size temporary per step on large images).
    """
    if x.device.type == "cpu" and x.numel() and bool(x.amin() > _LINEAR_BREAK):
        return x.pow_(1 / 2.4).mul_(1.055).sub_(0.055)  # no linear segment (the common case in a chunk)
    linear = x <= _LINEAR_BREAK
    low = x * 12.92
    x.clamp_(min=_LINEAR_BREAK).pow_(1 / 2.4).mul_(1.055).sub_(0.055)
    return torch.where(linear, low, x, out=x)


def encode_srgb_fast_(x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`linear_to_srgb` in place on ``x`` (returned) with cheaper ops, to within 2e-7; no autograd.

    The power is ``exp(log(x) / 2.4)`` (equal to ``pow`` to rounding), and the two segments are joined by
    a minimum instead of a comparison and a selection: the linear segment lies above the power
    segment everywhere above the breakpoint, and below it everywhere under it except in a sliver
    of 2e-9 just under the breakpoint, where the minimum gives the power segment's start, 3e-8 lower.
    ``scratch``, a tensor like ``x``, saves allocating a temporary.
    """
    low = x * 12.92 if scratch is None else torch.mul(x, 12.92, out=scratch)
    x.clamp_(min=_LINEAR_BREAK).log_().mul_(1 / 2.4).exp_().mul_(1.055).sub_(0.055)
    return torch.minimum(x, low, out=x)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """Decode sRGB to linear light; the inverse of :func:`linear_to_srgb`. Any shape."""
    power = ((x.clamp(min=_ENCODED_BREAK) + 0.055) / 1.055) ** 2.4
    return torch.where(x <= _ENCODED_BREAK, x / 12.92, power)
