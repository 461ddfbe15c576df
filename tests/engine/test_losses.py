"""Losses against numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.engine.losses import charbonnier, ssim_loss
from isplab.engine.metrics import ssim
from isplab.errors import IsplabError


def test_charbonnier(noisy_pair):
    pred, target = noisy_pair([0.1])
    eps = 1e-3
    expected = np.sqrt((pred.numpy() - target.numpy()) ** 2 + eps**2)
    assert charbonnier(pred, target, eps=eps).item() == pytest.approx(expected.mean(), rel=1e-10)
    assert charbonnier(pred, target, eps=eps, reduction="sum").item() == pytest.approx(expected.sum())
    assert charbonnier(pred, target, eps=eps, reduction="none").numpy() == pytest.approx(expected)
    # Smooth at zero error, unlike L1: the loss is eps and the gradient vanishes.
    zero = target.clone().requires_grad_()
    loss = charbonnier(zero, target, eps=eps)
    loss.backward()
    assert loss.item() == pytest.approx(eps) and torch.all(zero.grad == 0)
    with pytest.raises(IsplabError, match="unknown reduction 'max'"):
        charbonnier(pred, target, reduction="max")


def test_ssim_loss_is_one_minus_ssim_and_trains(noisy_pair):
    pred, target = noisy_pair([0.1, 0.2])
    assert ssim_loss(pred, target).item() == pytest.approx(1 - ssim(pred, target).item())
    assert ssim_loss(target, target).item() == pytest.approx(0.0, abs=1e-12)
    x = pred.clone().requires_grad_()
    before = ssim_loss(x, target)
    before.backward()
    with torch.no_grad():
        after = ssim_loss(x - 0.5 * x.grad / x.grad.abs().max(), target)
    assert after.item() < before.item()
