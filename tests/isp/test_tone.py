"""Tone curves and exposure against numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.isp.tone import apply_exposure, apply_tone_curve, inverse_smoothstep_tone, smoothstep_tone

RNG = np.random.default_rng(4)


def test_smoothstep_matches_formula_and_clamps():
    x = np.linspace(-0.5, 1.5, 201)
    clamped = np.clip(x, 0, 1)
    np.testing.assert_allclose(smoothstep_tone(torch.from_numpy(x)).numpy(), 3 * clamped**2 - 2 * clamped**3)


def test_inverse_smoothstep_inverts_smoothstep():
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(inverse_smoothstep_tone(smoothstep_tone(x)), x, rtol=0, atol=1e-12)
    y = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(smoothstep_tone(inverse_smoothstep_tone(y)), y, rtol=0, atol=2e-6)
    np.testing.assert_allclose(inverse_smoothstep_tone(torch.tensor([-1.0, 2.0])).numpy(), [0.0, 1.0], atol=1e-7)


def test_tone_gradients():
    inside = torch.tensor([0.05, 0.3, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(smoothstep_tone, (inside,))
    assert torch.autograd.gradcheck(inverse_smoothstep_tone, (inside,))
    edges = torch.tensor([-0.5, 0.0, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    (smoothstep_tone(edges) + inverse_smoothstep_tone(edges)).sum().backward()
    assert not torch.isnan(edges.grad).any()


def test_tone_curve_matches_numpy_interp_shared_and_per_sample():
    x = RNG.uniform(-0.2, 1.2, size=(2, 3, 4, 5))
    curves = np.sort(RNG.random((2, 17)), axis=1)
    out = apply_tone_curve(torch.from_numpy(x), torch.from_numpy(curves))
    grid = np.linspace(0, 1, 17)
    expected = np.stack([np.interp(x[b], grid, curves[b]) for b in range(2)])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-15)
    out = apply_tone_curve(torch.from_numpy(x).float(), curves[0])
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.interp(x, grid, curves[0]), atol=1e-6)


def test_identity_curve_and_curve_ends():
    x = torch.tensor([[0.0, 0.25, 0.6, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(apply_tone_curve(x, torch.linspace(0, 1, 5, dtype=torch.float64)), x)
    torch.testing.assert_close(apply_tone_curve(x, [0.2, 0.4]), 0.2 + 0.2 * x)


def test_tone_curve_is_differentiable_in_x_and_curve():
    x = torch.tensor([[0.11, 0.37, 0.52, 0.93], [0.05, 0.48, 0.66, 0.71]], dtype=torch.float64, requires_grad=True)
    curve = torch.tensor(
        [[0.0, 0.3, 0.5, 0.9, 1.0], [0.1, 0.2, 0.6, 0.7, 0.95]], dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(apply_tone_curve, (x, curve))


def test_exposure():
    x = RNG.random((3, 3, 2, 2))
    ev = np.array([-1.0, 0.0, 2.5])
    out = apply_exposure(torch.from_numpy(x), torch.from_numpy(ev))
    np.testing.assert_allclose(out.numpy(), x * 2.0 ** ev[:, None, None, None])
    np.testing.assert_allclose(apply_exposure(torch.from_numpy(x), 1.0).numpy(), 2 * x)
    values = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    stops = torch.tensor([0.5, -0.3, 1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(apply_exposure, (values, stops))


def test_wrong_shapes_are_reported():
    with pytest.raises(IsplabError, match=r"curve must have shape \(N,\) or \(B, N\) with N >= 2 samples, got \(1,\)"):
        apply_tone_curve(torch.zeros(2, 3, 2, 2), [0.5])
    with pytest.raises(IsplabError, match=r"curve must have shape \(4,\) or \(2, 4\).*got \(3, 4\)"):
        apply_tone_curve(torch.zeros(2, 3, 2, 2), torch.zeros(3, 4))
    with pytest.raises(IsplabError, match=r"ev must have shape \(\) \(a scalar\) or \(2,\).*got \(3,\)"):
        apply_exposure(torch.zeros(2, 3, 2, 2), [0.0, 1.0, 2.0])
