"""CalibratedAWB: flip averaging and the affine mired calibration, in values; saving and loading it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.models.awb import CalibratedAWB, base_net, calibrated, fit_calibration
from isplab.workflows.awb.model import build_awb_model, load_awb_model, save_awb_model


def _inputs(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.uniform(0.02, 0.9, (n, 12, 16, 3)).astype(np.float32))
    return images, torch.from_numpy(rng.uniform(5, 3000, n).astype(np.float32))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return build_awb_model("vc4", "small", width=4, hidden=8).eval()


def test_flip_average_is_the_mean_of_the_image_and_its_mirror_in_mireds(net):
    image, lux = _inputs()
    model = calibrated(net, flip=True).eval()
    with torch.no_grad():
        plain = 1e6 / net(image, lux)
        mirrored = 1e6 / net(image.flip(2), lux)  # W is axis 2 of (B, H, W, 3)
        upside_down = 1e6 / net(image.flip(1), lux)
        got = 1e6 / model(image, lux)
    torch.testing.assert_close(got, (plain + mirrored) / 2, rtol=1e-5, atol=1e-3)
    assert (plain - mirrored).abs().max() > 0.01  # the net is not mirror-symmetric: the average matters
    assert (got - (plain + upside_down) / 2).abs().max() > 0.005  # and it is the horizontal mirror
    # The average is mirror-invariant, as the illuminant is.
    with torch.no_grad():
        torch.testing.assert_close(model(image.flip(2), lux), model(image, lux), rtol=1e-5, atol=1e-2)


def test_calibration_is_offset_plus_scale_times_mireds(net):
    image, lux = _inputs()
    model = CalibratedAWB(net, flip=False, scale=0.8, offset=40.0).eval()
    with torch.no_grad():
        expected = 40.0 + 0.8 * (1e6 / net(image, lux))
        torch.testing.assert_close(1e6 / model(image, lux), expected, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(CalibratedAWB(net, flip=False)(image, lux), net(image, lux), rtol=1e-6, atol=1e-3)


def test_fit_calibration_recovers_a_line_and_refuses_degenerate_data():
    x = np.array([150.0, 200.0, 250.0, 300.0, 330.0])
    scale, offset = fit_calibration(x, 3.0 + 0.5 * x)
    assert (scale, offset) == (pytest.approx(0.5), pytest.approx(3.0))
    # Least squares: no affine map has a smaller squared error (here against noisy truth).
    y = 3.0 + 0.5 * x + np.array([4.0, -3.0, 1.0, -5.0, 2.0])
    scale, offset = fit_calibration(x, y)
    best = np.sum((offset + scale * x - y) ** 2)
    for ds, do in ((0.01, 0.0), (-0.01, 0.0), (0.0, 1.0), (0.0, -1.0)):
        assert np.sum((offset + do + (scale + ds) * x - y) ** 2) > best
    assert fit_calibration([200.0], [210.0]) == (1.0, 0.0)
    assert fit_calibration([200.0, 200.0], [210.0, 190.0]) == (1.0, 0.0)


def test_a_calibrated_model_file_round_trips(net, tmp_path):
    model = calibrated(net, flip=True, scale=0.9, offset=21.0)
    assert model.awb_config["target"] == "vc4" and model.awb_config["flip_average"] is True
    save_awb_model(model, tmp_path / "m.pt")
    loaded = load_awb_model(tmp_path / "m.pt")
    assert isinstance(loaded, CalibratedAWB) and loaded.flip
    assert (float(loaded.scale), float(loaded.offset)) == (pytest.approx(0.9), pytest.approx(21.0))
    image, lux = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, lux), model.eval()(image, lux))
    assert base_net(loaded).awb_config == net.awb_config
    # Wrapping a wrapped model replaces its test-time parts rather than nesting them.
    again = calibrated(loaded, flip=False)
    assert again.net is loaded.net and not again.flip
