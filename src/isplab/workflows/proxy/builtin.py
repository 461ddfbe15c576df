"""The builtin backend: isplab's own differentiable ISP as a second black box.

It renders a DNG the way the darktable backend's base pipeline does, with isplab's ops: black/white
level normalisation, white balance on the mosaic (the as-shot multipliers, or the block's for
``temperature``), bilinear demosaic, the DNG colour matrix to linear Rec.709 (sRGB primaries),
no clipping. Then, for the "on" render, the block's own op (:func:`apply_block`), with the same
parameter names as darktable's module. The ops are isplab's, not copies of darktable's
algorithms: this backend exists so that everything runs where darktable is absent and as an
independent target for proxies.

Every op takes ``(B, 3, H, W)`` linear RGB and parameters as numbers or ``(B,)`` tensors and is
differentiable in both.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from isplab.errors import IsplabError
from isplab.io.raw import read_raw
from isplab.isp.color import apply_color_matrix, camera_to_srgb_matrix
from isplab.isp.demosaic import demosaic
from isplab.isp.levels import normalize_mosaic
from isplab.isp.resize import fit_size, resize
from isplab.isp.white_balance import apply_wb_mosaic
from isplab.workflows.proxy.blocks import Block

__all__ = [
    "LUMA",
    "GREY",
    "exposure",
    "colorbalancergb",
    "sharpen",
    "lowpass",
    "hazeremoval",
    "gaussian_blur",
    "apply_block",
    "develop",
    "render_builtin",
]

#: Rec.709 luminance weights (Y of linear Rec.709 RGB).
LUMA = (0.2126, 0.7152, 0.0722)
#: The grey fulcrum of contrast (18.45 %, darktable's default).
GREY = 0.1845


def _p(value, x: torch.Tensor) -> torch.Tensor:
    """A parameter as a ``(B', 1, 1, 1)`` tensor broadcastable to ``x``."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return t.reshape(-1, 1, 1, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def exposure(x: torch.Tensor, exposure=0.0, black=0.0) -> torch.Tensor:
    """``(x - black) / (2^-exposure - black)``: darktable's exposure formula. ``black = 0`` gives
    ``x * 2^exposure``."""
    return (x - _p(black, x)) / (torch.exp2(-_p(exposure, x)) - _p(black, x))


def colorbalancergb(x: torch.Tensor, contrast=0.0, chroma_global=0.0, saturation_global=0.0, vibrance=0.0) -> torch.Tensor:
    """Contrast, chroma, saturation and vibrance on linear RGB, at constant hue.

    * contrast: luminance ``Y -> GREY * (Y / GREY)^(1 + contrast)``, colours scaled with it (so
      the grey fulcrum stays put and chromaticity is kept);
    * chroma_global: the distance of each pixel from grey of the same luminance, times
      ``1 + chroma_global`` (``-1`` gives grey);
    * vibrance: the same, times ``1 + vibrance * (1 - s)`` where ``s`` in [0, 1] is the pixel's
      saturation (low-chroma colours move most);
    * saturation_global: chroma times ``1 + saturation_global`` with luminance lowered by the
      added colourfulness (``Y * (1 - 0.25 * saturation_global * s)``), unlike chroma.
    """
    y = _luma(x)
    safe = y.clamp(min=1e-6)
    c = _p(contrast, x)
    y_new = GREY * (safe / GREY).pow(1.0 + c)
    x = x * (y_new / safe)
    y = y_new
    chroma = x - y
    s = (chroma.abs().amax(dim=1, keepdim=True) / y.abs().clamp(min=1e-6)).clamp(0.0, 1.0)
    gain = (1.0 + _p(chroma_global, x)) * (1.0 + _p(vibrance, x) * (1.0 - s)) * (1.0 + _p(saturation_global, x))
    y_sat = y * (1.0 - 0.25 * _p(saturation_global, x) * s)
    return y_sat + chroma * gain


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; ``sigma`` in pixels (a number), 0 = none."""
    sigma = float(sigma)
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3.0 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def sharpen(x: torch.Tensor, radius=2.0, amount=0.5, threshold=0.5) -> torch.Tensor:
    """Unsharp mask of luminance: ``detail = Y - blur(Y, radius)``, shrunk towards 0 by
    ``threshold / 100`` (darktable's threshold is in Lab L units of 0..100), times ``amount``,
    added to every channel. ``radius`` is one number for the batch."""
    y = _luma(x)
    detail = y - gaussian_blur(y, float(radius))
    t = _p(threshold, x) / 100.0
    shrunk = torch.sign(detail) * F.relu(detail.abs() - t)
    return x + _p(amount, x) * shrunk


def lowpass(x: torch.Tensor, radius=10.0, contrast=1.0, brightness=0.0, saturation=1.0) -> torch.Tensor:
    """Blur, then contrast, brightness and saturation of the blurred image.

    Lightness ``l = cbrt(Y)``: ``l -> contrast * (l - 0.5) + 0.5``, then ``l -> l^gamma`` with
    ``gamma = 1 / (1 + brightness)`` for ``brightness >= 0`` else ``1 - brightness`` (darktable's
    brightness curve), ``Y = l^3``; colour about grey times ``saturation``. ``radius`` is one
    number for the batch.
    """
    b = gaussian_blur(x, float(radius))
    y = _luma(b)
    safe = y.clamp(min=1e-6)
    lightness = safe.pow(1.0 / 3.0)
    lightness = (_p(contrast, x) * (lightness - 0.5) + 0.5).clamp(min=1e-6)
    br = _p(brightness, x)
    gamma = torch.where(br >= 0, 1.0 / (1.0 + br.clamp(min=0)), 1.0 - br.clamp(max=0))
    y_new = lightness.pow(gamma).pow(3.0)
    colour = (b / safe - 1.0) * _p(saturation, x)
    return y_new * (1.0 + colour)


def hazeremoval(x: torch.Tensor, strength=0.2, distance=0.2, window: int = 15) -> torch.Tensor:
    """Dark-channel-prior dehazing (He et al. 2009).

    Airlight ``A`` = the mean colour of the 1 % pixels with the brightest dark channel (held
    constant for gradients); transmission ``t = 1 - strength * dark(x / A)``, kept at least
    ``1 - distance`` (and above 0.05); ``out = (x - A) / t + A``. ``strength = 0`` returns ``x``;
    negative strength adds haze.
    """
    b, _, h, w = x.shape
    k = min(window, h, w) | 1
    dark = -F.max_pool2d(-x.amin(dim=1, keepdim=True), k, stride=1, padding=k // 2)
    with torch.no_grad():
        flat = dark.reshape(b, -1)
        count = max(1, flat.shape[1] // 100)
        idx = flat.topk(count, dim=1).indices
        pixels = x.reshape(b, 3, -1)
        airlight = torch.stack([pixels[i][:, idx[i]].mean(dim=1) for i in range(b)]).clamp(min=1e-3)
    a = airlight.reshape(b, 3, 1, 1)
    dark_norm = -F.max_pool2d(-(x / a).amin(dim=1, keepdim=True), k, stride=1, padding=k // 2)
    t = 1.0 - _p(strength, x) * dark_norm
    floor = (1.0 - _p(distance, x)).clamp(min=0.05)
    t = torch.maximum(t, floor)
    return (x - a) / t + a


_OPS = {
    "exposure": exposure,
    "colorbalancergb": colorbalancergb,
    "sharpen": sharpen,
    "lowpass": lowpass,
    "hazeremoval": hazeremoval,
}
_SPATIAL = {"sharpen": ("radius",), "lowpass": ("radius",)}


def apply_block(block: Block, x: torch.Tensor, values: dict[str, float], scale: float = 1.0) -> torch.Tensor:
    """Apply ``block``'s builtin op to linear RGB ``x`` with ``values`` (every parameter).

    ``scale`` (output pixels per raw pixel) converts spatial parameters given in full-resolution
    pixels, as darktable does when it exports at a reduced size. ``temperature`` acts on the
    mosaic and is applied by :func:`develop`, not here.
    """
    if block.name == "temperature":
        raise IsplabError("temperature acts on the raw mosaic: use develop(..., gains) instead of apply_block")
    if block.name not in _OPS:
        raise IsplabError(f"block {block.name} has no builtin op: use the darktable backend")
    op = _OPS[block.name]
    kwargs = dict(values)
    for name in _SPATIAL.get(block.name, ()):
        kwargs[name] = float(kwargs[name]) * scale
    return op(x, **kwargs)


def develop(path: str | Path, gains: np.ndarray | None, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, float]:
    """Render a raw file to linear Rec.709 ``(1, 3, H, W)`` float32 with white-balance ``gains``
    (R, G, B multipliers on the mosaic; ``None``: the file's as-shot white balance).

    Returns:
        ``(image, scale)``; ``scale`` = output width / raw width (1 unless ``size`` asks for a
        smaller image, which keeps the aspect ratio within ``size``).

    Raises:
        IsplabError: the file cannot be read as a Bayer raw, or has no colour matrix.
    """
    raw = read_raw(path)
    if raw.color_matrix is None:
        raise IsplabError(f"{path} has no colour matrix (DNG ColorMatrix): the builtin backend needs one")
    mosaic = torch.from_numpy(raw.mosaic.astype(np.float32))[None, None]
    x = normalize_mosaic(mosaic, raw.black_level, raw.white_level, raw.cfa_pattern, clip=False)
    wb = raw.wb_gains if gains is None else np.asarray(gains, dtype=np.float64)
    x = apply_wb_mosaic(x, torch.as_tensor(wb, dtype=torch.float32), raw.cfa_pattern)
    x = demosaic(x, raw.cfa_pattern, "bilinear")
    x = apply_color_matrix(x, camera_to_srgb_matrix(raw.color_matrix).float())
    scale = 1.0
    if size is not None:
        h, w = x.shape[-2:]
        target = fit_size(w, h, size)
        if target[0] < w:
            x = resize(x, target, mode="area")
            scale = target[0] / w
    return x, scale


def render_builtin(block: Block, path: str | Path, values: dict[str, float] | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """The builtin backend's render of one raw: block off (``values=None``) or on.

    Returns:
        ``(H, W, 3)`` float32 linear Rec.709, unclipped.
    """
    with torch.no_grad():
        if block.name == "temperature":
            gains = np.ones(3) if values is None else np.array([values["red"], values["green"], values["blue"]])
            x, _ = develop(path, gains, size)
        else:
            x, scale = develop(path, None, size)
            if values is not None:
                x = apply_block(block, x, block.check_values(values), scale)
    return x[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32)
