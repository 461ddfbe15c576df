"""Fixtures shared by the engine tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch


def _noisy_pair(noise: list[float], size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth-ish targets and predictions with per-image noise levels, float64 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    target = np.stack([
        np.stack([0.5 + 0.3 * np.sin(6 * xx + c + i) * np.cos(4 * yy) for c in range(3)])
        for i in range(len(noise))
    ])
    pred = target + np.array(noise)[:, None, None, None] * rng.standard_normal(target.shape)
    return torch.from_numpy(np.clip(pred, 0, 1)), torch.from_numpy(target)


@pytest.fixture
def noisy_pair() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``noisy_pair(noise_levels, size=32, seed=0) -> (pred, target)``, see :func:`_noisy_pair`."""
    return _noisy_pair
