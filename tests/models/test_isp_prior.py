"""The classical prior of learned ISPs: ``classical(x) + net(x) - 0.5``, equal to the render at initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.isp import bayer
from isplab.isp.demosaic import demosaic
from isplab.isp.gamma import linear_to_srgb
from isplab.isp.pipeline import render
from isplab.isp.tone import smoothstep_tone
from isplab.models.isp import build_isp_model, load_isp_model, save_isp_model
from isplab.models.isp_prior import (
    EXPOSURE_TARGET,
    ClassicalPrior,
    demosaic_bilinear_planes,
    generic_camera_to_srgb,
    last_layer,
)

SMALL = {"punet": {"num_maps_base": 4}, "lfnet": {"num_maps_base": 4, "num_blocks": 1},
         "nafnet": {"num_maps_base": 4, "enc_blocks": (1, 1), "mid_blocks": 1}}
#: camera-RGB response to a neutral under a warm illuminant, G = 1
WARM_NEUTRAL = (0.92, 1.0, 0.31)


def small(arch: str, **kwargs):
    options = dict(SMALL[arch])
    return build_isp_model(arch, options.pop("num_maps_base"), **kwargs, **options)


def test_bilinear_planes_equal_isplabs_bilinear_demosaic():
    """Every output pixel, borders included, equals isp.demosaic's bilinear method on the RGGB mosaic."""
    torch.manual_seed(0)
    mosaic = torch.rand(2, 1, 20, 28)
    expected = demosaic(mosaic, "RGGB", "bilinear")
    planes = bayer.pack(mosaic[:, 0], "RGGB")
    torch.testing.assert_close(demosaic_bilinear_planes(planes), expected, atol=1e-6, rtol=0)
    # measured sites keep their values: red at the tile's top-left, blue bottom-right
    out = demosaic_bilinear_planes(planes)
    torch.testing.assert_close(out[:, 0, 0::2, 0::2], planes[:, 0])
    torch.testing.assert_close(out[:, 2, 1::2, 1::2], planes[:, 3])
    swapped = planes[:, [3, 1, 2, 0]]  # red and blue exchanged
    assert (demosaic_bilinear_planes(swapped) - expected).abs().max() > 0.3
    with pytest.raises(IsplabError, match=r"expected packed planes \(B, 4, h, w\)"):
        demosaic_bilinear_planes(torch.rand(1, 3, 4, 4))


@pytest.mark.parametrize("arch", ["nafnet", "lfnet", "punet"])
@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "blind"])
def test_at_initialisation_the_model_equals_the_classical_render(arch, metadata):
    """The prior model before training is isplab's classical pipeline (bilinear demosaic) within 1e-5."""
    torch.manual_seed(1)
    model = small(arch, metadata=metadata, prior="classical").eval()
    assert model.isp_config["prior"] == "classical" and model.size_multiple == model.net.size_multiple
    x = torch.rand(2, 4, 16, 32) * 0.5
    mosaic = bayer.unpack(x, "RGGB")[:, None].double()
    if metadata:  # input already white-balanced, colour-corrected and exposed
        gains, ccm = torch.ones(2, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    else:  # grey world, the exposure target, the generic camera matrix
        means = x.double().mean(dim=(2, 3))
        green = (means[:, 1] + means[:, 2]) / 2
        wb = torch.stack([green / means[:, 0], torch.ones_like(green), green / means[:, 3]], 1)
        balanced = (means * wb[:, [0, 1, 1, 2]]).mean(dim=1)
        gains, ccm = wb * (EXPOSURE_TARGET / balanced)[:, None], generic_camera_to_srgb()
    expected = render(mosaic, "RGGB", gains, ccm, demosaic_method="bilinear").float()
    with torch.no_grad():
        out = model(x)
    assert (out - expected).abs().max() < 1e-5
    with torch.no_grad():
        last_layer(model.net, arch).bias.fill_(1.0)  # a trained network changes the output
        assert (model(x) - expected).abs().max() > 1e-3


def test_the_blind_prior_renders_a_grey_card_neutral_at_its_exposure_target():
    prior = ClassicalPrior(metadata=False)
    level = 0.05
    card = torch.tensor([level * WARM_NEUTRAL[0], level, level, level * WARM_NEUTRAL[2]]).reshape(1, 4, 1, 1)
    with torch.no_grad():
        out = prior(card.expand(1, 4, 6, 8))
    expected = float(smoothstep_tone(linear_to_srgb(torch.tensor(EXPOSURE_TARGET))))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)  # R = G = B whatever the cast, at 0.18 linear
    with torch.no_grad():
        prior.log_exposure_target.fill_(np.log(0.36))
        brighter = float(prior(card.expand(1, 4, 6, 8))[0, 0, 0, 0])
    assert brighter == pytest.approx(float(smoothstep_tone(linear_to_srgb(torch.tensor(0.36)))), abs=1e-5)
    with pytest.raises(IsplabError, match="exposure_target must be positive"):
        ClassicalPrior(metadata=False, exposure_target=0.0)


def test_gradients_reach_the_network_and_the_exposure_target():
    torch.manual_seed(2)
    model = small("lfnet", prior="classical")
    x, target = torch.rand(2, 4, 8, 8) * 0.4, torch.rand(2, 3, 16, 16)
    torch.nn.functional.mse_loss(model(x), target).backward()
    assert last_layer(model.net, "lfnet").weight.grad.abs().sum() > 0
    assert model.prior.log_exposure_target.grad.abs() > 0


def test_save_load_round_trip_and_old_models(tmp_path):
    torch.manual_seed(3)
    model = small("nafnet", metadata=True, prior="classical")
    with torch.no_grad():
        last_layer(model.net, "nafnet").weight.normal_(0, 0.05)
    save_isp_model(model, tmp_path / "m.pt")
    loaded = load_isp_model(tmp_path / "m.pt")
    assert loaded.isp_config == model.isp_config == {**loaded.isp_config, "prior": "classical", "metadata": True}
    x = torch.rand(1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    plain = small("nafnet")
    assert "prior" not in plain.isp_config  # models saved before priors existed rebuild as they were
    with pytest.raises(IsplabError, match="unknown ISP prior 'fancy': expected one of none, classical"):
        build_isp_model("lfnet", 4, prior="fancy")


@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "blind"])
def test_the_prior_exports_to_onnx_with_parity(metadata, tmp_path):
    from isplab.export import export_onnx, run_onnx

    torch.manual_seed(4)
    model = small("lfnet", metadata=metadata, prior="classical").eval()
    with torch.no_grad():
        last_layer(model.net, "lfnet").weight.normal_(0, 0.05)
    path = tmp_path / "prior.onnx"
    result = export_onnx(model, (torch.rand(1, 4, 16, 16) * 0.5,), path, input_names=["raw"],
                         dynamic_axes={"raw": {2: "h", 3: "w"}})
    assert all(r.passed for r in result.parity)
    x = torch.rand(1, 4, 10, 14) * 0.5
    (out,) = run_onnx(path, [x.numpy()])
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-3)
