"""Colour temperature conversions against colour-science."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.isp.temperature import (
    cct_to_mired,
    cct_to_xy,
    mired_difference,
    mired_to_cct,
    xy_to_cct,
    xy_to_xyz,
)

colour = pytest.importorskip("colour")
temperature = pytest.importorskip("colour.temperature")

# Kang's spline boundaries (2222, 4000 K) on both sides, and the domain's ends.
CCTS = np.array([1667, 2000, 2222, 2223, 2856, 3999, 4000, 4001, 5000, 6504, 7600, 10000, 25000], dtype=float)


def _planckian_xy(ccts: np.ndarray) -> np.ndarray:
    """Exact Planckian-locus chromaticities (colour-science's Ohno 2013 with Duv = 0)."""
    uv = [temperature.CCT_to_uv_Ohno2013(np.array([t, 0.0])) for t in ccts]
    return colour.UCS_uv_to_xy(np.array(uv))


def test_cct_to_xy_matches_kang2002():
    out = cct_to_xy(torch.from_numpy(CCTS.reshape(1, -1)))
    assert out.shape == (1, len(CCTS), 2)
    np.testing.assert_allclose(out[0].numpy(), temperature.CCT_to_xy_Kang2002(CCTS), rtol=1e-12)
    np.testing.assert_allclose(cct_to_xy(6504.0).numpy(), temperature.CCT_to_xy_Kang2002(6504.0), rtol=1e-12)


@pytest.mark.parametrize(
    "method, reference", [("mccamy1992", "xy_to_CCT_McCamy1992"), ("hernandez1999", "xy_to_CCT_Hernandez1999")]
)
def test_xy_to_cct_matches_colour(method, reference):
    xy = np.concatenate([temperature.CCT_to_xy_Kang2002(CCTS), [[0.25, 0.25], [0.24, 0.23]]])  # last: > 50000 K
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = getattr(temperature, reference)(xy)
    np.testing.assert_allclose(xy_to_cct(torch.from_numpy(xy), method).numpy(), expected, rtol=1e-10)


def test_documented_accuracy_on_the_planckian_locus():
    camera_range = np.array([2856, 4000, 5000, 6504, 8000], dtype=float)
    error = xy_to_cct(_planckian_xy(camera_range)).numpy() / camera_range - 1  # default: McCamy
    assert np.abs(error).max() < 0.0025
    daylight_range = np.array([4000, 6504, 10000, 25000], dtype=float)
    error = xy_to_cct(_planckian_xy(daylight_range), "hernandez1999").numpy() / daylight_range - 1
    assert np.abs(error).max() < 0.0025


def test_cct_xy_round_trip_over_camera_range():
    # Two independent approximations (Kang's locus, McCamy's inverse) agree within 0.5%.
    ccts = torch.linspace(2800, 7600, 25, dtype=torch.float64)
    torch.testing.assert_close(xy_to_cct(cct_to_xy(ccts)), ccts, rtol=5e-3, atol=0)


def test_mireds():
    np.testing.assert_allclose(cct_to_mired([2000.0, 5000.0]).numpy(), [500.0, 200.0])
    np.testing.assert_allclose(mired_to_cct(torch.tensor([500.0, 200.0])).numpy(), [2000.0, 5000.0])
    a, b = np.array([2800.0, 6500.0, 5000.0]), np.array([7600.0, 5000.0, 5000.0])
    expected = np.abs(1e6 / a - 1e6 / b)
    np.testing.assert_allclose(mired_difference(a, b).numpy(), expected)
    np.testing.assert_allclose(mired_difference(b, a).numpy(), expected)


def test_xy_to_xyz_matches_colour():
    xy = np.array([[0.3127, 0.329], [0.4476, 0.4074]])
    np.testing.assert_allclose(xy_to_xyz(xy).numpy(), colour.xy_to_XYZ(xy), rtol=1e-12)
    np.testing.assert_allclose(xy_to_xyz(xy, Y=0.5).numpy(), 0.5 * colour.xy_to_XYZ(xy), rtol=1e-12)
    np.testing.assert_allclose(
        xy_to_xyz(torch.from_numpy(xy), Y=torch.tensor([1.0, 2.0], dtype=torch.float64)).numpy(),
        colour.xy_to_XYZ(xy) * [[1.0], [2.0]],
        rtol=1e-12,
    )


def test_conversions_are_differentiable():
    ccts = torch.tensor([2000.0, 3000.0, 5000.0, 9000.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cct_to_xy, (ccts,))
    xy = cct_to_xy(ccts).detach().requires_grad_()
    for method in ("mccamy1992", "hernandez1999"):
        assert torch.autograd.gradcheck(lambda v, m=method: xy_to_cct(v, m), (xy,))
    assert torch.autograd.gradcheck(mired_difference, (ccts, ccts.detach().flip(0).requires_grad_()))


def test_bad_arguments_are_reported():
    with pytest.raises(IsplabError, match=r"cct must be within 1667\.\.25000 K .*got \[1000\.0, 5000\.0\]"):
        cct_to_xy([1000.0, 5000.0])
    with pytest.raises(IsplabError, match=r"xy must have shape \(\.\.\., 2\) .*got \(3,\)"):
        xy_to_cct([0.3, 0.3, 0.4])
    with pytest.raises(IsplabError, match="unknown xy_to_cct method 'robertson'"):
        xy_to_cct([0.3, 0.3], method="robertson")
