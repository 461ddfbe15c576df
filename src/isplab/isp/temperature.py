"""Correlated colour temperature (CCT), CIE 1931 xy chromaticity and mireds.

All functions take numbers, arrays or tensors of any shape (non-tensors become float64 tensors)
and are differentiable. Temperatures are in kelvin; a mired is ``1e6 / K``.
"""

from __future__ import annotations

import torch

from isplab.errors import IsplabError
from isplab.isp._params import as_float_tensor

#: Domain of :func:`cct_to_xy` (Kang et al. 2002), in kelvin.
KANG_RANGE = (1667.0, 25000.0)
XY_TO_CCT_METHODS = ("mccamy1992", "hernandez1999")


def _check_xy(xy) -> torch.Tensor:
    xy = as_float_tensor(xy)
    if xy.ndim < 1 or xy.shape[-1] != 2:
        raise IsplabError(f"xy must have shape (..., 2) (CIE 1931 x, y), got {tuple(xy.shape)}")
    return xy


def cct_to_xy(cct) -> torch.Tensor:
    """CIE 1931 xy of the Planckian radiator at ``cct`` kelvin (Kang et al. 2002 cubic splines).

    Kang, Moon, Hong, Lee, Cho & Kim, "Design of advanced color temperature control system for HDTV
    applications", J. Korean Phys. Soc. 41 (2002). Valid for 1667-25000 K.

    Args:
        cct: ``(...)`` temperatures in [1667, 25000] K.

    Returns:
        ``(..., 2)`` chromaticities.
    """
    t = as_float_tensor(cct)
    if bool(((t < KANG_RANGE[0]) | (t > KANG_RANGE[1])).any()):
        raise IsplabError(
            f"cct must be within {KANG_RANGE[0]:.0f}..{KANG_RANGE[1]:.0f} K (Kang 2002 locus), got {t.tolist()}"
        )
    u = 1e3 / t  # the splines are cubics in 1000 / T
    x = torch.where(
        t <= 4000,
        -0.2661239 * u**3 - 0.2343589 * u**2 + 0.8776956 * u + 0.179910,
        -3.0258469 * u**3 + 2.1070379 * u**2 + 0.2226347 * u + 0.240390,
    )
    y_low = -1.1063814 * x**3 - 1.34811020 * x**2 + 2.18555832 * x - 0.20219683
    y_mid = -0.9549476 * x**3 - 1.37418593 * x**2 + 2.09137015 * x - 0.16748867
    y_high = 3.0817580 * x**3 - 5.8733867 * x**2 + 3.75112997 * x - 0.37001483
    y = torch.where(t <= 2222, y_low, torch.where(t <= 4000, y_mid, y_high))
    return torch.stack([x, y], dim=-1)


def xy_to_cct(xy, method: str = "mccamy1992") -> torch.Tensor:
    """Correlated colour temperature (kelvin) of CIE 1931 chromaticities ``(..., 2) -> (...)``.

    Accuracies below are measured on the Planckian locus against colour-science's exact
    ``CCT_to_uv_Ohno2013``.

    Methods:
        ``"mccamy1992"`` (default, the most accurate over camera white-balance temperatures):
        McCamy, "Correlated color temperature as an explicit function of chromaticity coordinates",
        Color Res. Appl. 17 (1992), a cubic in the inverse slope. Within 0.25% (9 K) over
        2856-8000 K, 1% at 2000 K and 10000 K, then diverging (-7% at 15000 K, -22% at 25000 K).
        ``"hernandez1999"``: Hernández-Andrés, Lee & Romero, "Calculating correlated color
        temperatures across the entire gamut of daylight and skylight chromaticities", Applied
        Optics 38 (1999), exponentials fitted for 3000-50000 K plus the paper's second set of
        constants above 50000 K (to 8e5 K). Within 0.25% over 4000-25000 K, but -1.6% at 3000 K,
        -5% at 2500 K and -15% at 2000 K.
    """
    xy = _check_xy(xy)
    x, y = xy[..., 0], xy[..., 1]
    if method == "mccamy1992":
        n = (x - 0.3320) / (y - 0.1858)
        return -449.0 * n**3 + 3525.0 * n**2 - 6823.3 * n + 5520.33
    if method != "hernandez1999":
        raise IsplabError(f"unknown xy_to_cct method {method!r}: expected one of {', '.join(XY_TO_CCT_METHODS)}")
    n = (x - 0.3366) / (y - 0.1735)
    cct = (
        -949.86315
        + 6253.80338 * torch.exp(-n / 0.92159)
        + 28.70599 * torch.exp(-n / 0.20039)
        + 0.00004 * torch.exp(-n / 0.07125)
    )
    n_high = (x - 0.3356) / (y - 0.1691)
    cct_high = 36284.48953 + 0.00228 * torch.exp(-n_high / 0.07861) + 5.4535e-36 * torch.exp(-n_high / 0.01543)
    return torch.where(cct > 50000, cct_high, cct)


def cct_to_mired(cct) -> torch.Tensor:
    """Mireds ``1e6 / cct`` of temperatures in kelvin (> 0)."""
    return 1e6 / as_float_tensor(cct)


def mired_to_cct(mired) -> torch.Tensor:
    """Kelvin ``1e6 / mired`` of mireds (> 0)."""
    return 1e6 / as_float_tensor(mired)


def mired_difference(a_cct, b_cct) -> torch.Tensor:
    """``|1e6 / a - 1e6 / b|``: the perceptually more uniform distance between two temperatures."""
    return (cct_to_mired(a_cct) - cct_to_mired(b_cct)).abs()


def xy_to_xyz(xy, Y=1.0) -> torch.Tensor:  # noqa: N803 (CIE's capital Y)
    """CIE XYZ ``(..., 3)`` of chromaticities ``(..., 2)`` at luminance ``Y`` (broadcast, default 1)."""
    xy = _check_xy(xy)
    x, y = xy[..., 0], xy[..., 1]
    x, y, luminance = torch.broadcast_tensors(x, y, torch.as_tensor(Y, dtype=xy.dtype, device=xy.device))
    return torch.stack([x * luminance / y, luminance, (1.0 - x - y) * luminance / y], dim=-1)
