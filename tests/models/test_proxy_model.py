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


@pytest.mark.parametrize("head", ["matrix", "global", "pointwise", "blur", "unsharp"])
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


def _assert_known_constant_transform(model, bias) -> None:
    """Set the last layer's ``bias`` of a ``global``/``pointwise`` head's MLP to a known gain, matrix
    and offset; the model must then compute z = exp(g) ((I + D) x) + o (its U-Net part is the identity)."""
    from isplab.models.proxy import GAIN_BOUND

    g = torch.tensor([0.5, -0.25, 0.0])
    with torch.no_grad():
        bias[:3] = GAIN_BOUND * torch.atanh(g / GAIN_BOUND)
        bias[3:12] = (KNOWN - torch.eye(3)).reshape(-1)
        bias[12:] = KNOWN_OFFSET
    x = torch.rand(2, 3, 10, 14)
    expected = torch.exp(g)[:, None, None] * torch.einsum("ij,bjhw->bihw", KNOWN, x) + KNOWN_OFFSET[:, None, None]
    torch.testing.assert_close(model(x, torch.rand(2, 2)), expected, atol=1e-6, rtol=1e-6)


def test_global_transform_is_gain_matrix_offset():
    """z = exp(g) ((I + D) x) + o, with (g, D, o) the MLP's outputs; the U-Net's part stays the identity."""
    model = _model(head="global")
    _assert_known_constant_transform(model, model.global_mlp[-1].bias)


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

    torch.manual_seed(0)
    model = build_proxy_model([(0.0, 1.0)], width=4, depth=2, head="global")
    _fit_cosine(model, lambda x, u: 2 ** (4 * u - 1)[:, :, None, None] * x, 400, (16, 16), lr=3e-3, batch=16)
    x, u = torch.rand(3, 3, 24, 40), torch.tensor([[0.47], [0.5], [0.53]])
    target = 2 ** (4 * u - 1)[:, :, None, None] * x
    with torch.no_grad():
        assert _psnr(model(x, u), target) > 40
        assert _psnr(model.global_transform(x, u), target) > 40
    with pytest.raises(IsplabError, match="needs the 'global' or 'pointwise' head"):
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


# ------------------------------------------------------------------ pointwise head


def _vibrance(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A per-pixel colour map that no single colour matrix is: each pixel's distance from its
    luminance ``Y`` scaled by ``1 + (4u - 1) (1 - chroma)`` (``chroma = max - min``), so
    greyish pixels gain more colour than colourful ones, and ``u`` sets how much (u = 0.25: none)."""
    y = (0.2126 * x[:, 0:1] + 0.7152 * x[:, 1:2] + 0.0722 * x[:, 2:3])
    chroma = x.amax(1, keepdim=True) - x.amin(1, keepdim=True)
    return y + (x - y) * (1 + (4 * u - 1)[:, :, None, None] * (1 - chroma))


def _fit_cosine(model, target, steps: int, size: tuple[int, int], power: float = 1.0, lr: float = 1e-2, batch: int = 8) -> None:
    """Adam (``lr``, cosine) on batches of ``batch`` random ``rand(3, *size) ** power`` images with a
    parameter outside the held-out band [0.45, 0.55), scoring the output and the global part alone."""
    import math

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    for _ in range(steps):
        x = torch.rand(batch, 3, *size) ** power
        u = torch.rand(batch, 1) * 0.9
        u = torch.where(u < 0.45, u, u + 0.1)
        y = target(x, u)
        out, z = model(x, u, with_global=True)
        loss = torch.nn.functional.l1_loss(out, y) + torch.nn.functional.l1_loss(z, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()


def test_pointwise_transform_is_gain_matrix_offset_per_pixel():
    """z = exp(g) ((I + D) x) + o with (g, D, o) from the pixel MLP: its last layer's bias gives the
    constant part, and a weight on one input feature makes it depend on that pixel's value."""
    from isplab.models.proxy import LOG_FLOOR

    model = _model(head="pointwise")
    _assert_known_constant_transform(model, model.pixel_mlp[-1].bias)
    # Features in order: log2(|x| + floor) / 12 (3), x clamped (3), unit (2). Make the first
    # layer pass feature k through one hidden unit (LeakyReLU keeps positive values), the second
    # pass it on, and the last put it into the offset of the blue channel.
    model = _model(head="pointwise")
    x = 0.1 + 0.8 * torch.rand(2, 3, 10, 14)  # log2 < 0, so -log2 passes the LeakyReLU unchanged
    unit = torch.tensor([[0.3, 0.8], [0.6, 0.1]])
    logs = torch.log2(x.abs() + LOG_FLOOR) / 12
    for k, feature in ((1, -logs[:, 1:2]), (4, x[:, 1:2]), (7, unit[:, 1, None, None, None].expand(2, 1, 10, 14))):
        with torch.no_grad():
            for layer in model.pixel_mlp[::2]:
                layer.weight.zero_()
                layer.bias.zero_()
            model.pixel_mlp[0].weight[0, k] = -1.0 if k == 1 else 1.0
            model.pixel_mlp[2].weight[0, 0] = 1.0
            model.pixel_mlp[4].weight[14, 0] = 1.0
        out = model(x, unit)
        torch.testing.assert_close(out[:, :2], x[:, :2])
        torch.testing.assert_close(out[:, 2:], x[:, 2:] + feature, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_pointwise_head_learns_a_per_pixel_colour_map_of_the_parameter_for_new_images():
    """_vibrance (a non-linear per-pixel colour map set by u), trained as ``proxy train`` does
    (L1 of the proxy plus L1 of its pointwise part, cosine schedule from 1e-2, 400 steps) on random images:
    on images never seen, at u in a band never seen, the pointwise part alone and the whole proxy
    are within 40 dB. The ``global`` head (one colour matrix per u) trained the same way stays
    below 35 dB on its global part: the map is not a matrix."""

    scores = {}
    for head in ("pointwise", "global"):
        torch.manual_seed(0)
        model = build_proxy_model([(0.0, 1.0)], width=4, depth=1, head=head)
        _fit_cosine(model, _vibrance, 400, (16, 16))
        torch.manual_seed(1)
        x, u = torch.rand(3, 3, 24, 40), torch.tensor([[0.47], [0.5], [0.53]])
        target = _vibrance(x, u)
        with torch.no_grad():
            out, z = model(x, u, with_global=True)
        scores[head] = (_psnr(out, target), _psnr(z, target))
    assert scores["pointwise"][0] > 40 and scores["pointwise"][1] > 40, scores
    assert scores["global"][1] < 35, scores


@pytest.mark.slow
def test_pointwise_head_round_trips_and_exports_to_onnx(tmp_path):
    """Saved and loaded, the pointwise proxy gives the same output; exported to ONNX (dynamic
    image size) onnxruntime agrees with PyTorch."""
    pytest.importorskip("onnxruntime")
    from isplab.export.onnx import export_onnx, run_onnx

    model = _model(head="pointwise", meta={"block": "colorbalancergb"})
    _perturb_head(model)
    with torch.no_grad():
        model.pixel_mlp[-1].weight.normal_(0, 0.1)
        model.pixel_mlp[-1].bias.normal_(0, 0.1)
    loaded = load_proxy_model(save_proxy_model(model, tmp_path / "p.pt"))
    assert loaded.head_kind == "pointwise" and loaded.proxy_config["head"] == "pointwise"
    x, unit = torch.rand(1, 3, 12, 20), torch.rand(1, 2)
    expected = model.eval()(x, unit)
    assert torch.equal(loaded(x, unit), expected)
    assert not torch.equal(expected, x)
    export_onnx(loaded, (x, unit), tmp_path / "p.onnx", input_names=["image", "unit"],
                dynamic_axes={"image": {2: "height", 3: "width"}})  # fmt: skip
    (got,) = run_onnx(tmp_path / "p.onnx", [x.numpy(), unit.numpy()])
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ blur head (Gaussian in CIE Lab)

D50_XYZ_FROM_REC709 = torch.tensor([[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]])
D50_WHITE = torch.tensor([0.9642, 1.0, 0.8249])


def _lab_f(t):
    e = 6 / 29
    return torch.where(t > e**3, t.clamp(min=e**3) ** (1 / 3), t / (3 * e * e) + 4 / 29)


def _lab_f_inv(s):
    e = 6 / 29
    return torch.where(s > e, s**3, 3 * e * e * (s - 4 / 29))


def _reference_lab_blur(x, sigma):
    """Blur f(XYZ / white) (CIE Lab up to a linear map) with a pixel-integrated Gaussian, edges
    replicated far beyond the kernel, one direction at a time, and convert back."""
    from math import erf, sqrt

    m = D50_XYZ_FROM_REC709.double() / D50_WHITE.double()[:, None]
    lab = _lab_f(torch.einsum("ij,bjhw->bihw", m, x.double()))
    r = int(8 * sigma) + 2
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    phi = lambda t: 0.5 * (1 + torch.tensor([erf(float(v) / sqrt(2)) for v in t], dtype=torch.float64))  # noqa: E731
    kernel = phi((d + 0.5) / sigma) - phi((d - 0.5) / sigma)
    c = lab.shape[1]
    lab = torch.nn.functional.pad(lab, (r, r, r, r), mode="replicate")
    lab = torch.nn.functional.conv2d(lab, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    lab = torch.nn.functional.conv2d(lab, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), _lab_f_inv(lab)).float()


def _set_blur(model, sigma: float, mix: float):
    import math

    from isplab.models.proxy import BLUR_LOG_SIGMA0, BLUR_LOG_SIGMA_SCALE

    with torch.no_grad():
        model.blur_mlp[-1].bias[:] = torch.tensor([(math.log(sigma) - BLUR_LOG_SIGMA0) / BLUR_LOG_SIGMA_SCALE, mix])


def test_blur_head_is_a_gaussian_in_lab_with_replicated_edges():
    """With the blur MLP's output set to sigma = 2.5 px and a = 1, the model (its colour map and
    U-Net parts still the identity) is a pixel-integrated Gaussian of CIE Lab (D50) with replicated
    edges, on a non-square image; a = 0.5 mixes half of it in Lab; with a sigma far larger than
    the image the replicated edges dominate: every pixel becomes the mean of the four corners in
    Lab (darktable 4.2.1's lowpass at radius up to 459 on 256x192 renders matches this blur,
    borders included, to 57.5 dB or better: ``benchmarks/proxy.py --ceiling``)."""
    from isplab.models.proxy import LAB_MATRIX

    torch.testing.assert_close(torch.tensor(LAB_MATRIX), D50_XYZ_FROM_REC709 / D50_WHITE[:, None])
    model = build_proxy_model([(0.0, 1.0)], width=4, depth=2, head="blur")
    torch.manual_seed(0)
    x = torch.rand(1, 3, 20, 31) ** 2 * 1.5  # linear values, some above 1
    unit = torch.tensor([[0.3]])
    _set_blur(model, 2.5, 1.0)
    with torch.no_grad():
        out = model(x, unit)
        torch.testing.assert_close(out, _reference_lab_blur(x, 2.5), atol=2e-5, rtol=1e-4)
        sigma, mix = model.blur_sigma(unit)
        assert float(sigma) == pytest.approx(2.5) and float(mix) == pytest.approx(1.0)
        _set_blur(model, 2.5, 0.5)
        m = D50_XYZ_FROM_REC709 / D50_WHITE[:, None]
        lab = _lab_f(torch.einsum("ij,bjhw->bihw", m, x))
        blurred = _lab_f(torch.einsum("ij,bjhw->bihw", m, _reference_lab_blur(x, 2.5)))
        half = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), _lab_f_inv(0.5 * (lab + blurred)))
        torch.testing.assert_close(model(x, unit), half, atol=2e-5, rtol=1e-4)
        _set_blur(model, 1e7, 1.0)
        corners = lab[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].mean(2)[:, :, None, None]
        mean = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), _lab_f_inv(corners))
        torch.testing.assert_close(model(x, unit), mean.expand_as(x), atol=2e-5, rtol=1e-4)


def test_blur_sigma_sees_positive_ranges_on_a_log_scale():
    """log_unit puts a radius of 0.1-500 px on a log scale (the contrast-like range [-3, 3] stays
    linear), and blur_sigma reads it: one linear unit of the MLP on that feature gives sigma =
    radius exactly, from 0.2 to 450 px (a radius near the low end is where the linear unit alone
    has no resolution: 0.1-10 px is 2 % of it)."""
    import math

    from isplab.models.proxy import BLUR_LOG_SIGMA0, BLUR_LOG_SIGMA_SCALE

    model = build_proxy_model([(0.1, 500.0), (-3.0, 3.0)], width=4, depth=1, head="blur")
    radius = torch.tensor([0.2, 1.0, 7.0, 60.0, 450.0])
    values = torch.stack([radius, torch.tensor([-2.0, 0.0, 1.0, 2.5, 3.0])], dim=1)
    unit = model.to_unit(values)
    span = math.log(500.0) - math.log(0.1)
    logs = model.log_unit(unit)
    torch.testing.assert_close(logs[:, 0], (torch.log(radius) - math.log(0.1)) / span)
    torch.testing.assert_close(logs[:, 1], unit[:, 1])
    with torch.no_grad():
        for layer in model.blur_mlp[::2]:
            layer.weight.zero_()
            layer.bias.zero_()
        model.blur_mlp[0].weight[0, 2] = 1.0  # inputs: unit (2), then log_unit (2)
        model.blur_mlp[2].weight[0, 0] = 1.0
        model.blur_mlp[4].weight[0, 0] = span / BLUR_LOG_SIGMA_SCALE
        model.blur_mlp[4].bias[0] = (math.log(0.1) - BLUR_LOG_SIGMA0) / BLUR_LOG_SIGMA_SCALE
        sigma, _ = model.blur_sigma(unit)
    torch.testing.assert_close(sigma, radius, rtol=1e-4, atol=1e-5)


def _reference_lab(x):
    """CIE L*a*b* (D50) of linear Rec.709 ``x`` from the textbook formulas, divided by 100."""
    m = D50_XYZ_FROM_REC709.double() / D50_WHITE.double()[:, None]
    fx, fy, fz = _lab_f(torch.einsum("ij,bjhw->bihw", m, x.double())).unbind(1)
    return torch.stack([1.16 * fy - 0.16, 5.0 * (fx - fy), 2.0 * (fy - fz)], dim=1)


def _reference_rgb(lab):
    """Inverse of :func:`_reference_lab`."""
    m = D50_XYZ_FROM_REC709.double() / D50_WHITE.double()[:, None]
    fy = (lab[:, 0] + 0.16) / 1.16
    f = torch.stack([fy + lab[:, 1] / 5.0, fy, fy - lab[:, 2] / 2.0], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), _lab_f_inv(f)).float()


def test_blur_head_maps_colours_in_lab():
    """The blur head's colour map acts on (L, a, b) / 100: with its pixel MLP's output set to gains
    (1.5, 0.6, 0.8) and offset (-0.25, 0, 0), i.e. darktable lowpass's contrast 1.5 about L = 50
    and saturations 0.6 and 0.8 of a and b, the model (blur mix 0, U-Net the identity) gives exactly that map, computed
    here from the textbook Lab formulas; with the blur on, it maps the blurred image."""
    from isplab.models.proxy import GAIN_BOUND

    model = build_proxy_model([(0.0, 1.0)], width=4, depth=1, head="blur")
    gains = torch.tensor([1.5, 0.6, 0.8])
    with torch.no_grad():
        bias = model.pixel_mlp[-1].bias
        bias[:3] = GAIN_BOUND * torch.atanh(torch.log(gains) / GAIN_BOUND)
        bias[12:] = torch.tensor([-0.25, 0.0, 0.0])
    torch.manual_seed(0)
    x = torch.rand(2, 3, 9, 13) ** 2 * 1.2
    unit = torch.rand(2, 1)
    lab = _reference_lab(x)
    mapped = gains.double()[None, :, None, None] * lab + torch.tensor([-0.25, 0.0, 0.0], dtype=torch.float64)[None, :, None, None]
    assert float((mapped[:, 0] - lab[:, 0]).abs().max()) > 0.05  # a real change of L
    with torch.no_grad():
        torch.testing.assert_close(model(x, unit), _reference_rgb(mapped), atol=2e-5, rtol=1e-4)
        _set_blur(model, 2.0, 1.0)
        blurred = _reference_lab(_reference_lab_blur(x, 2.0))
        expected = _reference_rgb(gains.double()[None, :, None, None] * blurred + torch.tensor([-0.25, 0.0, 0.0], dtype=torch.float64)[None, :, None, None])
        torch.testing.assert_close(model(x, unit), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_blur_head_learns_a_blur_radius_of_the_parameter_for_new_images():
    """Target: a Lab Gaussian with sigma = 1 + 4u pixels, then a gain of 1.2. Trained as ``proxy
    train`` trains it (L1 of the proxy plus L1 of its part before the U-Net, whole 32x32 images,
    cosine schedule, 300 steps) on u outside [0.45, 0.55): on new images at u = 0.5 the proxy is
    within 40 dB and the learned sigma is 3 px within 5 %."""

    teacher = build_proxy_model([(0.0, 1.0)], width=4, depth=1, head="blur")

    def target(x, u):
        with torch.no_grad():
            out = []
            for xi, ui in zip(x, u):
                _set_blur(teacher, 1 + 4 * float(ui), 1.0)
                out.append(1.2 * teacher.blur_transform(xi[None], ui[None]))
            return torch.cat(out)

    torch.manual_seed(0)
    model = build_proxy_model([(0.0, 1.0)], width=4, depth=1, head="blur")
    _fit_cosine(model, target, 300, (32, 32), power=2)
    torch.manual_seed(1)
    x, u = torch.rand(2, 3, 32, 48) ** 2, torch.tensor([[0.5], [0.5]])
    with torch.no_grad():
        assert _psnr(model(x, u), target(x, u)) > 40
        assert float(model.blur_sigma(u[:1])[0]) == pytest.approx(3.0, rel=0.05)


def test_cfa_phase_planes_hold_row_and_column_parity():
    from isplab.models.proxy import ProxyUNet

    planes = ProxyUNet.cfa_phase_planes(torch.zeros(2, 3, 3, 5, dtype=torch.float64))
    assert planes.shape == (2, 2, 3, 5) and planes.dtype == torch.float64
    rows = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)[:, None].expand(3, 5)
    cols = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)[None, :].expand(3, 5)
    assert torch.equal(planes[1, 0], rows) and torch.equal(planes[1, 1], cols)


def test_cfa_phase_channels_enter_the_first_level_and_reload(tmp_path):
    """cfa_phase: the first level (only) reads the image, the parameters and the two parity planes
    of the (bottom/right-padded) input; their weights change the output; the option survives
    save/load and files without it load as before (no phase channels)."""
    model = _model(cfa_phase=True, meta={"block": "temperature"})
    assert [enc[0].in_channels for enc in model.encoders] == [3 + 2 + 2, 4 + 2, 8 + 2]
    x, unit = torch.rand(1, 3, 6, 10), torch.tensor([[0.25, 0.75]])
    assert torch.equal(model(x, unit), x)  # identity at init
    seen = []
    handle = model.encoders[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    _perturb_head(model)
    before = model(x, unit)
    handle.remove()
    first = seen[0]  # padded to 8 x 12 (multiples of 2^depth)
    assert first.shape == (1, 7, 8, 12)
    assert torch.equal(first[0, :3, :6, :10], x[0])
    assert torch.equal(first[0, 3:5], unit[0, :, None, None].expand(2, 8, 12))
    assert torch.equal(first[0, 5], torch.tensor([0.0, 1.0] * 4)[:, None].expand(8, 12))
    assert torch.equal(first[0, 6], torch.tensor([0.0, 1.0] * 6)[None, :].expand(8, 12))
    with torch.no_grad():
        model.encoders[0][0].weight[:, -2:].add_(1.0)  # the weights reading the phase channels
    assert (model(x, unit) - before).abs().max() > 1e-4
    path = save_proxy_model(model, tmp_path / "m.pt")
    loaded = load_proxy_model(path)
    assert loaded.cfa_phase and loaded.proxy_config["cfa_phase"] is True
    x, unit = torch.rand(1, 3, 12, 20), torch.rand(1, 2)
    assert torch.equal(loaded(x, unit), model.eval()(x, unit))
    old = _model()
    saved = {"proxy_config": {k: v for k, v in old.proxy_config.items() if k != "cfa_phase"}, "state_dict": old.state_dict()}
    torch.save(saved, tmp_path / "old.pt")
    assert load_proxy_model(tmp_path / "old.pt").cfa_phase is False


def test_cfa_filter_applies_one_filter_per_colour_filter_phase():
    """cfa_phase's filter: x + K * x with K chosen by the pixel's (row % 2, column % 2); here the
    (0, 1) pixels' red gains their right neighbour's green (the edge replicated) and the (1, 0)
    pixels' blue an offset 0.5; the other pixels and channels are unchanged."""
    model = _model(cfa_phase=True)
    n = 9 * 3 + 1  # 3x3 taps of 3 channels (channel-major), then the offset
    with torch.no_grad():
        bias = model.cfa_mlp[-1].bias.view(4, 3, n)
        bias[2 * 0 + 1, 0, 1 * 9 + 1 * 3 + 2] = 1.0  # phase (0, 1), red <- green at (i, j + 1)
        bias[2 * 1 + 0, 2, n - 1] = 0.5  # phase (1, 0), blue + 0.5
    x = torch.rand(1, 3, 5, 6)
    out = model.cfa_filter(x, torch.rand(1, 2))
    want = x.clone()
    right = torch.cat([x[:, 1, :, 1:], x[:, 1, :, -1:]], dim=-1)
    want[:, 0, 0::2, 1::2] += right[:, 0::2, 1::2]
    want[:, 2, 1::2, 0::2] += 0.5
    assert torch.allclose(out, want, atol=1e-6)
    assert torch.equal(_model(cfa_phase=True).cfa_filter(x, torch.rand(1, 2)), x)  # identity at init


# ---------------------------------------------------------------- unsharp head (darktable's sharpen)


def _reference_sharpen(x, radius: float, amount: float, threshold: float):
    """darktable 4.2.1's sharpen.c, written out in numpy from its source: Lab (D50) L of linear
    Rec.709 ``x`` (3, H, W); ``rad = min(12, ceil(2.5 radius))``; a Gaussian of sigma ``radius``
    sampled at -rad..rad and normalised; vertical pass over rows rad..H-rad-1, horizontal pass over
    columns rad..W-rad-1 of those; the border of width rad copied; ``L + amount * detail``; a, b kept."""
    import math

    import numpy as np

    m = (D50_XYZ_FROM_REC709.double() / D50_WHITE.double()[:, None]).numpy()
    e = 6 / 29
    f = lambda t: np.where(t > e**3, np.cbrt(np.maximum(t, e**3)), t / (3 * e * e) + 4 / 29)  # noqa: E731
    finv = lambda s: np.where(s > e, s**3, 3 * e * e * (s - 4 / 29))  # noqa: E731
    fx, fy, fz = f(np.einsum("ij,jhw->ihw", m, x.double().numpy()))
    L, a, b = 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)
    h, w = L.shape
    rad = min(12, math.ceil(2.5 * radius))
    out = L.copy()
    if rad > 0 and h >= 2 * rad + 1 and w >= 2 * rad + 1:
        k = np.exp(-np.arange(-rad, rad + 1) ** 2 / (2 * radius**2))
        k /= k.sum()
        tmp = np.zeros_like(L)
        for j in range(rad, h - rad):
            tmp[j] = sum(k[t] * L[j - rad + t] for t in range(2 * rad + 1))
        for j in range(rad, h - rad):
            for i in range(rad, w - rad):
                blur = sum(k[t] * tmp[j, i - rad + t] for t in range(2 * rad + 1))
                diff = L[j, i] - blur
                detail = math.copysign(max(abs(diff) - threshold, 0.0), diff)
                out[j, i] = L[j, i] + amount * detail
    fy2 = (out + 16) / 116
    xyz = finv(np.stack([fy2 + a / 500, fy2, fy2 - b / 200]))
    return torch.from_numpy(np.einsum("ij,jhw->ihw", np.linalg.inv(m), xyz))


def _set_unsharp(model, sigma: float, amount: float, threshold: float):
    from isplab.models.proxy import UNSHARP_AMOUNT_SCALE, UNSHARP_SIGMA0, UNSHARP_SIGMA_SCALE, UNSHARP_THRESHOLD_SCALE

    with torch.no_grad():
        bias = [(sigma - UNSHARP_SIGMA0) / UNSHARP_SIGMA_SCALE, amount / UNSHARP_AMOUNT_SCALE, threshold / UNSHARP_THRESHOLD_SCALE]
        model.unsharp_mlp[-1].bias[:] = torch.tensor(bias)


def _textured(h=40, w=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=g), size=(h, w), mode="bilinear") * 0.6 + 0.1
    return (x + 0.15 * torch.rand(1, 3, h, w, generator=g)).double()


@pytest.mark.parametrize(
    "sigma, amount, threshold",
    [(1.5, 1.3, 0.8), (0.7, 2.0, 0.0), (8.0, 0.9, 2.0), (3.3, -0.5, 0.3)],  # rad 4, 2, 12 (20 truncated), 9
)
def test_unsharp_head_is_darktables_sharpen(sigma, amount, threshold):
    """With its MLP's output set to (sigma, amount, threshold), the unsharp head (U-Net still the
    identity) is darktable's sharpen of Lab L as written out in numpy here (truncated kernel,
    unsharpened border of width rad) to 1e-6 on a non-square image; the helper lab_unsharp_mask
    agrees; sigma 8 is truncated at 12 pixels (untruncated it would differ)."""
    import math

    from isplab.models.proxy import lab_unsharp_mask

    model = build_proxy_model([(0.0, 8.0), (0.0, 2.0), (0.0, 10.0)], width=4, depth=2, head="unsharp").double()
    _set_unsharp(model, sigma, amount, threshold)
    x, unit = _textured(), torch.rand(1, 3, dtype=torch.float64)
    expected = _reference_sharpen(x[0], sigma, amount, threshold)
    with torch.no_grad():
        out = model(x, unit)[0]
        s, a, t = model.unsharp_params(unit)
    assert (float(s), float(a), float(t)) == pytest.approx((sigma, amount, threshold))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(lab_unsharp_mask(x, sigma, amount, threshold)[0], expected, atol=1e-6, rtol=0)
    assert float((out - x[0]).abs().max()) > 1e-3  # it did sharpen
    rad = min(12, math.ceil(2.5 * sigma))
    torch.testing.assert_close(out[:, :rad], x[0, :, :rad], atol=1e-12, rtol=0)  # the border is copied
    torch.testing.assert_close(out[:, :, -rad:], x[0, :, :, -rad:], atol=1e-12, rtol=0)


def test_unsharp_head_passes_small_images_and_radius_zero_through():
    """darktable copies the image when rad = 0 or the image is smaller than 2 rad + 1 on a side;
    per sample in a batch: the other sample is still sharpened as it would be alone."""
    model = build_proxy_model([(0.0, 1.0)], width=4, depth=1, head="unsharp").double()
    with torch.no_grad():
        model.unsharp_mlp[-1].weight.zero_()
        model.unsharp_mlp[-1].bias[:] = torch.tensor([0.0, 0.75, 0.0])  # sigma 2 (rad 5), amount 1.5
        x = _textured(10, 40)  # 10 rows < 11
        assert torch.equal(model(x, torch.zeros(1, 1)), x)
        from isplab.models.proxy import lab_unsharp_mask

        x = _textured(24, 30).expand(2, -1, -1, -1)
        out = lab_unsharp_mask(x, torch.tensor([0.0, 2.0]), 1.5, 0.0)
        assert torch.equal(out[0], x[0])
        torch.testing.assert_close(out[1], _reference_sharpen(x[1], 2.0, 1.5, 0.0), atol=1e-6, rtol=0)


def test_unsharp_detail_gradients_reach_sigma_and_threshold_and_amount():
    """Gradients reach sigma (through the kernel's weights), threshold and amount, and match finite
    differences (gradcheck, away from the soft threshold's kink); each of the MLP's three outputs
    gets a gradient from an image loss."""
    from isplab.models.proxy import unsharp_detail

    lum = 100 * _textured(20, 24)[:, 1:2]
    sigma, threshold = torch.tensor([1.3], dtype=torch.float64, requires_grad=True), torch.tensor([0.37], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, t: unsharp_detail(lum, s, t), (sigma, threshold))
    model = build_proxy_model([(0.0, 8.0), (0.0, 2.0), (0.0, 10.0)], width=4, depth=1, head="unsharp").double()
    _set_unsharp(model, 1.5, 1.0, 0.2)
    x = _textured()
    target = _reference_sharpen(x[0], 2.0, 1.5, 0.5)[None]
    torch.nn.functional.l1_loss(model(x, torch.rand(1, 3, dtype=torch.float64)), target).backward()
    assert (model.unsharp_mlp[-1].bias.grad.abs() > 1e-6).all(), model.unsharp_mlp[-1].bias.grad


def test_unsharp_head_round_trips(tmp_path):
    model = build_proxy_model([(0.0, 8.0), (0.0, 2.0), (0.0, 10.0)], width=4, depth=1, head="unsharp")
    _set_unsharp(model, 1.5, 1.3, 0.8)
    path = save_proxy_model(model, tmp_path / "m.pt")
    loaded = load_proxy_model(path)
    x, unit = _textured().float(), torch.rand(1, 3)
    assert loaded.head_kind == "unsharp"
    with torch.no_grad():
        assert torch.equal(loaded(x, unit), model(x, unit))
