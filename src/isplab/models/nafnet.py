"""A small NAFNet-style U-Net for learned ISP (Chen et al., "Simple Baselines for Image
Restoration", ECCV 2022), adapted to packed raw input and x2 output.

NAFNet replaces nonlinear activations by a *simple gate* (split the channels in two halves and
multiply them) and channel attention by *simplified channel attention* (global average pool, a
1x1 conv, multiply), with a channel-wise LayerNorm before each half of a block. Both are cheap
per pixel, so at the same width the network is far lighter than PUNET's dense 3x3 stacks and can
afford more depth at the low-resolution levels where it is cheapest.

Layout: 3x3 intro conv ``4 -> C``; ``len(enc_blocks)`` levels of NAF blocks each followed by a
2x2 stride-2 conv doubling the width; ``mid_blocks`` at the bottom; the decoder mirrors it with
1x1 conv + pixel shuffle upsampling and *additive* skips (as NAFNet); the end is a 3x3 conv
``C -> 12`` + pixel shuffle for the x2 output, then a sigmoid. ``size_multiple`` is
``2 ** len(enc_blocks)``.

Because of the global pool in the channel attention, the output of a tile depends (weakly) on
the whole tile: tiled inference is not exactly equal to whole-image inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from isplab.errors import IsplabError


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, H, W)`` at every pixel, with affine ``(C,)``."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class SimpleGate(nn.Module):
    """``(B, 2C, H, W) -> (B, C, H, W)``: the product of the two channel halves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """NAFNet block ``(B, C, H, W) -> (B, C, H, W)``: a gated depthwise-conv mixer with channel
    attention, then a gated 1x1 feed-forward, each a residual scaled by a learnable per-channel
    factor initialised to 0 (so a new block starts as the identity)."""

    def __init__(self, channels: int, expand: int = 2) -> None:
        super().__init__()
        c, hidden = channels, channels * expand
        self.norm1 = LayerNorm2d(c)
        self.mix = nn.Sequential(
            nn.Conv2d(c, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            SimpleGate(),
        )
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden // 2, hidden // 2, 1))
        self.project = nn.Conv2d(hidden // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.ffn = nn.Sequential(nn.Conv2d(c, hidden, 1), SimpleGate(), nn.Conv2d(hidden // 2, c, 1))
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mix(self.norm1(x))
        y = self.project(y * self.attention(y))
        x = x + self.beta * y
        return x + self.gamma * self.ffn(self.norm2(x))


class NAFNetISP(nn.Module):
    """NAFNet U-Net: ``(B, 4, h, w)`` packed raw -> ``(B, 3, 2h, 2w)`` RGB in ``(0, 1)``.

    Args:
        num_maps_base: Width ``C`` of the first level (doubled at each level).
        enc_blocks: NAF blocks per encoder level (its length is the number of levels).
        mid_blocks: NAF blocks at the bottom level.
        dec_blocks: NAF blocks per decoder level, listed from the top level down like
            ``enc_blocks``; defaults to one per level.
    """

    def __init__(
        self,
        num_maps_base: int = 16,
        enc_blocks: Sequence[int] = (1, 1, 2, 4),
        mid_blocks: int = 4,
        dec_blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        dec_blocks = [1] * len(enc_blocks) if dec_blocks is None else list(dec_blocks)
        if len(dec_blocks) != len(enc_blocks):
            raise IsplabError(
                f"dec_blocks {dec_blocks} must have one entry per level of enc_blocks {list(enc_blocks)}"
            )
        self.size_multiple = 2 ** len(enc_blocks)
        c = num_maps_base
        self.intro = nn.Conv2d(4, c, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for n in enc_blocks:
            self.encoders.append(nn.Sequential(*(NAFBlock(c) for _ in range(n))))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.Sequential(*(NAFBlock(c) for _ in range(mid_blocks)))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for n in reversed(dec_blocks):
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(c) for _ in range(n))))
        self.ending = nn.Sequential(nn.Conv2d(c, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(up(x) + skip)
        return torch.sigmoid(self.ending(x))
