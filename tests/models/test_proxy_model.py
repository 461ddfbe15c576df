"""The proxy U-Net: identity at init, parameter conditioning, gradients, normalisation, save/load."""

from __future__ import annotations

import pytest
import torch

from isplab.errors import IsplabError
from isplab.models.proxy import build_proxy_model, load_proxy_model, save_proxy_model


def _model(**kw):
    torch.manual_seed(0)
    return build_proxy_model([(-3.0, 4.0), (0.0, 2.0)], width=4, depth=2, **kw)


def _perturb_head(model):
    with torch.no_grad():
        model.head.weight.normal_(0, 0.1)
        model.head.bias.normal_(0, 0.1)


def test_identity_at_init_any_size():
    model = _model()
    x = torch.rand(2, 3, 30, 45)  # not a multiple of 4: padded and cropped back
    out = model(x, torch.rand(2, 2))
    assert out.shape == x.shape
    assert torch.equal(out, x)


def test_widths_follow_the_seed():
    model = build_proxy_model([(0.0, 1.0)])
    widths = [enc[0].out_channels for enc in model.encoders]
    assert widths == [32, 64, 128, 256, 512]
    # parameters enter every encoder level as extra channels
    assert [enc[0].in_channels for enc in model.encoders] == [3 + 1, 32 + 1, 64 + 1, 128 + 1, 256 + 1]


def test_parameters_change_the_output_and_get_gradients():
    model = _model()
    _perturb_head(model)
    x = torch.rand(1, 3, 16, 16)
    a = model(x, torch.tensor([[0.0, 0.5]]))
    b = model(x, torch.tensor([[1.0, 0.5]]))
    assert (a - b).abs().max() > 1e-4
    unit = torch.tensor([[0.3, 0.7]], requires_grad=True)
    model(x, unit).square().sum().backward()
    assert unit.grad is not None and (unit.grad.abs() > 0).all()


def test_deep_parameter_channels_matter():
    """The parameter channels of a deep level alone change the output."""
    model = _model()
    _perturb_head(model)
    x = torch.rand(1, 3, 16, 16)
    unit = torch.tensor([[0.2, 0.2]])
    before = model(x, unit)
    with torch.no_grad():
        model.encoders[2][0].weight[:, -2:].add_(1.0)  # the weights reading the parameters at level 2
    assert (model(x, unit) - before).abs().max() > 1e-5


def test_unit_normalisation():
    model = _model()
    values = torch.tensor([[-3.0, 0.0], [4.0, 2.0], [0.5, 1.0]])
    unit = model.to_unit(values)
    assert torch.allclose(unit, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]]))
    assert torch.allclose(model.from_unit(unit), values)


def test_save_load_roundtrip(tmp_path):
    model = _model(meta={"block": "exposure", "params": ["exposure", "black"]})
    _perturb_head(model)
    path = save_proxy_model(model, tmp_path / "m.pt")
    loaded = load_proxy_model(path)
    assert loaded.proxy_config == model.proxy_config
    x, unit = torch.rand(1, 3, 12, 20), torch.rand(1, 2)
    assert torch.equal(loaded(x, unit), model.eval()(x, unit))
    assert torch.equal(loaded.low, torch.tensor([-3.0, 0.0]))


def test_bad_inputs(tmp_path):
    with pytest.raises(IsplabError, match="low < high"):
        build_proxy_model([(1.0, 1.0)])
    with pytest.raises(IsplabError, match="unknown proxy arch"):
        build_proxy_model([(0.0, 1.0)], arch="resnet")
    model = _model()
    with pytest.raises(IsplabError, match=r"parameters \(1, 2\)"):
        model(torch.rand(1, 3, 8, 8), torch.rand(1, 3))
    (tmp_path / "x.pt").write_bytes(b"not a model")
    with pytest.raises(IsplabError, match="not an isplab proxy model"):
        load_proxy_model(tmp_path / "x.pt")
    with pytest.raises(IsplabError, match="does not exist"):
        load_proxy_model(tmp_path / "missing.pt")


def test_affine_head_is_gain_and_offset():
    """out = x * exp(g) + b: with the head's bias set to g = ln 2 (all channels) and b = 0.1 in
    channel 1 only, every pixel is doubled and channel 1 shifted, whatever the input."""
    model = _model()
    assert model.proxy_config["head"] == "affine" and model.head.out_channels == 6
    from isplab.models.proxy import GAIN_BOUND

    with torch.no_grad():  # the log-gain is GAIN_BOUND * tanh(y / GAIN_BOUND): invert it for ln 2
        model.head.bias[:3] = GAIN_BOUND * torch.atanh(torch.log(torch.tensor(2.0)) / GAIN_BOUND)
        model.head.bias[4] = 0.1
    x = torch.rand(2, 3, 12, 20)
    out = model(x, torch.rand(2, 2))
    expected = 2 * x
    expected[:, 1] += 0.1
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_affine_gain_is_bounded():
    """A huge head output saturates at exp(GAIN_BOUND) instead of overflowing."""
    from isplab.models.proxy import GAIN_BOUND

    model = _model()
    with torch.no_grad():
        model.head.bias[:3] = 1e4
    x = torch.full((1, 3, 8, 8), 0.5)
    torch.testing.assert_close(model(x, torch.rand(1, 2)), x * torch.exp(torch.tensor(GAIN_BOUND)))


def test_add_head_is_the_seeds_residual():
    model = _model(head="add")
    assert model.head.out_channels == 3
    with torch.no_grad():
        model.head.bias[:] = torch.tensor([0.1, -0.2, 0.3])
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(model(x, torch.rand(1, 2)), x + torch.tensor([0.1, -0.2, 0.3])[:, None, None])


def test_head_round_trips_and_old_files_load_as_add(tmp_path):
    model = _model(head="add")
    path = save_proxy_model(model, tmp_path / "p.pt")
    assert load_proxy_model(path).head_kind == "add"
    state = torch.load(path, weights_only=True)
    del state["proxy_config"]["head"]  # a file written before heads existed
    torch.save(state, tmp_path / "old.pt")
    assert load_proxy_model(tmp_path / "old.pt").head_kind == "add"
    with pytest.raises(IsplabError, match="unknown proxy head 'mul'"):
        _model(head="mul")


# ------------------------------------------------------------------ matrix and global heads

# A colour matrix with no symmetry (a transposed or row-swapped application changes the result).
KNOWN = torch.tensor([[1.2, 0.1, -0.05], [0.05, 0.9, 0.15], [-0.1, 0.2, 1.3]])
KNOWN_OFFSET = torch.tensor([0.01, -0.02, 0.03])


def _colour(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", KNOWN, x) + KNOWN_OFFSET[:, None, None]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))


@pytest.mark.parametrize("head", ["matrix", "global"])
def test_new_heads_are_the_identity_at_init(head):
    model = _model(head=head)
    x = torch.rand(2, 3, 30, 45)
    assert torch.equal(model(x, torch.rand(2, 2)), x)
    assert model.head.out_channels == 12  # 3x3 matrix + 3 offsets per pixel


def test_matrix_head_applies_its_matrix_row_by_row():
    """out = (I + L) x + b with L read row-major from the first 9 channels, b from the last 3."""
    model = _model(head="matrix")
    with torch.no_grad():
        model.head.bias[:9] = (KNOWN - torch.eye(3)).reshape(-1)
        model.head.bias[9:] = KNOWN_OFFSET
    x = torch.rand(2, 3, 10, 14)
    torch.testing.assert_close(model(x, torch.rand(2, 2)), _colour(x), atol=1e-6, rtol=1e-6)


def test_global_transform_is_gain_matrix_offset():
    """z = exp(g) ((I + D) x) + o, with (g, D, o) the MLP's outputs; the U-Net's part stays the identity."""
    from isplab.models.proxy import GAIN_BOUND

    model = _model(head="global")
    g = torch.tensor([0.5, -0.25, 0.0])
    with torch.no_grad():
        bias = model.global_mlp[-1].bias
        bias[:3] = GAIN_BOUND * torch.atanh(g / GAIN_BOUND)
        bias[3:12] = (KNOWN - torch.eye(3)).reshape(-1)
        bias[12:] = KNOWN_OFFSET
    x = torch.rand(2, 3, 10, 14)
    expected = torch.exp(g)[:, None, None] * torch.einsum("ij,bjhw->bihw", KNOWN, x) + KNOWN_OFFSET[:, None, None]
    torch.testing.assert_close(model(x, torch.rand(2, 2)), expected, atol=1e-6, rtol=1e-6)


def test_matrix_head_fits_a_colour_transform():
    """A few hundred Adam steps on random images reproduce a known 3x3 colour transform + offset
    on other random images to > 45 dB."""
    torch.manual_seed(0)
    model = build_proxy_model([(0.0, 1.0)], width=4, depth=2, head="matrix")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        x = torch.rand(4, 3, 16, 16)
        loss = torch.nn.functional.mse_loss(model(x, torch.rand(4, 1)), _colour(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x = torch.rand(4, 3, 32, 48)
    with torch.no_grad():
        assert _psnr(model(x, torch.rand(4, 1)), _colour(x)) > 45


def test_global_head_learns_a_gain_of_the_parameter_for_unseen_images_and_values():
    """out = 2^(4u - 1) x (exposure from -1 to +3 EV), trained as ``proxy train`` does (L1 of the
    proxy plus L1 of its global part, cosine schedule) on u outside [0.45, 0.55): on new images
    at u inside that band the proxy and its global part alone are both within 40 dB."""
    import math

    torch.manual_seed(0)
    model = build_proxy_model([(0.0, 1.0)], width=4, depth=2, head="global")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 400
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    for _ in range(steps):
        x = torch.rand(16, 3, 16, 16)
        u = torch.rand(16, 1) * 0.9
        u = torch.where(u < 0.45, u, u + 0.1)
        target = 2 ** (4 * u - 1)[:, :, None, None] * x
        out, z = model(x, u, with_global=True)
        loss = torch.nn.functional.l1_loss(out, target) + torch.nn.functional.l1_loss(z, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    x, u = torch.rand(3, 3, 24, 40), torch.tensor([[0.47], [0.5], [0.53]])
    target = 2 ** (4 * u - 1)[:, :, None, None] * x
    with torch.no_grad():
        assert _psnr(model(x, u), target) > 40
        assert _psnr(model.global_transform(x, u), target) > 40
    with pytest.raises(IsplabError, match="needs the 'global' head"):
        _model(head="matrix")(x, torch.rand(3, 2), with_global=True)


def test_global_head_round_trips(tmp_path):
    model = _model(head="global", meta={"block": "temperature"})
    _perturb_head(model)
    with torch.no_grad():
        model.global_mlp[-1].bias.normal_(0, 0.1)
    loaded = load_proxy_model(save_proxy_model(model, tmp_path / "g.pt"))
    assert loaded.head_kind == "global" and loaded.proxy_config["head"] == "global"
    x, unit = torch.rand(1, 3, 12, 20), torch.rand(1, 2)
    assert torch.equal(loaded(x, unit), model.eval()(x, unit))
    assert not torch.equal(loaded(x, unit), x)
