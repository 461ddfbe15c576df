"""Global tone operators: the "Unprocessing" smoothstep curve, sampled tone curves and exposure."""

from __future__ import annotations

import torch

from isplab.errors import IsplabError
from isplab.isp._params import eager_inplace_ok, per_sample


def smoothstep_tone(x: torch.Tensor) -> torch.Tensor:
    """The global tone curve of Brooks et al., "Unprocessing Images for Learned Raw Denoising", 2019.

    ``3x^2 - 2x^3`` on ``x`` clamped to [0, 1]. Any shape.
    """
    if eager_inplace_ok(x):
        return smoothstep_tone_(x.clone())
    x = x.clamp(0.0, 1.0)
    return 3.0 * x**2 - 2.0 * x**3


def smoothstep_tone_(x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`smoothstep_tone` in place on ``x`` (which it returns); the same values, no autograd.

    ``scratch``, a tensor like ``x``, saves allocating a temporary.
    """
    x.clamp_(0.0, 1.0)
    square = x**2 if scratch is None else torch.pow(x, 2, out=scratch)
    return torch.sub(square.mul_(3.0), x.pow_(3).mul_(2.0), out=x)


def inverse_smoothstep_tone(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`smoothstep_tone`: ``0.5 - sin(asin(1 - 2y) / 3)`` on ``y`` clamped to [0, 1].

    Any shape. The slope is infinite at exactly 0 and 1 (smoothstep is flat there), so gradients
    are finite only strictly inside (0, 1).
    """
    y = y.clamp(0.0, 1.0)
    return 0.5 - torch.sin(torch.asin(1.0 - 2.0 * y) / 3.0)


def apply_tone_curve(x: torch.Tensor, curve) -> torch.Tensor:
    """Map ``x`` through a global tone curve sampled at N evenly spaced points of [0, 1].

    Linear interpolation between samples, constant beyond [0, 1] (as ``numpy.interp``), and
    differentiable with respect to both ``x`` and ``curve``.

    Args:
        x: ``(B, ...)`` values, e.g. a ``(B, C, H, W)`` image.
        curve: ``(N,)`` shared or ``(B, N)`` per sample, N >= 2; ``curve[i]`` is the output at
            ``i / (N - 1)``.

    Returns:
        Same shape as ``x``.
    """
    table = torch.as_tensor(curve, dtype=x.dtype, device=x.device)
    n = table.shape[-1] if table.ndim else 0
    if n < 2:
        raise IsplabError(f"curve must have shape (N,) or (B, N) with N >= 2 samples, got {tuple(table.shape)}")
    table = per_sample(table, x, (n,), "curve").expand(x.shape[0], n)
    position = x.clamp(0.0, 1.0).reshape(x.shape[0], -1) * (n - 1)
    left = position.detach().floor().clamp(max=n - 2).long()
    frac = position - left
    lo, hi = torch.gather(table, 1, left), torch.gather(table, 1, left + 1)
    return (lo + frac * (hi - lo)).reshape(x.shape)


def apply_exposure(x: torch.Tensor, ev) -> torch.Tensor:
    """Scale ``(B, ...)`` linear values by ``2 ** ev``; ``ev`` a number, ``()`` or ``(B,)``."""
    stops = per_sample(ev, x, (), "ev")
    return x * torch.exp2(stops).reshape(-1, *([1] * (x.ndim - 1)))
