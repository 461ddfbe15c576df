"""Hand-crafted colour-constancy features of AWB zone statistics, in TFLite-friendly torch.

:func:`colour_constancy_features` turns each image's zone statistics and lux into a fixed vector
(grey world, shades of grey, grey edge, max-RGB, bright-zone means, log-chroma quantiles and
spread, saturated/dark fractions, lux). It uses only ops the TFLite export supports (no sort:
:func:`masked_quantiles` bisects), so a network computes it inside an exported model (the
``"hybrid"`` and ``"blend"`` archs of :mod:`isplab.models.awb`). The fast models fitted on these vectors and the
blends are :mod:`isplab.workflows.awb.features`'.
"""

from __future__ import annotations

import torch

__all__ = ["FEATURE_NAMES", "QUANTILE_STEPS", "colour_constancy_features", "masked_quantiles"]


#: Names of the :func:`colour_constancy_features` columns, in order.
FEATURE_NAMES = tuple(
    [f"{name}_{c}" for name in ("grey_world", "sog2", "sog4", "sog8", "edge1", "edge2", "max_rgb",
                                "bright1", "bright5", "bright10", "bright25", "log_mean") for c in "rb"]
    + [f"p{q}_{c}" for c in "rb" for q in (5, 25, 50, 75, 95)]
    + ["log_sd_r", "log_sd_b", "saturated", "dark", "log_green", "log_lux"]
)
_BRIGHT_PERCENTS = (1, 5, 10, 25)
_PERCENTILES = (5, 25, 50, 75, 95)


#: Bisection steps of :func:`masked_quantiles`: the result is within ``(max - min) / 2**16`` above the exact one.
QUANTILE_STEPS = 16


def masked_quantiles(
    values: torch.Tensor, mask: torch.Tensor, quantiles: tuple[float, ...], *, below: bool = False
) -> torch.Tensor:
    """Lower quantiles of the masked entries of each row, by bisection (no sort: TFLite's
    converter turns ``sort``/``topk`` into an op the LiteRT interpreter lacks).

    For ``q`` in ``(0, 1]`` the exact answer is the smallest masked value ``v`` with at least
    ``q * count`` masked values ``<= v`` (the ``ceil(q * count)``-th smallest); the bisection keeps
    ``F(lo) < q <= F(hi)`` and returns ``hi``, within ``(max - min) / 2**QUANTILE_STEPS`` above it.

    Args:
        values: ``(B, Z)``.
        mask: ``(B, Z)`` 1 for entries that count, 0 otherwise (a row without any gives finite junk).
        quantiles: values in ``(0, 1]``.
        below: return the bisection's ``lo`` instead, a value just below the answer (within the
            same bound): ``values > lo`` then selects the masked values ``>=`` the quantile.

    Returns:
        ``(B, len(quantiles))``.
    """
    big = 1e4
    count = mask.sum(dim=1, keepdim=True).clamp(min=1e-9)  # (B, 1)
    high = torch.where(mask > 0, values, torch.full_like(values, -big)).amax(dim=1, keepdim=True)
    low = torch.where(mask > 0, values, torch.full_like(values, big)).amin(dim=1, keepdim=True)
    low = torch.minimum(low, high)  # empty rows
    q = torch.tensor(quantiles, dtype=values.dtype, device=values.device)[None, :]  # (1, Q)
    need = (q * count)[..., None]  # (B, Q, 1): masked values that must be <= the answer
    span = (high - low).clamp(min=1e-6)
    width = (span * (1 + 1e-3))[..., None]  # (B, 1, 1): hi - lo at the start
    lo = (low - span * 1e-3).expand(-1, q.shape[1])[..., None]  # (B, Q, 1), F(lo) = 0 < q; hi = lo + width
    # Masked-out entries sit above every midpoint, so they never count (no mask product in the loop).
    counted = torch.where(mask > 0, values, torch.full_like(values, big))[:, None, :]  # (B, 1, Z)
    # The interval halves each step, so only lo is kept: one select a step (an exported graph of
    # about half the ops of keeping lo and hi).
    for step in range(1, QUANTILE_STEPS + 1):
        mid = lo + width * 0.5**step
        enough = (counted <= mid).to(values.dtype).sum(dim=2, keepdim=True) >= need
        lo = torch.where(enough, lo, mid)
    lo = lo[..., 0]
    return lo if below else lo + width[..., 0] * 0.5**QUANTILE_STEPS


def colour_constancy_features(image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
    """Classic colour-constancy statistics of each image's zones, as a feature vector.

    Zones count when they are neither saturated (every channel < 0.98) nor dark (G > 0.002).
    Each estimate of the illuminant colour ``(R, G, B)`` becomes ``log(R/G), log(B/G)``
    (channels floored at 1e-4): grey world (mean of the counted zones), shades of grey
    (``p``-norms over the counted zones, p = 2, 4, 8), grey edge (``p``-norms, p = 1, 2, of the
    absolute differences between neighbouring zones, all zones), max-RGB (per-channel maximum of
    the counted zones), the mean of the 1, 5, 10 and 25 % brightest counted zones (those whose G
    is at least the G quantile 0.99, 0.95, 0.90, 0.75 of :func:`masked_quantiles`) and the
    brightness-weighted mean log chroma (weights ``min(G, 0.5)``). Then the 5, 25, 50, 75 and
    95 % quantiles of the counted zones' log R/G and log B/G (:func:`masked_quantiles`), their
    weighted standard deviations, the fractions of saturated and of dark zones,
    ``log(mean G)`` and ``log(max(lux, 1)) / 10``. Only ops the TFLite export supports.

    Args:
        image: ``(B, H, W, 3)`` zone statistics.
        lux: ``(B,)``.

    Returns:
        ``(B, len(FEATURE_NAMES))`` float32, columns named by :data:`FEATURE_NAMES`.
    """
    eps = 1e-4
    batch, height, width, _ = image.shape
    x = image.reshape(batch, height * width, 3)
    green = x[..., 1]
    saturated = (x.amax(dim=-1) >= 0.98).to(x.dtype)
    dark = (green <= 0.002).to(x.dtype)
    valid = (1.0 - saturated) * (1.0 - dark)  # (B, Z)
    count = valid.sum(dim=1, keepdim=True) + 1e-9

    def log_ratios(rgb: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, 2)
        log_rgb = torch.log(rgb.clamp(min=eps))
        return torch.stack([log_rgb[:, 0] - log_rgb[:, 1], log_rgb[:, 2] - log_rgb[:, 1]], dim=1)

    weighted = x * valid[..., None]
    columns = [log_ratios(weighted.sum(dim=1) / count)]
    for p in (2.0, 4.0, 8.0):
        columns.append(log_ratios(((weighted ** p).sum(dim=1) / count) ** (1.0 / p)))
    dx = (image[:, :, 1:] - image[:, :, :-1]).abs().reshape(batch, -1, 3)
    dy = (image[:, 1:] - image[:, :-1]).abs().reshape(batch, -1, 3)
    for p in (1.0, 2.0):
        columns.append(log_ratios(((dx ** p).mean(dim=1) + (dy ** p).mean(dim=1)) ** (1.0 / p)))
    columns.append(log_ratios(weighted.amax(dim=1)))
    thresholds = masked_quantiles(green, valid, tuple(1.0 - q / 100 for q in _BRIGHT_PERCENTS), below=True)
    for i in range(len(_BRIGHT_PERCENTS)):
        bright = valid * (green > thresholds[:, i : i + 1]).to(x.dtype)
        columns.append(log_ratios((x * bright[..., None]).sum(dim=1) / (bright.sum(dim=1, keepdim=True) + 1e-9)))
    log_rgb = torch.log(x.clamp(min=eps))
    chroma = torch.stack([log_rgb[..., 0] - log_rgb[..., 1], log_rgb[..., 2] - log_rgb[..., 1]], dim=-1)  # (B, Z, 2)
    weight = valid * green.clamp(max=0.5)
    total = weight.sum(dim=1, keepdim=True) + 1e-9
    mean = (chroma * weight[..., None]).sum(dim=1) / total  # (B, 2)
    columns.append(mean)
    for c in range(2):
        columns.append(masked_quantiles(chroma[..., c], valid, tuple(q / 100 for q in _PERCENTILES)))
    columns.append(torch.sqrt((((chroma - mean[:, None, :]) ** 2) * weight[..., None]).sum(dim=1) / total + 1e-12))
    columns.append(torch.stack([
        saturated.mean(dim=1), dark.mean(dim=1), torch.log(green.mean(dim=1).clamp(min=eps)),
        torch.log(lux.clamp(min=1.0)) / 10.0,
    ], dim=1))
    return torch.cat(columns, dim=1)
