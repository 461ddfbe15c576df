"""The builtin backend: each op's defining property, on real synthetic DNGs where it renders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.workflows.proxy import builtin
from isplab.workflows.proxy.blocks import get_block


def _image(seed=0, shape=(2, 3, 24, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 0.8 + 0.02


def test_exposure_is_darktables_formula():
    x = _image()
    assert torch.allclose(builtin.exposure(x, 1.0), 2 * x)
    assert torch.allclose(builtin.exposure(x, -2.0), x / 4)
    assert torch.allclose(builtin.exposure(x, 1.0, 0.1), (x - 0.1) / (0.5 - 0.1))
    per_sample = builtin.exposure(x, torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert torch.allclose(per_sample[0], 2 * x[0]) and torch.allclose(per_sample[1], x[1] / 2)


def test_colorbalancergb():
    x = _image()
    assert torch.allclose(builtin.colorbalancergb(x), x)
    grey = builtin.colorbalancergb(x, chroma_global=-1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    luma = lambda im: (torch.tensor(builtin.LUMA, dtype=im.dtype).reshape(1, 3, 1, 1) * im).sum(1)  # noqa: E731
    assert torch.allclose(luma(grey), luma(x))  # chroma keeps luminance
    fulcrum = torch.full((1, 3, 2, 2), builtin.GREY, dtype=torch.float64)
    assert torch.allclose(builtin.colorbalancergb(fulcrum, contrast=0.5), fulcrum)  # the fulcrum stays put
    bright = 2 * fulcrum
    assert torch.allclose(builtin.colorbalancergb(bright, contrast=0.5), fulcrum * 2**1.5)
    more = builtin.colorbalancergb(x, chroma_global=0.5)
    assert torch.allclose(more - luma(more)[:, None], 1.5 * (x - luma(x)[:, None]))
    # vibrance moves low-chroma colours more than saturated ones
    dull = torch.tensor([0.30, 0.32, 0.31], dtype=torch.float64).reshape(1, 3, 1, 1)
    vivid = torch.tensor([0.60, 0.10, 0.05], dtype=torch.float64).reshape(1, 3, 1, 1)
    spread = lambda im: float(im.max() - im.min())  # noqa: E731
    assert spread(builtin.colorbalancergb(dull, vibrance=0.5)) / spread(dull) > spread(
        builtin.colorbalancergb(vivid, vibrance=0.5)
    ) / spread(vivid)


def test_sharpen_adds_detail_only_where_there_is_some():
    flat = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    assert torch.allclose(builtin.sharpen(flat, 2.0, 1.0, 0.0), flat)
    x = _image()
    assert torch.allclose(builtin.sharpen(x, 2.0, 0.0, 0.5), x)
    edge = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    edge[..., 8:] = 0.5
    out = builtin.sharpen(edge, 1.5, 1.0, 0.0)
    assert out[0, 0, 8, 8] > 0.5 and out[0, 0, 8, 7] < 0.0  # overshoot both sides of the step
    big = builtin.sharpen(edge, 1.5, 1.0, 100.0)  # a threshold above the detail leaves it alone
    assert torch.allclose(big, edge)


def test_lowpass_with_neutral_settings_is_a_gaussian_blur():
    x = _image()
    assert torch.allclose(builtin.lowpass(x, 3.0), builtin.gaussian_blur(x, 3.0), atol=1e-9)
    blurred = builtin.gaussian_blur(x, 3.0)
    assert blurred.std() < 0.5 * x.std() and blurred.mean() == pytest.approx(float(x.mean()), rel=0.01)
    grey = builtin.lowpass(x, 3.0, saturation=0.0)
    assert torch.allclose(grey[:, 0], grey[:, 2])


def test_hazeremoval():
    x = _image()
    assert torch.allclose(builtin.hazeremoval(x, 0.0, 0.2), x)
    hazy = 0.5 * x + 0.4  # a veil of airlight
    assert builtin.hazeremoval(hazy, 0.8, 1.0).std() > 1.5 * hazy.std()  # contrast comes back
    assert builtin.hazeremoval(hazy, -0.5, 1.0).std() < 0.9 * hazy.std()  # negative strength adds haze


def test_ops_are_differentiable_in_their_parameters():
    x = _image()
    for op, args in [
        (builtin.exposure, {"exposure": 0.5, "black": 0.01}),
        (builtin.colorbalancergb, {"contrast": 0.2, "chroma_global": 0.1, "saturation_global": 0.1, "vibrance": 0.1}),
        (builtin.sharpen, {"amount": 0.5, "threshold": 0.1}),
        (builtin.lowpass, {"contrast": 0.8, "brightness": 0.2, "saturation": 0.5}),
        (builtin.hazeremoval, {"strength": 0.6, "distance": 1.0}),  # transmission above its floor
        (builtin.hazeremoval, {"distance": 0.3, "strength": 0.9}),  # ... and at it
    ]:
        tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in args.items()}
        image = 0.5 * x + 0.4 if op is builtin.hazeremoval else x  # hazy
        op(image, **tensors).square().mean().backward()
        checked = list(tensors)[:1] if op is builtin.hazeremoval else list(tensors)
        for name in checked:
            assert tensors[name].grad is not None and tensors[name].grad.abs() > 0, (op.__name__, name)


def test_develop_white_balance_gains_are_the_eigenvalues_of_the_colour_map(texture_dng):
    """Bilinear demosaic and the colour matrix are linear: off -> on is exactly M diag(g) M^-1."""
    temperature = get_block("temperature")
    off = builtin.render_builtin(temperature, texture_dng, None).reshape(-1, 3).astype(np.float64)
    on = builtin.render_builtin(temperature, texture_dng, {"red": 2.0, "green": 1.0, "blue": 0.5}).reshape(-1, 3)
    a, *_ = np.linalg.lstsq(off, on.astype(np.float64), rcond=None)
    assert np.abs(off @ a - on).max() < 1e-4
    assert np.sort(np.linalg.eigvals(a).real) == pytest.approx([0.5, 1.0, 2.0], abs=1e-4)


def test_render_builtin_applies_the_block_to_the_off_render(texture_dng):
    exposure = get_block("exposure")
    off = builtin.render_builtin(exposure, texture_dng, None)
    on = builtin.render_builtin(exposure, texture_dng, {"exposure": 1.5})
    assert off.shape == (96, 128, 3) and off.dtype == np.float32
    np.testing.assert_allclose(on, off * 2**1.5, rtol=1e-5, atol=1e-6)
    small = builtin.render_builtin(exposure, texture_dng, None, size=(64, 64))
    assert small.shape == (48, 64, 3)  # fits in the box, aspect kept
    assert small.mean() == pytest.approx(float(off.mean()), rel=1e-3)


def test_spatial_parameters_are_in_full_resolution_pixels():
    """At half size a 4 px radius acts as 2 px."""
    x = _image()
    sharpen = get_block("sharpen")
    values = {"radius": 4.0, "amount": 1.0, "threshold": 0.0}
    assert torch.allclose(builtin.apply_block(sharpen, x, values, scale=0.5), builtin.sharpen(x, 2.0, 1.0, 0.0))
    lowpass = get_block("lowpass")
    assert torch.allclose(
        builtin.apply_block(lowpass, x, {**lowpass.defaults(), "radius": 6.0}, scale=0.5), builtin.lowpass(x, 3.0)
    )
