"""The blend AWB model (``arch="blend"``): chroma CNNs and MLPs on the colour-constancy features,
averaged in mireds, in one module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.models.awb import (
    ARCHS,
    BlendAWBNet,
    ChromaAWBNet,
    build_awb_net,
    log_chroma_histogram,
    load_awb_model,
    member_mireds,
    save_awb_model,
)
from isplab.models.awb_features import FEATURE_NAMES, colour_constancy_features

RANGE = (2800.0, 7600.0)


def _statistics(n: int, size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.01, 0.9, (n, *size, 3)).astype(np.float32)
    images[0, :2, :3] = 0.99
    return torch.from_numpy(images), torch.from_numpy(rng.uniform(5, 3000, n).astype(np.float32))


def _randomised(model: BlendAWBNet, seed: int = 0) -> BlendAWBNet:
    generator = torch.Generator().manual_seed(seed)
    model.feature_norm.running_mean.copy_(torch.randn(len(FEATURE_NAMES), generator=generator))
    model.feature_norm.running_var.copy_(torch.rand(len(FEATURE_NAMES), generator=generator) + 0.1)
    return model.eval()


@pytest.mark.parametrize("size", [(12, 16), (32, 32)])
def test_members_are_the_cnns_then_the_feature_mlps_and_the_prediction_their_mean(size):
    torch.manual_seed(0)
    model = _randomised(build_awb_net("blend", size, RANGE, ensemble=2, width=4, hidden=8, feature_hidden=6))
    assert isinstance(model, BlendAWBNet) and "blend" in ARCHS
    assert len(model.members) == 2 and all(isinstance(m, ChromaAWBNet) for m in model.members)
    image, lux = _statistics(5, size)
    norm = model.feature_norm
    features = (colour_constancy_features(image, lux) - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    low, high = 1e6 / RANGE[1], 1e6 / RANGE[0]
    with torch.no_grad():
        cnn = torch.stack([1e6 / m(image, lux) for m in model.members])
        mlp = []
        for head in model.feature_heads:
            l1, l2, l3 = (m for m in head if isinstance(m, torch.nn.Linear))
            assert (l1.in_features, l1.out_features, l2.out_features) == (len(FEATURE_NAMES), 6, 6)
            mlp.append(low + (high - low) * torch.sigmoid(l3(torch.relu(l2(torch.relu(l1(features)))))[:, 0]))
        rows = member_mireds(model, image, lux)
        torch.testing.assert_close(rows, torch.cat([cnn, torch.stack(mlp)]))
        torch.testing.assert_close(model(image, lux), 1e6 / rows.mean(dim=0))
        # Equal weight on the two kinds: the mean of the CNNs' mean and the MLPs' mean.
        torch.testing.assert_close(1e6 / model(image, lux), 0.5 * (cnn.mean(0) + torch.stack(mlp).mean(0)))
        # The MLPs' rows differ from one another and from the CNNs' (independent initialisations).
        assert (rows[2] - rows[3]).abs().max() > 1e-2 and (rows[:2].mean(0) - rows[2:].mean(0)).abs().max() > 1e-2


def test_the_mlps_may_also_take_the_log_chroma_histogram_standardised_with_the_features(tmp_path):
    """``histogram_bins=B``: each MLP's input is the 40 features, then the B x B histogram, both
    standardised by the one FeatureNorm; the CNNs are untouched; the option survives save/load."""
    torch.manual_seed(0)
    model = build_awb_net("blend", (12, 16), RANGE, ensemble=2, width=4, hidden=8, feature_hidden=6, histogram_bins=4)
    n = len(FEATURE_NAMES) + 16
    generator = torch.Generator().manual_seed(1)
    model.feature_norm.running_mean.copy_(torch.randn(n, generator=generator))
    model.feature_norm.running_var.copy_(torch.rand(n, generator=generator) + 0.1)
    model.eval()
    image, lux = _statistics(5, (12, 16))
    norm = model.feature_norm
    x = torch.cat([colour_constancy_features(image, lux), log_chroma_histogram(image, bins=4).flatten(1)], dim=1)
    x = (x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    low, high = 1e6 / RANGE[1], 1e6 / RANGE[0]
    with torch.no_grad():
        expected = torch.stack([low + (high - low) * torch.sigmoid(head(x)[:, 0]) for head in model.feature_heads])
        torch.testing.assert_close(model.feature_mireds(image, lux), expected)
        # The histogram matters: the same features with the histogram's half of the input zeroed give other mireds.
        zeroed = x.clone()
        zeroed[:, len(FEATURE_NAMES):] = 0
        other = torch.stack([low + (high - low) * torch.sigmoid(head(zeroed)[:, 0]) for head in model.feature_heads])
        assert (other - expected).abs().max() > 0.1
        plain = build_awb_net("blend", (12, 16), RANGE, ensemble=2, width=4, hidden=8, feature_hidden=6)
        assert plain.feature_heads[0][0].in_features == len(FEATURE_NAMES) and model.feature_heads[0][0].in_features == n
    save_awb_model(model, tmp_path / "m.pt")
    loaded = load_awb_model(tmp_path / "m.pt")
    assert loaded.histogram_bins == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, lux), model(image, lux))
    for bad in (-1, 1):
        with pytest.raises(IsplabError, match=f"bad histogram_bins {bad}"):
            build_awb_net("blend", (12, 16), RANGE, histogram_bins=bad)


def test_one_of_each_options_and_errors():
    model = build_awb_net("blend", (12, 16), RANGE, ensemble=1, width=4, hidden=8)
    assert len(model.members) == 1 and len(model.feature_heads) == 1
    image, lux = _statistics(3, (12, 16))
    assert member_mireds(model.eval(), image, lux).shape == (2, 3)
    assert model.awb_config["arch"] == "blend" and model.awb_config["options"] == {"width": 4, "hidden": 8}
    with pytest.raises(IsplabError, match="bad options .* for AWB arch 'blend'"):
        build_awb_net("blend", (12, 16), RANGE, bins=8)
    with pytest.raises(IsplabError, match="ensemble must be >= 1"):
        build_awb_net("blend", (12, 16), RANGE, ensemble=0)
    with pytest.raises(IsplabError, match=r"expects image \(B, 12, 16, 3\)"):
        model(torch.zeros(1, 8, 8, 3), torch.ones(1))


def test_each_member_gets_its_own_gradient_and_save_load_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_awb_net("blend", (12, 16), RANGE, ensemble=2, width=4, hidden=8).train()
    image, lux = _statistics(8, (12, 16))
    target = torch.full((8,), 250.0)
    # A loss on the MLP rows alone reaches only the MLPs (and not the CNNs).
    loss = (member_mireds(model, image, lux)[2:] - target).abs().mean()
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in model.members.parameters())
    assert all(float(p.grad.abs().max()) > 0 for p in model.feature_heads.parameters())
    assert int(model.feature_norm.num_batches_tracked) == 1
    model.eval()
    loaded = load_awb_model(save_awb_model(model, tmp_path / "blend.pt"))
    assert isinstance(loaded, BlendAWBNet) and loaded.awb_config["ensemble"] == 2
    torch.testing.assert_close(loaded.feature_norm.running_var, model.feature_norm.running_var)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, lux), model(image, lux))
