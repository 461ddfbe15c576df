"""GenISP network: architecture, identity initialisation, how gains and matrix are applied, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isplab.errors import IsplabError
from isplab.models.checkpoint import save_model
from isplab.models.genisp import GenISP, genisp, load_genisp, save_genisp, shrink


def _image(b=2, h=37, w=51, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_parameter_count_and_kernels_match_the_paper():
    model = genisp()
    # ConvWB: 7x7 3->16, 5x5 16->32, 3x3 32->128, linear 128->3; ConvCC the same with 128->9;
    # ConvNet: 3x3 3->16 + IN(16), 3x3 16->64 + IN(64), 1x1 64->3.
    wb = (3 * 16 * 49 + 16) + (16 * 32 * 25 + 32) + (32 * 128 * 9 + 128) + (128 * 3 + 3)
    cc = wb - (128 * 3 + 3) + (128 * 9 + 9)
    net = (3 * 16 * 9 + 16) + 2 * 16 + (16 * 64 * 9 + 64) + 2 * 64 + (64 * 3 + 3)
    assert sum(p.numel() for p in model.parameters()) == wb + cc + net == 116015
    kernels = [m.kernel_size for m in model.conv_wb.features if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [(7, 7), (5, 5), (3, 3)]
    pools = [m.kernel_size for m in model.conv_cc.features if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [2, 2, 2]
    kernels = [m.kernel_size for m in model.convnet.layers if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [(3, 3), (3, 3), (1, 1)]


def test_colour_stages_start_as_the_identity():
    model = genisp()
    x = _image()
    assert torch.equal(model.conv_wb.gains(x), torch.ones(2, 3))
    assert torch.equal(model.conv_cc.matrix(x), torch.eye(3).expand(2, 3, 3))
    torch.testing.assert_close(model.color(x), x, rtol=0, atol=0)


def test_gains_scale_each_channel_of_the_full_resolution_image():
    model = genisp()
    with torch.no_grad():
        model.conv_wb.head.bias.copy_(torch.tensor([2.0, 3.0, 0.5]))
    x = _image(1, 300, 310)
    out = model.conv_wb(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x * torch.tensor([2.0, 3.0, 0.5])[None, :, None, None])


def test_colour_matrix_rows_are_output_channels():
    model = genisp()
    m = torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, -1.0], [0.25, 0.0, 1.5]])  # not symmetric
    with torch.no_grad():
        model.conv_cc.head.bias.copy_(m.reshape(9))
    x = _image(1, 9, 11)
    expected = np.einsum("ck,khw->chw", m.numpy(), x[0].numpy())
    np.testing.assert_allclose(model.conv_cc(x)[0].detach().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_convcc_sees_the_white_balanced_image():
    model = genisp()
    with torch.no_grad():
        model.conv_wb.head.bias.copy_(torch.tensor([2.0, 4.0, 8.0]))
    seen = []
    model.conv_cc.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = _image(1, 20, 24)
    model(x)
    torch.testing.assert_close(seen[0], x * torch.tensor([2.0, 4.0, 8.0])[None, :, None, None])


@pytest.mark.parametrize("size", [(37, 51), (256, 256), (300, 520), (3, 2)])
def test_any_size_and_batch_items_are_independent(size):
    model = genisp().eval()
    with torch.no_grad():
        model.conv_wb.head.weight.normal_(0, 0.1)  # make the gains depend on the image
        model.conv_cc.head.weight.normal_(0, 0.1)
    x = _image(3, *size)
    out = model(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out[1:2], model(x[1:2]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0], out[1])


def test_shrink_area_averages_blocks_and_bilinear_does_not():
    x = _image(1, 512, 768)
    torch.testing.assert_close(shrink(x, 256, "area"), F.interpolate(F.avg_pool2d(x, (2, 3)), size=(256, 256), mode="bilinear"))
    torch.testing.assert_close(shrink(x[..., :512, :512], 256, "area"), F.avg_pool2d(x[..., :512, :512], 2))
    assert not torch.allclose(shrink(x, 256, "bilinear"), shrink(x, 256, "area"))
    with pytest.raises(IsplabError, match="resize mode"):
        shrink(x, 256, "nearest")


def test_training_moves_the_zero_initialised_heads():
    model = genisp()
    x = _image(2, 64, 64)
    model(x).square().mean().backward()
    assert model.conv_wb.head.weight.grad.abs().sum() > 0
    assert model.conv_cc.head.weight.grad.abs().sum() > 0
    assert model.convnet.layers[0].weight.grad.abs().sum() > 0


def test_save_and_load_round_trip(tmp_path):
    model = genisp(subnet_size=64, resize_mode="bilinear")
    with torch.no_grad():
        model.conv_wb.head.bias.copy_(torch.tensor([1.5, 1.0, 0.7]))
    path = save_genisp(model, tmp_path / "genisp.pt")
    loaded = load_genisp(path)
    assert isinstance(loaded, GenISP) and not loaded.training
    assert loaded.genisp_config == model.genisp_config
    assert loaded.genisp_config["resize_mode"] == "bilinear" and loaded.conv_wb.size == 64
    x = _image(1, 40, 48)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    # the generic helper the brief names works too
    save_model(model, tmp_path / "b.pt", "genisp_config", "isplab.models.genisp.genisp")
    torch.testing.assert_close(load_genisp(tmp_path / "b.pt")(x), model(x))


def test_bad_configs_and_files(tmp_path):
    with pytest.raises(IsplabError, match="unknown GenISP option"):
        genisp(width=3)
    with pytest.raises(IsplabError, match="resize mode"):
        genisp(resize_mode="cubic")
    with pytest.raises(IsplabError, match="does not exist"):
        load_genisp(tmp_path / "missing.pt")
    torch.save({"proxy_config": {}, "state_dict": {}}, tmp_path / "proxy.pt")
    with pytest.raises(IsplabError, match=r"proxy.pt' is not an isplab GenISP model: it is an isplab proxy model"):
        load_genisp(tmp_path / "proxy.pt")
    with pytest.raises(IsplabError, match="expects a \\(B, 3, H, W\\)"):
        genisp()(torch.zeros(1, 4, 8, 8))
