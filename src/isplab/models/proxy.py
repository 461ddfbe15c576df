"""Parameter-conditioned U-Net: a differentiable stand-in ("proxy") for one image-processing block.

The architecture of the DarkProxies seed: a U-Net whose encoder levels have ``width``,
``2 width``, ... ``2^depth width`` channels (default ``width=32, depth=4``: 32, 64, 128, 256,
512), with the block's parameters broadcast as constant channels and concatenated to the input
and to the input of every encoder level. How the network's output ``y`` acts on the input is the
``head``:

- ``"add"`` (the seed's): ``out = x + y`` (``C`` output channels);
- ``"affine"`` (default): ``out = x * exp(g) + b`` with ``g, b`` the ``2 C`` output channels, a
  per-pixel, per-channel gain and offset. Exposure (``x * 2^EV``) and white balance (``x * m_c``)
  are then a gain that is a smooth function of the parameters alone, which a residual ``x + y``
  can only approximate pixel value by pixel value; anything the additive head can represent, the
  affine head can too (``g = 0``). The log-gain is bounded smoothly, ``g = 4 tanh(y_g / 4)``
  (gains from 1/55 to 55, i.e. +-5.8 EV), so that one bad step cannot blow the output up: with a
  hard clamp at +-12 a colorbalancergb proxy diverged after a few hundred steps.
- ``"matrix"``: a per-pixel ``C x C`` colour matrix and offset, ``out = (I + L) x + b`` with ``L, b``
  the ``C^2 + C`` output channels (HDRNet's local affine colour transforms). A block that is a
  colour matrix is then a constant ``L``.
- ``"global"``: first a **global** colour transform that depends on the parameters alone, then the
  ``"matrix"`` head's local one: ``z = exp(g) * ((I + D) x) + o`` with ``g`` (bounded like the
  affine log-gain), ``D`` (``C x C``) and ``o`` from a small MLP of the unit parameters, and
  ``out = (I + L) z + b`` with ``L, b`` from the U-Net. What of a block is a global colour
  transform with coefficients that depend on the parameters is represented by the MLP, the same
  for every image, so it generalises to images never seen; the U-Net only has to learn what is
  left (``proxy train`` also scores ``z`` alone against the target, weight ``global_weight``, so
  that the MLP explains all it can). Measured on darktable 4.2.1's renders (linear Rec.709 float
  export, ``benchmarks/proxy.py --ceiling``): one least-squares gain per sample reproduces
  ``exposure`` to 77 dB PSNR or better (100 dB on average); a 3x3 matrix + offset reproduces
  ``temperature`` to 41 dB on average (the rest is spatial: the multipliers act before
  demosaicking).

- ``"pointwise"``: like ``"global"``, but the colour transform is computed **per pixel**, from
  the pixel's colour and the parameters, by an MLP of 1x1 convolutions (``MLP_WIDTH`` hidden, 3
  layers): ``z = exp(g) * ((I + D) x) + o`` with ``(g, D, o)`` functions of ``(log2(|x| + 2^-12)
  / 12, clamp(x, -2, 2), unit)`` (log features because darktable's linear values span decades),
  then the ``"matrix"`` head's local correction. A per-pixel colour operation that is not one
  matrix per image (colorbalancergb's chroma, saturation and vibrance, clipping) is then learned
  once, the same for every image. ``global_weight`` scores ``z`` alone as for ``"global"``.
- ``"blur"``: for blocks that blur the whole image and then map colours in CIE Lab (darktable's
  ``lowpass``): first a Gaussian blur in CIE Lab (D50) with replicated edges,
  ``lab + a (G_sigma * lab - lab)``, with ``sigma`` and the mix ``a`` from an MLP of the
  parameters, those with a positive range also on a log scale (:meth:`ProxyUNet.log_unit`; ``a = 0``
  at init), then a per-pixel colour map **in Lab**:
  ``lab' = exp(g) * ((I + D) lab) + o`` with ``(g, D, o)`` from an MLP (1x1 convolutions) of the
  pixel's ``(L, a, b) / 100`` and the parameters (:meth:`ProxyUNet.lab_colour_transform`), then the
  U-Net's ``"matrix"`` correction. Lowpass's contrast and brightness are a curve of ``L`` and its
  saturation a factor on ``a, b``, simple in Lab but not in RGB: with the blur fixed at
  ``sigma = radius`` the RGB pixel map of ``"pointwise"`` reaches 25.9 dB on held-out images, the
  Lab one 37.7 dB with a hidden width of ``LAB_MLP_WIDTH`` = 128 (34.6 at 64), 2500 steps (``benchmarks/proxy.py``). Darktable
  4.2.1's lowpass at neutral contrast, brightness and saturation is this blur with
  ``sigma = radius`` (``benchmarks/proxy.py --ceiling``, 12 renders of 256x192 synthetic images,
  radius 0.2-459: 62.4 dB mean, 57.5 dB worst). The blur is applied as ``H x H`` and
  ``W x W`` matrices, ``O(H W (H + W))`` per image: fine at training sizes, slow at 12 MP on a
  CPU. Its ``sigma`` is in the pixels of the training images: train it on whole images
  (``proxy train --patch 0``; a crop's blur is not the crop of the image's blur) and apply it at
  that resolution.

- ``"unsharp"``: for darktable's ``sharpen`` (an unsharp mask of CIE Lab ``L``): first, in CIE Lab
  (D50) of the linear RGB input, ``d = L - G_sigma * L`` (``L`` in 0..100),
  ``L' = L + amount * sign(d) max(|d| - threshold, 0)``, ``a, b`` kept, back to linear RGB
  (:meth:`ProxyUNet.unsharp_transform`, :func:`unsharp_detail`), then the U-Net's ``"matrix"``
  correction. ``G_sigma`` is darktable's kernel: a Gaussian sampled at integer offsets, truncated at
  ``rad = min(12, ceil(2.5 sigma))`` pixels, normalised to sum 1, applied separably; the ``rad``
  rows and columns at the image's edges are left unsharpened, and an image smaller than
  ``2 rad + 1`` on a side, or ``rad = 0``, passes through. ``(sigma, amount, threshold)`` come from
  an MLP of the parameters and their logs (:meth:`ProxyUNet.unsharp_params`: ``sigma = 2 + 4 o_0``,
  ``amount = 2 o_1``, ``threshold = 10 o_2`` L units, sigma and threshold clamped at 0 with a
  straight-through gradient), its last layer zero at init: amount 0, so an untrained proxy is
  exactly the identity. darktable 4.2.1's sharpen *is* this formula at ``sigma = radius``:
  ``lab_unsharp_mask`` reproduces all 384 renders of a sharpen dataset (256x192 texture and
  dead-leaves images, radius 0-8, amount 0-2, threshold 0-10) to 118.3 dB mean, 115.7 median,
  86.5 worst (``benchmarks/proxy.py --ceiling``), so what is left to learn is the map from the
  parameters to ``(sigma, amount, threshold)`` (``proxy train`` fits that MLP alone first, on whole
  images: ``--pixel-steps``). It needs whole images (``proxy train --patch 0``): the edges of a
  crop are not the image's. Measured (``benchmarks/proxy.py --fidelity``, that dataset, 2000 pre-fit
  steps and 100 whole-image U-Net steps, 8.2 min on a shared 2-core CPU): 69.8 / 71.3 / 69.5 dB on
  held-out images / parameters / both, 62.0 dB on the held-out-image samples sharpen changes
  (identity 26.6, ``"affine"`` 29.7), parameter regression error 0.37 % of the ranges, render-back
  72.0 dB. Its blur is a separable convolution of at most 25 taps (not the ``"blur"`` head's dense matrices).

``cfa_phase`` (any head; for blocks that act on the raw mosaic before demosaicking, such as
darktable's ``temperature``): the input first goes through ``x + K(unit, phase) * x``, a 3x3
linear filter (``C -> C`` channels, plus an offset) whose coefficients an MLP computes from the
parameters, one set for each of the four pixels of the 2x2 colour-filter tile
(:meth:`ProxyUNet.cfa_filter`), and the U-Net gets each pixel's row and column parity as two more
input channels. Demosaicking a scaled mosaic is not scaling the demosaiced image: near edges the
difference depends on which colour the sensor measured at the pixel, which convolutions cannot
tell. Pixel ``(0, 0)`` of every input must have the colour filter of pixel ``(0, 0)`` of the
training images (``proxy train`` crops such blocks' images at even offsets and does not flip
them). Measured on darktable 4.2.1's ``temperature`` (``benchmarks/proxy.py --fidelity``): see
there.

The last layer of the U-Net (and of each MLP) is zero-initialised, so an untrained proxy is the
identity.

Parameters enter **normalised to [0, 1]**: ``u = (value - low) / (high - low)`` over the ranges
the model was built with (``ranges``); :meth:`ProxyUNet.to_unit` and :meth:`ProxyUNet.from_unit`
convert. What the ranges and parameter names mean is the caller's business (the proxy workflow
stores its block and dataset description in ``meta``); this module holds no workflow logic.

Shapes: ``x`` ``(B, C, H, W)`` (any ``H, W``: padded internally to a multiple of ``2^depth`` by
reflection and cropped back), ``unit`` ``(B, P)``; output ``(B, C, H, W)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from isplab.errors import IsplabError
from isplab.models.checkpoint import load_model, save_model

__all__ = ["GLOBAL_HEADS", "PROXY_ARCHS", "PROXY_HEADS", "ProxyUNet", "build_proxy_model", "lab_gaussian_blur", "lab_unsharp_mask",
           "unsharp_detail", "save_proxy_model", "load_proxy_model"]

PROXY_ARCHS = ("unet",)
PROXY_HEADS = ("affine", "add", "matrix", "global", "pointwise", "blur", "unsharp")
#: Heads with a part computed without the U-Net (``forward(..., with_global=True)`` returns it).
GLOBAL_HEADS = ("global", "pointwise", "blur", "unsharp")
#: Output channels of the U-Net per image channel ``C`` for each head.
_HEAD_CHANNELS = {"affine": lambda c: 2 * c, "add": lambda c: c, "matrix": lambda c: c * c + c, "global": lambda c: c * c + c,
                  "pointwise": lambda c: c * c + c, "blur": lambda c: c * c + c, "unsharp": lambda c: c * c + c}  # fmt: skip
MLP_WIDTH = 64  # hidden width of the "global" head's parameter MLP and of the "pointwise" head's pixel MLP
#: Hidden width of the "blur" head's Lab pixel MLP (lowpass's colour map, pixel part alone with the
#: blur fixed, 2500 steps: 37.7 dB on held-out images at 128 against 34.6 at 64; benchmarks/proxy.py).
LAB_MLP_WIDTH = 128
LOG_FLOOR = 2.0**-12  # the "pointwise" head's log features: log2(|x| + LOG_FLOOR) / 12
BLUR_LOG_SIGMA0 = 3.0  # the "blur" head's sigma at init: exp(3) = 20 pixels
BLUR_LOG_SIGMA_SCALE = 4.0  # log sigma = BLUR_LOG_SIGMA0 + 4 x the MLP's output: Adam moves it 4x faster
#: Linear Rec.709 RGB -> CIE XYZ (D50, Bradford-adapted), divided by the D50 white: the "blur"
#: head's CIE Lab is ``f(LAB_MATRIX @ rgb)`` up to a linear map (which a blur commutes with).
LAB_MATRIX = (
    (0.4360747 / 0.9642, 0.3850649 / 0.9642, 0.1430804 / 0.9642),
    (0.2225045, 0.7168786, 0.0606169),
    (0.0139322 / 0.8249, 0.0971045 / 0.8249, 0.7141733 / 0.8249),
)
_LAB_E = 6.0 / 29.0
#: ``(L, a, b) / 100`` from the ``f`` values ``(f_x, f_y, f_z)`` (:func:`_lab_f` of ``LAB_MATRIX @ rgb``): ``LAB_FROM_F @ f + LAB_OFFSET``.
LAB_FROM_F = ((0.0, 1.16, 0.0), (5.0, -5.0, 0.0), (0.0, 2.0, -2.0))
LAB_OFFSET = (-0.16, 0.0, 0.0)
#: The "unsharp" head's kernel half-width: ``min(UNSHARP_MAX_RADIUS, ceil(UNSHARP_TRUNCATE * sigma))``
#: pixels (darktable's sharpen.c: ``d->radius = 2.5 * radius``, ``MAXR = 12``, Gaussian sigma = radius).
UNSHARP_TRUNCATE = 2.5
UNSHARP_MAX_RADIUS = 12
UNSHARP_SIGMA0 = 2.0  # the "unsharp" head's sigma at init (pixels); sigma = 2 + 4 x the MLP's output
UNSHARP_SIGMA_SCALE = 4.0
UNSHARP_AMOUNT_SCALE = 2.0  # amount = 2 x the MLP's output (Adam moves it 2x faster)
UNSHARP_THRESHOLD_SCALE = 10.0  # threshold (Lab L units, 0..100) = 10 x the MLP's output
GAIN_BOUND = 4.0  # the affine head's log-gain bound (see the module docstring)
CONFIG_KEY = "proxy_config"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ProxyUNet(nn.Module):
    """The seed's U-Net with parameter channels (see the module docstring).

    Args:
        ranges: ``[(low, high), ...]``, one per parameter, ``low < high``.
        channels: image channels ``C`` (3 for RGB).
        width: channels of the first level.
        depth: down-sampling steps (``depth + 1`` levels, the deepest ``2^depth * width`` wide).
        head: ``"affine"``, ``"add"``, ``"matrix"``, ``"global"``, ``"pointwise"``, ``"blur"`` or
            ``"unsharp"`` (see the module docstring).
        cfa_phase: for blocks that act on the raw mosaic before demosaicking: a colour-filter-phase
            dependent 3x3 filter of the input from the parameters (:meth:`cfa_filter`) and the
            pixels' row and column parity as two more U-Net input channels at full resolution
            (:meth:`cfa_phase_planes`); see the module docstring.
    """

    def __init__(
        self, ranges: list[tuple[float, float]], channels: int = 3, width: int = 32, depth: int = 4, head: str = "affine",
        cfa_phase: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if not ranges:
            raise IsplabError("a proxy needs at least one parameter (ranges is empty)")
        for low, high in ranges:
            if not float(high) > float(low):
                raise IsplabError(f"bad parameter range [{low}, {high}]: expected low < high")
        if width < 1 or depth < 0 or channels < 1:
            raise IsplabError(f"bad proxy size: width {width}, depth {depth}, channels {channels} (expected >= 1, >= 0, >= 1)")
        if head not in PROXY_HEADS:
            raise IsplabError(f"unknown proxy head {head!r}: expected one of {', '.join(PROXY_HEADS)}")
        self.n_params, self.channels, self.width, self.depth, self.head_kind = len(ranges), channels, width, depth, head
        self.register_buffer("low", torch.tensor([float(r[0]) for r in ranges]), persistent=False)
        self.register_buffer("high", torch.tensor([float(r[1]) for r in ranges]), persistent=False)
        p = self.n_params
        widths = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        self.cfa_phase = bool(cfa_phase)
        if self.cfa_phase:  # per phase (4), output channel (C): 3x3 taps of C channels and an offset
            self.cfa_mlp = nn.Sequential(
                nn.Linear(p, MLP_WIDTH), nn.LeakyReLU(0.2), nn.Linear(MLP_WIDTH, MLP_WIDTH), nn.LeakyReLU(0.2),
                nn.Linear(MLP_WIDTH, 4 * channels * (9 * channels + 1)),
            )  # fmt: skip
            nn.init.zeros_(self.cfa_mlp[-1].weight)
            nn.init.zeros_(self.cfa_mlp[-1].bias)
        cin = channels + (2 if self.cfa_phase else 0)
        for w in widths:
            self.encoders.append(_block(cin + p, w))
            cin = w
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(depth, 0, -1):
            self.ups.append(nn.ConvTranspose2d(widths[level], widths[level - 1], 2, stride=2))
            self.decoders.append(_block(2 * widths[level - 1], widths[level - 1]))
        self.head = nn.Conv2d(widths[0], _HEAD_CHANNELS[head](channels), 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if head == "global":
            c = channels
            self.global_mlp = nn.Sequential(
                nn.Linear(p, MLP_WIDTH), nn.LeakyReLU(0.2), nn.Linear(MLP_WIDTH, MLP_WIDTH), nn.LeakyReLU(0.2),
                nn.Linear(MLP_WIDTH, c + c * c + c),
            )  # fmt: skip
            nn.init.zeros_(self.global_mlp[-1].weight)
            nn.init.zeros_(self.global_mlp[-1].bias)
        if head in ("blur", "unsharp"):  # parameters (and their logs) -> (log sigma, mix) or (sigma, amount, threshold)
            mlp = nn.Sequential(
                nn.Linear(2 * p, MLP_WIDTH), nn.LeakyReLU(0.2), nn.Linear(MLP_WIDTH, MLP_WIDTH), nn.LeakyReLU(0.2),
                nn.Linear(MLP_WIDTH, 2 if head == "blur" else 3),
            )  # fmt: skip
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)
            setattr(self, "blur_mlp" if head == "blur" else "unsharp_mlp", mlp)
            if channels != 3:
                raise IsplabError(f"the {head} head works in CIE Lab: it needs 3 (RGB) channels, not {channels}")
            lab = torch.tensor(LAB_MATRIX)
            self.register_buffer("lab_matrix", lab, persistent=False)
            self.register_buffer("lab_inverse", torch.linalg.inv(lab), persistent=False)
            self.register_buffer("lab_from_f", torch.tensor(LAB_FROM_F), persistent=False)
            self.register_buffer("lab_offset", torch.tensor(LAB_OFFSET), persistent=False)
        if head in ("pointwise", "blur"):
            c = channels
            hidden = LAB_MLP_WIDTH if head == "blur" else MLP_WIDTH
            self.pixel_mlp = nn.Sequential(
                nn.Conv2d((3 if head == "blur" else 2 * c) + p, hidden, 1), nn.LeakyReLU(0.2), nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.2),
                nn.Conv2d(hidden, c + c * c + c, 1),
            )  # fmt: skip
            nn.init.zeros_(self.pixel_mlp[-1].weight)
            nn.init.zeros_(self.pixel_mlp[-1].bias)

    @property
    def size_multiple(self) -> int:
        return 2**self.depth

    def to_unit(self, values: torch.Tensor) -> torch.Tensor:
        """Parameter values ``(B, P)`` -> ``(values - low) / (high - low)``."""
        return (values - self.low) / (self.high - self.low)

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """Unit values ``(B, P)`` -> ``low + unit * (high - low)``."""
        return self.low + unit * (self.high - self.low)

    def forward(self, x: torch.Tensor, unit: torch.Tensor, *, with_global: bool = False):
        """``x`` ``(B, C, H, W)``, ``unit`` ``(B, P)`` in [0, 1] -> ``(B, C, H, W)``.

        ``with_global`` (the :data:`GLOBAL_HEADS`): return ``(out, z)``,
        ``z`` the image before the U-Net's correction, so that training can also score it on its own (what it cannot explain is left to
        the U-Net, rather than split between the two arbitrarily).
        """
        if with_global and self.head_kind not in GLOBAL_HEADS:
            raise IsplabError(f"with_global needs the 'global' or 'pointwise' head (or 'blur', 'unsharp'), this proxy's is {self.head_kind!r}")
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise IsplabError(f"proxy expects images (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if unit.ndim != 2 or unit.shape != (x.shape[0], self.n_params):
            raise IsplabError(f"proxy expects parameters ({x.shape[0]}, {self.n_params}), got {tuple(unit.shape)}")
        if self.cfa_phase:
            x = self.cfa_filter(x, unit)
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        mode = "reflect" if ph < h and pw < w else "replicate"
        y = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
        u = unit.to(x.dtype)[:, :, None, None]
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level:
                y = F.max_pool2d(y, 2)
            planes = [y, u.expand(-1, -1, *y.shape[-2:])]
            if level == 0 and self.cfa_phase:
                planes.append(self.cfa_phase_planes(y))
            y = encoder(torch.cat(planes, dim=1))
            skips.append(y)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips[:-1])):
            y = decoder(torch.cat([up(y), skip], dim=1))
        y = self.head(y)[..., :h, :w]
        if self.head_kind == "add":
            return x + y
        if self.head_kind == "affine":
            gain, offset = y.split(self.channels, dim=1)
            return x * torch.exp(GAIN_BOUND * torch.tanh(gain / GAIN_BOUND)) + offset
        if self.head_kind == "global":
            z = self.global_transform(x, unit)
        elif self.head_kind == "pointwise":
            z = self.pointwise_transform(x, unit)
        elif self.head_kind == "blur":
            z = self.lab_colour_transform(self.blur_transform(x, unit), unit)
        elif self.head_kind == "unsharp":
            z = self.unsharp_transform(x, unit)
        else:
            z = x
        out = z + _apply_matrix(y, z)
        return (out, z) if with_global else out

    def cfa_filter(self, x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """``cfa_phase``: ``x + K * x`` with ``K`` a 3x3 filter from ``C`` to ``C`` channels plus an
        offset, its coefficients from an MLP of ``unit`` (0 at init: the identity), one set per
        phase ``(i % 2, j % 2)`` of pixel ``(i, j)``; edges replicated."""
        b, c, h, w = x.shape
        n = 9 * c
        k = self.cfa_mlp(unit.to(x.dtype)).view(b, 4, c, n + 1)
        taps = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3).view(b, n, h, w)  # channel-major, then the 3x3 taps
        out = torch.zeros_like(x)
        for row in range(2):
            for col in range(2):
                coef = k[:, 2 * row + col]
                out[:, :, row::2, col::2] = torch.einsum("bcn,bnhw->bchw", coef[..., :n], taps[:, :, row::2, col::2]) + coef[..., n, None, None]
        return x + out

    @staticmethod
    def cfa_phase_planes(x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, H, W)`` for ``x`` ``(B, C, H, W)``: row parity ``i % 2`` and column parity
        ``j % 2`` of pixel ``(i, j)`` (0 or 1, ``x``'s dtype and device): the ``cfa_phase`` channels."""
        b, _, h, w = x.shape
        rows = (torch.arange(h, device=x.device) % 2).to(x.dtype)[:, None].expand(h, w)
        cols = (torch.arange(w, device=x.device) % 2).to(x.dtype)[None, :].expand(h, w)
        return torch.stack([rows, cols])[None].expand(b, -1, -1, -1)

    def global_transform(self, x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """The ``"global"`` head's image-independent part: ``exp(g) * ((I + D) x) + o`` with
        ``(g, D, o)`` from the MLP of ``unit`` (see the module docstring)."""
        c = self.channels
        gain, matrix, offset = self.global_mlp(unit.to(x.dtype)).split([c, c * c, c], dim=1)
        gain = torch.exp(GAIN_BOUND * torch.tanh(gain / GAIN_BOUND))
        z = x + torch.einsum("bij,bjhw->bihw", matrix.view(-1, c, c), x)
        return gain[:, :, None, None] * z + offset[:, :, None, None]

    def pointwise_transform(self, x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """The ``"pointwise"`` head's per-pixel part: ``exp(g) * ((I + D) x) + o`` with ``(g, D, o)``
        per pixel from an MLP (1x1 convolutions) of the pixel's colour and ``unit`` (see the module
        docstring). Features: ``log2(|x| + 2^-12) / 12`` (darktable's linear values span decades),
        ``x`` clamped to [-2, 2] (its sign and scale), and ``unit``."""
        c, b = self.channels, x.shape[0]
        features = torch.cat(
            [torch.log2(x.abs() + LOG_FLOOR) / 12.0, x.clamp(-2.0, 2.0), unit.to(x.dtype)[:, :, None, None].expand(b, -1, *x.shape[-2:])], dim=1
        )
        gain, matrix, offset = self.pixel_mlp(features).split([c, c * c, c], dim=1)
        gain = torch.exp(GAIN_BOUND * torch.tanh(gain / GAIN_BOUND))
        z = x + torch.einsum("bijhw,bjhw->bihw", matrix.view(b, c, c, *x.shape[-2:]), x)
        return gain * z + offset

    def colour_transform(self, x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """The per-pixel colour map of the ``"pointwise"`` head (:meth:`pointwise_transform`, in RGB) or
        of the ``"blur"`` head (:meth:`lab_colour_transform`, in CIE Lab)."""
        if self.head_kind == "blur":
            return self.lab_colour_transform(x, unit)
        return self.pointwise_transform(x, unit)

    def lab_colour_transform(self, x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """The ``"blur"`` head's per-pixel colour map in CIE Lab: ``lab = (L, a, b) / 100`` of the
        linear RGB ``x``, ``lab' = exp(g) * ((I + D) lab) + o`` with ``(g, D, o)`` per pixel from
        an MLP (1x1 convolutions) of ``(lab, unit)`` (``lab`` clamped to [-3, 3]), back to linear RGB
        as ``x + rgb(lab') - rgb(lab)`` (exactly ``x`` at init, when the MLP's output is 0)."""
        c, b = self.channels, x.shape[0]
        to_lab, offset = self.lab_from_f.to(x.dtype), self.lab_offset.to(x.dtype)[None, :, None, None]
        f = self._lab_f_of(x)
        lab = torch.einsum("ij,bjhw->bihw", to_lab, f) + offset
        features = torch.cat([lab.clamp(-3.0, 3.0), unit.to(x.dtype)[:, :, None, None].expand(b, -1, *x.shape[-2:])], dim=1)
        gain, matrix, shift = self.pixel_mlp(features).split([c, c * c, c], dim=1)
        gain = torch.exp(GAIN_BOUND * torch.tanh(gain / GAIN_BOUND))
        mapped = gain * (lab + torch.einsum("bijhw,bjhw->bihw", matrix.view(b, c, c, *x.shape[-2:]), lab)) + shift
        f_mapped = f + torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_lab), mapped - lab)  # f itself when the map is the identity
        return x + (self._rgb_from_f(f_mapped) - self._rgb_from_f(f))

    def log_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """``(B, P)``: each parameter with a positive range on a log scale,
        ``(log value - log low) / (log high - log low)``, the others as ``unit``. A radius of 0.1 to
        500 pixels is then as easy to map to a blur sigma at 1 pixel as at 300."""
        positive = self.low > 0
        low, high = self.low.clamp(min=1e-12), self.high.clamp(min=1e-12)
        value = self.from_unit(unit).clamp(min=1e-12)
        logs = (torch.log(value) - torch.log(low)) / (torch.log(high) - torch.log(low))
        return torch.where(positive, logs, unit)

    def blur_sigma(self, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``"blur"`` head's Gaussian ``sigma`` (pixels) and mix ``a`` per sample, ``(B,)`` each,
        from an MLP of ``unit`` and :meth:`log_unit`."""
        log_sigma, mix = self.blur_mlp(torch.cat([unit, self.log_unit(unit)], dim=1)).unbind(dim=1)
        return torch.exp(BLUR_LOG_SIGMA0 + BLUR_LOG_SIGMA_SCALE * log_sigma), mix

    def blur_transform(self, x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """The ``"blur"`` head's first part: ``lab = f(M x)`` (CIE Lab up to a linear map),
        ``lab + a (G_sigma * lab - lab)`` back to linear RGB, with ``sigma`` and ``a`` from an MLP
        of ``unit`` (:meth:`blur_sigma`; ``a = 0`` at init: the identity). ``G_sigma`` is a
        Gaussian integrated over each pixel, edges replicated, applied as two ``H x H`` and
        ``W x W`` matrices (exact for any sigma, also one larger than the image; cost
        ``O(H W (H + W))`` per image)."""
        sigma, mix = self.blur_sigma(unit.to(x.dtype))
        lab = self._lab_f_of(x)
        mixed = lab + mix[:, None, None, None] * (_gaussian(lab, sigma) - lab)
        return x + (self._rgb_from_f(mixed) - self._rgb_from_f(lab))  # exactly x when a = 0 (the round trip's rounding cancels)

    def unsharp_params(self, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``"unsharp"`` head's Gaussian ``sigma`` (pixels, >= 0), ``amount`` and ``threshold``
        (Lab L units, >= 0; both clamped at 0 by :func:`_clamp_through`) per sample, ``(B,)`` each, from an MLP of ``unit`` and :meth:`log_unit`:
        ``sigma = 2 + 4 o_0``, ``amount = 2 o_1``, ``threshold = 10 o_2`` (``o`` = 0 at init: amount 0,
        the identity)."""
        out = self.unsharp_mlp(torch.cat([unit, self.log_unit(unit)], dim=1))
        sigma, threshold = UNSHARP_SIGMA0 + UNSHARP_SIGMA_SCALE * out[:, 0], UNSHARP_THRESHOLD_SCALE * out[:, 2]
        return _clamp_through(sigma), UNSHARP_AMOUNT_SCALE * out[:, 1], _clamp_through(threshold)

    def unsharp_transform(self, x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """The ``"unsharp"`` head's part before the U-Net: an unsharp mask of CIE Lab ``L``
        (:func:`unsharp_detail`) with ``sigma``, ``amount`` and ``threshold`` from
        :meth:`unsharp_params`, ``a`` and ``b`` kept, back to linear RGB as ``x + rgb(L', a, b) -
        rgb(L, a, b)`` (exactly ``x`` where the detail is 0)."""
        sigma, amount, threshold = self.unsharp_params(unit.to(x.dtype))
        return _unsharp_rgb(x, self._lab_f_of(x), sigma, amount, threshold, self._rgb_from_f)

    def _lab_f_of(self, x: torch.Tensor) -> torch.Tensor:
        """Linear RGB ``(B, 3, H, W)`` -> the CIE Lab ``f`` values ``f(LAB_MATRIX x)``."""
        return _lab_f(torch.einsum("ij,bjhw->bihw", self.lab_matrix.to(x.dtype), x))

    def _rgb_from_f(self, f: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_lab_f_of`."""
        return torch.einsum("ij,bjhw->bihw", self.lab_inverse.to(f.dtype), _lab_f_inverse(f))


def lab_gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Linear Rec.709 ``x`` ``(B, 3, H, W)`` blurred in CIE Lab (D50) by the ``"blur"`` head's
    Gaussian (``sigma`` pixels, one per image or one for all; see :meth:`ProxyUNet.blur_transform`)."""
    lab_matrix = torch.tensor(LAB_MATRIX, dtype=x.dtype, device=x.device)
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
    lab = _gaussian(_lab_f(torch.einsum("ij,bjhw->bihw", lab_matrix, x)), sigma)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(lab_matrix), _lab_f_inverse(lab))


def lab_unsharp_mask(x: torch.Tensor, sigma, amount, threshold) -> torch.Tensor:
    """Linear Rec.709 ``x`` ``(B, 3, H, W)`` after the ``"unsharp"`` head's unsharp mask of CIE Lab
    ``L`` (:func:`unsharp_detail`; ``sigma`` pixels, ``amount``, ``threshold`` in L units, each one
    per image or one for all): darktable's sharpen at radius ``sigma``."""
    lab_matrix = torch.tensor(LAB_MATRIX, dtype=x.dtype, device=x.device)
    inverse = torch.linalg.inv(lab_matrix)
    per_image = lambda v: torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])  # noqa: E731
    f = _lab_f(torch.einsum("ij,bjhw->bihw", lab_matrix, x))
    back = lambda v: torch.einsum("ij,bjhw->bihw", inverse, _lab_f_inverse(v))  # noqa: E731
    return _unsharp_rgb(x, f, per_image(sigma), per_image(amount), per_image(threshold), back)


def _unsharp_rgb(x, f, sigma, amount, threshold, back) -> torch.Tensor:
    """``x`` with Lab ``L = 116 f_y - 16`` moved by ``amount * detail`` and ``a, b`` kept: every ``f``
    moves by ``amount * detail / 116``; ``back`` maps ``f`` to linear RGB."""
    detail = unsharp_detail(116.0 * f[:, 1:2], sigma, threshold)
    return x + (back(f + amount[:, None, None, None] * detail / 116.0) - back(f))


def unsharp_detail(lum: torch.Tensor, sigma: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """darktable's sharpen detail of ``lum`` ``(B, 1, H, W)`` (Lab ``L``, 0..100): ``d = L - G * L``,
    ``sign(d) max(|d| - threshold, 0)``, with ``G`` the Gaussian of ``sigma`` (``(B,)``) sampled at
    integer offsets, truncated at ``rad = min(12, ceil(2.5 sigma))`` and normalised to sum 1, applied
    separably; 0 within ``rad`` pixels of the image's edges (darktable copies them unsharpened), and
    everywhere when ``rad = 0`` or the image is smaller than ``2 rad + 1`` on a side. Differentiable
    in ``sigma`` (the kernel's weights, not its width) and ``threshold``."""
    b, _, h, w = lum.shape
    rad = torch.ceil(UNSHARP_TRUNCATE * sigma.detach()).clamp(0, UNSHARP_MAX_RADIUS).long()
    big = int(rad.max()) if b else 0
    if big == 0:
        return torch.zeros_like(lum)
    taps = torch.arange(-big, big + 1, device=lum.device, dtype=lum.dtype)
    kernel = torch.exp(-(taps**2)[None, :] / (2 * sigma.clamp(min=1e-3)[:, None] ** 2)) * (taps.abs()[None, :] <= rad[:, None])
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    padded = F.pad(lum, (big, big, big, big), mode="replicate").transpose(0, 1)  # (1, B, H + 2 big, W + 2 big): one group per image
    blurred = F.conv2d(F.conv2d(padded, kernel[:, None, :, None], groups=b), kernel[:, None, None, :], groups=b).transpose(0, 1)
    diff = lum - blurred
    detail = torch.sign(diff) * F.relu(diff.abs() - threshold[:, None, None, None])
    rows, cols = torch.arange(h, device=lum.device), torch.arange(w, device=lum.device)
    r = rad[:, None]
    inside_rows = (rows[None, :] >= r) & (rows[None, :] < h - r) & (r > 0)
    inside_cols = (cols[None, :] >= r) & (cols[None, :] < w - r)
    return detail * (inside_rows[:, None, :, None] & inside_cols[:, None, None, :])


def _clamp_through(v: torch.Tensor) -> torch.Tensor:
    """``max(v, 0)`` whose gradient is 1 also below 0 (a straight-through clamp): a threshold or
    sigma pushed below 0 early in training can still come back (with a plain clamp it stays dead)."""
    return v + (v.clamp(min=0.0) - v).detach()


def _gaussian(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    rows, cols = _blur_matrix(x.shape[-2], sigma), _blur_matrix(x.shape[-1], sigma)
    return torch.einsum("bij,bcjw,bkw->bcik", rows, x, cols)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    """CIE Lab's ``f``: the cube root above ``(6/29)^3``, linear below (also for negative values)."""
    return torch.where(t > _LAB_E**3, t.clamp(min=_LAB_E**3).pow(1.0 / 3.0), t / (3 * _LAB_E**2) + 4.0 / 29.0)


def _lab_f_inverse(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s > _LAB_E, s.pow(3), 3 * _LAB_E**2 * (s - 4.0 / 29.0))


def _blur_matrix(n: int, sigma: torch.Tensor) -> torch.Tensor:
    """``(B, n, n)``: row ``i`` holds the mass of a Gaussian centred on pixel ``i`` (``sigma`` per
    sample) over each pixel ``[j - 1/2, j + 1/2]``, the tails beyond the edges on the edge pixels
    (edges replicated), so every row sums to 1."""
    i = torch.arange(n, dtype=sigma.dtype, device=sigma.device)
    edges = torch.cat([i.new_full((1,), -1e9), i[1:] - 0.5, i.new_full((1,), 1e9)])
    t = (edges[None, None, :] - i[None, :, None]) / sigma.clamp(min=1e-3)[:, None, None]
    cdf = 0.5 * (1 + torch.erf(t * 0.7071067811865476))
    return cdf[..., 1:] - cdf[..., :-1]


def _apply_matrix(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``L x + b`` per pixel, with ``y`` ``(B, C^2 + C, H, W)`` holding ``L`` (row-major) then ``b``."""
    c = x.shape[1]
    matrix, offset = y.split([c * c, c], dim=1)
    return torch.einsum("bijhw,bjhw->bihw", matrix.view(x.shape[0], c, c, *x.shape[-2:]), x) + offset


def build_proxy_model(
    ranges: list[tuple[float, float]] | list[list[float]],
    *,
    arch: str = "unet",
    channels: int = 3,
    width: int = 32,
    depth: int = 4,
    head: str = "affine",
    cfa_phase: bool = False,
    meta: dict[str, Any] | None = None,
) -> ProxyUNet:
    """Build a proxy by architecture name; ``meta`` (JSON-like: what the proxy models) is stored
    with the weights and available as ``model.proxy_config["meta"]``.

    Raises:
        IsplabError: unknown ``arch``, empty or inverted ranges, or a bad size.
    """
    if arch not in PROXY_ARCHS:
        raise IsplabError(f"unknown proxy arch {arch!r}: expected one of {', '.join(PROXY_ARCHS)}")
    ranges = [(float(lo), float(hi)) for lo, hi in ranges]
    model = ProxyUNet(ranges, channels=channels, width=width, depth=depth, head=head, cfa_phase=cfa_phase)
    model.proxy_config = {
        "arch": arch,
        "ranges": [list(r) for r in ranges],
        "channels": channels,
        "width": width,
        "depth": depth,
        "head": head,
        "cfa_phase": bool(cfa_phase),
        "meta": dict(meta or {}),
    }
    return model


def save_proxy_model(model: nn.Module, path: str | Path) -> Path:
    """Save a model built by :func:`build_proxy_model` (state dict + build config + meta)."""
    return save_model(model, path, CONFIG_KEY, "build_proxy_model")


def load_proxy_model(path: str | Path) -> ProxyUNet:
    """Load a model written by :func:`save_proxy_model` (CPU, eval mode).

    Raises:
        IsplabError: missing file, or not an isplab proxy model.
    """

    def build(c: dict) -> ProxyUNet:
        return build_proxy_model(
            c["ranges"],
            arch=c["arch"],
            channels=c["channels"],
            width=c["width"],
            depth=c["depth"],
            head=c.get("head", "add"),  # files written before the affine head existed
            cfa_phase=c.get("cfa_phase", False),  # files written before the option existed
            meta=c.get("meta"),
        )

    return load_model(path, CONFIG_KEY, build, "proxy model")
