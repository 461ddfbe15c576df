"""Small models shared by the export tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class ConvNet(nn.Module):
    """Two-layer conv net: (B, 4, H, W) -> image (B, 3, H, W) and its channel means (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = torch.sigmoid(self.conv2(torch.relu(self.conv1(raw))))
        return rgb, rgb.mean(dim=(2, 3))


class TwoInputNet(nn.Module):
    """AWB-style model: image (B, 3, H, W) and a per-sample scalar (B,) -> (B,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 1)

    def forward(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(image)).mean(dim=(2, 3))
        return self.head(features)[:, 0] * lux


@pytest.fixture(scope="module")
def conv_net() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet()


@pytest.fixture(scope="module")
def two_input_net() -> TwoInputNet:
    torch.manual_seed(1)
    return TwoInputNet()
