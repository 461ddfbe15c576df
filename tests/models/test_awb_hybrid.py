"""The hybrid AWB network (``arch="hybrid"``): ``"chroma"``'s CNN plus the colour-constancy
features, normalised inside the network, fed to the head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.models.awb import (
    ARCHS,
    FeatureNorm,
    HybridAWBNet,
    build_awb_net,
    load_awb_model,
    save_awb_model,
)
from isplab.models.awb_features import FEATURE_NAMES, colour_constancy_features

RANGE = (2800.0, 7600.0)


def _statistics(n: int, size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.01, 0.9, (n, *size, 3)).astype(np.float32)
    images[0, :2, :3] = 0.99  # some saturated zones
    images[1, -1] = 0.0005  # some dark zones
    return torch.from_numpy(images), torch.from_numpy(rng.uniform(5, 3000, n).astype(np.float32))


def _randomise_running_statistics(net: HybridAWBNet, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    net.feature_norm.running_mean.copy_(torch.randn(len(FEATURE_NAMES), generator=generator))
    net.feature_norm.running_var.copy_(torch.rand(len(FEATURE_NAMES), generator=generator) + 0.1)


@pytest.mark.parametrize("size", [(12, 16), (32, 32)])
def test_with_the_cnn_branch_zeroed_the_hybrid_is_its_head_on_lux_and_the_normalised_features(size):
    torch.manual_seed(0)
    net = build_awb_net("hybrid", size, RANGE, width=4, hidden=8).eval()
    _randomise_running_statistics(net)
    with torch.no_grad():
        for module in net.features:
            if isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
                module.bias.zero_()
    image, lux = _statistics(6, size)
    norm = net.feature_norm
    features = (colour_constancy_features(image, lux) - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    head_input = torch.cat([torch.zeros(6, 16), (torch.log(lux.clamp(min=1.0)) / 10)[:, None], features], dim=1)
    lin1, lin2 = (m for m in net.head if isinstance(m, torch.nn.Linear))
    logit = lin2(torch.relu(lin1(head_input)))[:, 0]
    low, high = 1e6 / RANGE[1], 1e6 / RANGE[0]
    expected = 1e6 / (low + (high - low) * torch.sigmoid(logit))
    with torch.no_grad():
        torch.testing.assert_close(net(image, lux), expected, rtol=1e-5, atol=1e-3)
        # The features do reach the head: other running statistics give other predictions.
        before = net(image, lux)
        norm.running_mean.add_(1.0)
        assert (net(image, lux) - before).abs().max() > 1.0


def test_the_hybrid_is_chroma_plus_a_wider_head():
    chroma = build_awb_net("chroma", (12, 16), RANGE, width=8, hidden=16)
    hybrid = build_awb_net("hybrid", (12, 16), RANGE, width=8, hidden=16)
    count = lambda net: sum(p.numel() for p in net.parameters())
    assert count(hybrid) - count(chroma) == len(FEATURE_NAMES) * 16  # 40 more head inputs, 16 hidden units
    assert "hybrid" in ARCHS and isinstance(hybrid, HybridAWBNet)
    # Same CNN: with the same weights the chroma part's head input is identical.
    hybrid.features.load_state_dict(chroma.features.state_dict())
    image, lux = _statistics(3, (12, 16))
    with torch.no_grad():
        torch.testing.assert_close(hybrid.head_input(image, lux)[:, :33], chroma.head_input(image, lux))


def test_feature_norm_standardises_a_training_batch_and_uses_running_statistics_otherwise():
    norm = FeatureNorm(3).train()
    x = torch.tensor([[1.0, 10.0, -5.0], [3.0, 30.0, -1.0], [5.0, 50.0, 3.0], [7.0, 70.0, 7.0]])
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=0), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.var(dim=0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    # Running statistics moved 10 % of the way from (0, 1) to the batch's mean and unbiased variance.
    torch.testing.assert_close(norm.running_mean, 0.1 * x.mean(dim=0))
    torch.testing.assert_close(norm.running_var, 0.9 + 0.1 * x.var(dim=0))
    mean, var = norm.running_mean.clone(), norm.running_var.clone()
    one = norm(x[:1])  # one image in training mode: the running statistics, left unchanged
    torch.testing.assert_close(one, (x[:1] - mean) / torch.sqrt(var + norm.eps))
    torch.testing.assert_close(norm.running_mean, mean)
    torch.testing.assert_close(norm.eval()(x), (x - mean) / torch.sqrt(var + norm.eps))
    assert not list(norm.parameters())  # no affine part


def test_an_illuminant_shift_moves_the_log_chroma_features_together_which_a_layer_norm_would_remove():
    image, lux = _statistics(4, (12, 16), seed=3)
    image = image.clamp(max=0.6)  # no zone crosses the saturation threshold under the gain
    gain = torch.tensor([1.3, 1.0, 1.3])  # R and B up by the same factor: every log-chroma estimate + log 1.3
    features = colour_constancy_features(image, lux)
    shifted = colour_constancy_features(image * gain, lux)
    chroma = [i for i, name in enumerate(FEATURE_NAMES)
              if name.endswith(("_r", "_b")) and not name.startswith("log_sd")]
    assert len(chroma) == 34
    torch.testing.assert_close(shifted[:, chroma] - features[:, chroma],
                               torch.full((4, 34), float(np.log(1.3))), atol=2e-3, rtol=0)
    # A LayerNorm first subtracts each image's mean over its 40 features: that centring alone takes
    # 34 / 40 = 85 % of the shift out of every log-chroma column (a fixed per-feature standardisation
    # keeps all of it, scaled per column).
    centred = lambda x: x - x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(centred(shifted)[:, chroma] - centred(features)[:, chroma],
                               torch.full((4, 34), 0.15 * float(np.log(1.3))), atol=2e-3, rtol=0)


def test_ensembles_train_save_and_load_with_their_running_statistics(tmp_path):
    torch.manual_seed(0)
    model = build_awb_net("hybrid", (12, 16), RANGE, ensemble=2, width=4, hidden=8)
    image, lux = _statistics(8, (12, 16))
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = (1e6 / model(image, lux)).mean()
    loss.backward()
    optimiser.step()
    assert all(float(m.feature_norm.num_batches_tracked) == 1 for m in model.members)
    model.eval()
    with torch.no_grad():
        kelvin = model(image, lux)
    assert kelvin.shape == (8,) and bool(((kelvin >= RANGE[0] - 1e-2) & (kelvin <= RANGE[1] + 1e-2)).all())
    loaded = load_awb_model(save_awb_model(model, tmp_path / "hybrid.pt"))
    assert loaded.awb_config["arch"] == "hybrid"
    torch.testing.assert_close(loaded.members[1].feature_norm.running_var, model.members[1].feature_norm.running_var)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, lux), kelvin)
