"""Learned-ISP models: shapes, output ranges, PUNET's reference size, cost counters, I/O, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.export import export_onnx
from isplab.export.onnx import run_onnx
from isplab.models.isp import (
    ISP_ARCHS,
    build_isp_model,
    count_macs,
    count_parameters,
    load_isp_model,
    save_isp_model,
)
from isplab.models.punet import CroppedConvTranspose2d

#: Small widths keep every test fast; punet needs a multiple of 4.
SMALL = {"punet": 4, "lfnet": 8, "nafnet": 8}
#: Odd multiples of each model's size_multiple.
ODD_SIZES = {"punet": (48, 80), "lfnet": (13, 7), "nafnet": (48, 80)}


def small_model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_isp_model(arch, SMALL[arch])


def test_punet_has_the_reference_parameter_count():
    # The number the challenge's TensorFlow PUNET reports at num_maps_base=16.
    assert count_parameters(build_isp_model("punet")) == 5_725_199


def test_punet_initialisation_matches_the_reference():
    model = build_isp_model("punet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    transposed = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    # 14 multi-blocks (4 encoder, 4 bottleneck, 6 decoder) of two convs, plus the output conv.
    assert len(convs) == 2 * 14 + 1 and len(transposed) == 5
    assert all(m.bias is None for m in transposed)
    assert all(torch.all(m.bias == 0.01) for m in convs)
    weights = torch.cat([m.weight.flatten() for m in convs + transposed])
    assert weights.abs().max() <= 0.02  # truncated at 2 std
    # A normal(0, 0.01) truncated at +-2 std has std 0.01 * 0.8796.
    assert weights.std().item() == pytest.approx(0.008796, rel=0.01)


def test_punet_upsampling_equals_the_padded_transposed_conv_and_loads_its_weights():
    """The exportable transposed conv gives the numbers of ConvTranspose2d(padding=1, output_padding=1)."""
    torch.manual_seed(0)
    layer = CroppedConvTranspose2d(6, 5)
    x = torch.randn(2, 6, 7, 9)
    expected = torch.nn.functional.conv_transpose2d(x, layer.weight, stride=2, padding=1, output_padding=1)
    assert layer(x).shape == (2, 5, 14, 18)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    # a model saved with nn.ConvTranspose2d layers (same keys and shapes) loads unchanged
    padded = nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1, bias=False)
    layer.load_state_dict(padded.state_dict())
    torch.testing.assert_close(layer(x), padded(x), atol=1e-6, rtol=1e-5)
    # and the MAC counter still sees it: each input element feeds 5 x 3 x 3 outputs
    assert count_macs(nn.Sequential(nn.Conv2d(4, 6, 1, bias=False), layer), (7, 9)) == 7 * 9 * 6 * 4 + 7 * 9 * 6 * 5 * 9


@pytest.mark.parametrize("arch", ISP_ARCHS)
def test_output_shape_at_odd_but_divisible_sizes(arch):
    model = small_model(arch)
    h, w = ODD_SIZES[arch]
    assert h % model.size_multiple == 0 and w % model.size_multiple == 0
    out = model(torch.rand(2, 4, h, w))
    assert out.shape == (2, 3, 2 * h, 2 * w)


@pytest.mark.parametrize(("arch", "low", "high"), [("punet", -0.08, 1.08), ("lfnet", 0, 1), ("nafnet", 0, 1)])
def test_output_range_holds_when_the_network_saturates(arch, low, high):
    model = small_model(arch)
    with torch.no_grad():
        # Weights 3x larger than variance-preserving ones: activations grow layer by layer until
        # the final squashing saturates at both ends.
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.normal_(0, 3 / m.weight[0].numel() ** 0.5)
        out = model(torch.rand(1, 4, 32, 32))
    assert torch.isfinite(out).all()
    assert out.min().item() >= low - 1e-6 and out.max().item() <= high + 1e-6
    # Saturated: both ends are reached, so the bounds above are the activation's, not luck.
    assert out.min().item() == pytest.approx(low, abs=1e-3)
    assert out.max().item() == pytest.approx(high, abs=1e-3)


def test_size_not_divisible_is_an_error():
    with pytest.raises(IsplabError, match=r"punet expects .*divisible by 16, got \(1, 4, 40, 48\)"):
        small_model("punet")(torch.rand(1, 4, 40, 48))
    with pytest.raises(IsplabError, match=r"nafnet expects a packed raw of shape \(B, 4, h, w\)"):
        small_model("nafnet")(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("arch", ISP_ARCHS)
def test_gradients_reach_every_parameter(arch):
    model = small_model(arch)
    x = torch.rand(2, 4, 32, 32)
    loss = (model(x) - torch.rand(2, 3, 64, 64)).pow(2).mean()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.grad.abs().sum() > 0


def test_count_macs_matches_hand_computed_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)
            self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
            self.up = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
            self.head = nn.Linear(6, 5)

        def forward(self, x):
            y = self.up(self.grouped(self.conv(x)))  # (1, 6, 20, 24)
            return self.head(y.permute(0, 2, 3, 1))

    net = Net()
    expected = (
        10 * 12 * 8 * (4 * 9)  # conv: output pixels x out channels x (in channels x kernel)
        + 10 * 12 * 8 * (2 * 9)  # grouped: 2 input channels per group
        + 10 * 12 * 8 * (6 * 9)  # transposed: each input element feeds 6 x 3 x 3 outputs
        + 20 * 24 * 5 * 6  # linear over the channel axis
    )
    assert count_macs(net, (10, 12)) == expected


def test_count_macs_leaves_the_model_untouched_and_scales_with_area():
    model = small_model("punet")
    x = torch.rand(1, 4, 32, 32)
    before = model(x)
    macs = count_macs(model, (32, 32))
    assert count_macs(model, (64, 128)) == 8 * macs
    assert next(model.parameters()).device.type == "cpu"
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize(
    ("arch", "options"),
    [("punet", {}), ("lfnet", {"num_blocks": 2}), ("nafnet", {"enc_blocks": (1, 2), "mid_blocks": 1})],
)
def test_save_load_round_trip(arch, options, tmp_path):
    torch.manual_seed(1)
    model = build_isp_model(arch, SMALL[arch], **options)
    with torch.no_grad():  # make the state differ from any fresh initialisation
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_isp_model(model, tmp_path / "sub" / "model.pt")
    loaded = load_isp_model(path)
    assert loaded.isp_config == model.isp_config
    assert not loaded.training
    x = torch.rand(1, 4, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_load_and_save_errors(tmp_path):
    with pytest.raises(IsplabError, match="ISP model file '.*missing.pt' does not exist"):
        load_isp_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(IsplabError, match=r"'.*bad.pt' is not an isplab ISP model"):
        load_isp_model(bad)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(IsplabError, match=r"'.*other.pt' is not an isplab ISP model"):
        load_isp_model(other)
    with pytest.raises(IsplabError, match="needs a model made by build_isp_model"):
        save_isp_model(nn.Conv2d(4, 3, 1), tmp_path / "x.pt")


def test_build_errors():
    with pytest.raises(IsplabError, match="unknown ISP arch 'unet': expected one of punet, lfnet, nafnet"):
        build_isp_model("unet")
    with pytest.raises(IsplabError, match="bad options .*'depth'.* for ISP arch 'lfnet'"):
        build_isp_model("lfnet", depth=3)
    with pytest.raises(IsplabError, match="multiple of 4, got 6"):
        build_isp_model("punet", 6)
    with pytest.raises(IsplabError, match=r"dec_blocks \[1\] must have one entry per level"):
        build_isp_model("nafnet", 8, enc_blocks=(1, 1), dec_blocks=(1,))


# nafnet's export takes ~10 s on one core (many small ops); the others ~2-4 s.
@pytest.mark.parametrize("arch", ["punet", "lfnet", pytest.param("nafnet", marks=pytest.mark.slow)])
def test_onnx_export_with_dynamic_size_matches_onnxruntime(arch, tmp_path):
    model = small_model(arch)
    path = tmp_path / f"{arch}.onnx"
    # export_onnx checks parity at the example size and at twice it.
    result = export_onnx(
        model, (torch.rand(1, 4, 32, 32),), path, input_names=["raw"], dynamic_axes={"raw": {2: "h", 3: "w"}}
    )
    assert all(r.passed for r in result.parity)
    h, w = ODD_SIZES[arch]
    x = torch.rand(1, 4, h, w)
    (out,) = run_onnx(path, [x.numpy()])
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert out.shape == (1, 3, 2 * h, 2 * w)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-3)
