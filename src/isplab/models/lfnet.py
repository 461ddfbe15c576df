"""LFNet: a compact learned ISP built around one local fusion block (MAI 2021, 7th place entry).

The entry's README describes "a very compact CNN with a local fusion block": stacked adaptive
weight residual units, termed RRDB (residual in residual dense blocks), followed by a local
residual fusion unit (LRFU) that fuses their multi-level outputs, inspired by RDN (Zhang et al.,
CVPR 2018). Its code is not available to us, so this is our reading of that description:

* head: 3x3 conv ``4 -> C`` on the packed raw (the body runs at the packed resolution);
* ``num_blocks`` RRDBs, each ``units`` residual dense units (``layers`` densely connected
  3x3 conv + LeakyReLU of growth ``C``, then a 1x1 fusion conv back to ``C``); every residual
  add, inner and outer, is *adaptive*: ``a * x + b * f(x)`` with learnable scalars ``a, b``
  (initialised to 1 and 0.2, as ESRGAN's fixed 0.2 residual scaling);
* LRFU: the RRDB outputs concatenated, a 1x1 conv to ``C``, a 3x3 conv, plus the head features
  (a local residual over the whole fusion block);
* tail: 3x3 conv ``C -> 12`` and pixel shuffle (x2) to ``(B, 3, 2h, 2w)``, then a sigmoid.

No pooling, so any ``h, w`` works (``size_multiple = 1``).
"""

from __future__ import annotations

import torch
from torch import nn

LEAKY_SLOPE = 0.2


class AdaptiveResidual(nn.Module):
    """``a * x + b * body(x)`` with learnable scalars ``a`` (init 1) and ``b`` (init ``scale``)."""

    def __init__(self, body: nn.Module, scale: float = 0.2) -> None:
        super().__init__()
        self.body = body
        self.a = nn.Parameter(torch.ones(1))
        self.b = nn.Parameter(torch.full((1,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x + self.b * self.body(x)


class DenseUnit(nn.Module):
    """``layers`` densely connected 3x3 conv + LeakyReLU (growth ``C``) and a 1x1 fusion to ``C``.

    ``(B, C, h, w) -> (B, C, h, w)``.
    """

    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels * (i + 1), channels, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)
            )
            for i in range(layers)
        )
        self.fuse = nn.Conv2d(channels * (layers + 1), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs:
            features.append(conv(torch.cat(features, dim=1)))
        return self.fuse(torch.cat(features, dim=1))


def rrdb(channels: int, units: int, layers: int) -> AdaptiveResidual:
    """Residual in residual dense block: adaptive residuals around each unit and around all."""
    inner = [AdaptiveResidual(DenseUnit(channels, layers)) for _ in range(units)]
    return AdaptiveResidual(nn.Sequential(*inner))


class LFNet(nn.Module):
    """Local fusion network: ``(B, 4, h, w)`` packed raw -> ``(B, 3, 2h, 2w)`` RGB in ``(0, 1)``.

    Args:
        num_maps_base: Feature width ``C``.
        num_blocks: Number of RRDBs in the local fusion block.
        units: Residual dense units per RRDB.
        layers: Dense conv layers per unit.
    """

    size_multiple = 1

    def __init__(
        self, num_maps_base: int = 16, num_blocks: int = 3, units: int = 2, layers: int = 2
    ) -> None:
        super().__init__()
        c = num_maps_base
        self.head = nn.Conv2d(4, c, 3, padding=1)
        self.blocks = nn.ModuleList(rrdb(c, units, layers) for _ in range(num_blocks))
        self.lrfu = nn.Sequential(nn.Conv2d(c * num_blocks, c, 1), nn.Conv2d(c, c, 3, padding=1))
        self.tail = nn.Sequential(nn.Conv2d(c, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head(x)
        outputs = []
        y = head
        for block in self.blocks:
            y = block(y)
            outputs.append(y)
        fused = self.lrfu(torch.cat(outputs, dim=1)) + head
        return torch.sigmoid(self.tail(fused))
