import colour
import cv2
import numpy as np
import pytest
import torch

from isplab.data.cameras import TEST_CAMERAS, xyz_to_camera
from isplab.data.sources import load_source
from isplab.data.unprocess import (
    add_noise,
    illuminant_neutral,
    noise_levels_for_iso,
    process_rgb,
    random_noise_levels,
    random_xyz_to_camera,
    sample_params,
    unprocess,
    unprocess_rgb,
)
from isplab.engine.metrics import psnr
from isplab.errors import IsplabError
from isplab.isp import bayer
from isplab.isp.pipeline import render


def _batch(params_list, key):
    return torch.tensor(np.array([getattr(p, key) for p in params_list]), dtype=torch.float64)


def test_neutral_is_the_camera_response_to_a_planckian_white():
    rng = np.random.default_rng(0)
    m = random_xyz_to_camera(rng)
    xy = colour.temperature.CCT_to_xy_Kang2002(4000)
    xyz = colour.xy_to_XYZ(xy)
    expected = m @ xyz
    np.testing.assert_allclose(illuminant_neutral(m, 4000.0), expected / expected[1], rtol=1e-4)
    # warmer light -> more red, less blue in the camera's response
    warm, cold = illuminant_neutral(m, 2800.0), illuminant_neutral(m, 7000.0)
    assert warm[0] > cold[0] and warm[2] < cold[2]


def test_params_are_consistent_ground_truth():
    p = sample_params(np.random.default_rng(3))
    assert 2500 <= p.illuminant_cct <= 7500
    np.testing.assert_allclose(p.wb_gains * p.as_shot_neutral, 1.0)
    # the CCM maps white-balanced camera white to sRGB white (rows of its inverse sum to 1)
    np.testing.assert_allclose(p.ccm @ np.ones(3), np.ones(3), atol=1e-6)
    assert 1.0 <= p.brightness_gain <= 2.0


def test_noise_levels_follow_the_log_linear_model():
    rng = np.random.default_rng(0)
    shot, read = np.array([random_noise_levels(rng) for _ in range(2000)]).T
    assert 1e-4 <= shot.min() and shot.max() <= 1.2e-2
    slope, intercept = np.polyfit(np.log(shot), np.log(read), 1)
    assert slope == pytest.approx(2.18, abs=0.05) and intercept == pytest.approx(1.2, abs=0.3)


def test_noise_variance_matches_the_model():
    raw = torch.full((1, 1, 256, 256), 0.5, dtype=torch.float64)
    shot, read = torch.tensor([0.01], dtype=torch.float64), torch.tensor([1e-4], dtype=torch.float64)
    noisy = add_noise(raw, shot, read, torch.Generator().manual_seed(0))
    assert (noisy - raw).var().item() == pytest.approx(0.5 * 0.01 + 1e-4, rel=0.03)
    assert abs((noisy - raw).mean().item()) < 1e-3


def _round_trip_psnr(images: np.ndarray, pattern: str, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    params = [sample_params(rng, noise=False) for _ in images]
    srgb = torch.from_numpy(images).permute(0, 3, 1, 2).double()
    ccm, gains = _batch(params, "ccm"), _batch(params, "wb_gains")
    brightness = _batch(params, "brightness_gain")
    raw = unprocess(srgb, ccm, gains, brightness, pattern)
    assert raw.shape == (len(images), 1, *images.shape[1:3])
    out = render(raw, pattern, gains * brightness[:, None], ccm)
    return psnr(out.float(), srgb.float(), reduction="none")


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_unprocess_then_render_reproduces_the_source(pattern):
    """The classical pipeline inverts unprocessing: > 40 dB without noise (the issue's target).

    Demosaicing is the one lossy step, so the sources are band-limited as a lens would leave them
    (Gaussian PSF, sigma 1.5 px); sharp aliased content and the chart's hard edges measure 25-40 dB (benchmarks/foundation.py).
    """
    rng = np.random.default_rng(5)
    sources = ["texture", "coffee", "astronaut", "rocket"]
    images = np.stack([cv2.GaussianBlur(load_source(s, (192, 144), rng), (0, 0), 1.5) for s in sources])
    values = _round_trip_psnr(images, pattern, seed=6)
    assert values.min() > 40, values


def test_smooth_scenes_round_trip_beyond_50_db():
    images = np.stack([load_source("gradient", (64, 48), np.random.default_rng(i)) for i in range(3)])
    values = _round_trip_psnr(images, "GBRG", seed=1)
    assert values.min() > 50, values


def test_unprocess_mosaic_carries_the_illuminant_colour():
    """A grey source becomes, per CFA plane, the camera neutral scaled by exposure."""
    params = sample_params(np.random.default_rng(11), noise=False)
    grey = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    raw = unprocess(grey, _batch([params], "ccm"), _batch([params], "wb_gains"), _batch([params], "brightness_gain"), "RGGB")
    planes = bayer.pack(raw[:, 0], "RGGB")[0].mean(dim=(-1, -2)).numpy()
    rgb = np.array([planes[0], (planes[1] + planes[2]) / 2, planes[3]])
    np.testing.assert_allclose(rgb / rgb[1], params.as_shot_neutral, rtol=1e-6)


def test_noise_scales_with_iso_as_brooks_et_al():
    """Shot noise proportional to ISO; read noise log-linear in it (slope 2.18, intercept 1.20)."""
    shot100, read100 = noise_levels_for_iso(100.0)
    shot6400, read6400 = noise_levels_for_iso(6400.0)
    assert shot100 == pytest.approx(1e-4) and shot6400 == pytest.approx(6.4e-3)
    assert read100 == pytest.approx(np.exp(2.18 * np.log(1e-4) + 1.20))
    assert read6400 / read100 == pytest.approx(64.0**2.18)
    rng = np.random.default_rng(0)
    scattered = np.log([noise_levels_for_iso(800.0, rng)[1] for _ in range(3000)])
    assert scattered.mean() == pytest.approx(np.log(noise_levels_for_iso(800.0)[1]), abs=0.02)
    assert scattered.std() == pytest.approx(0.26, abs=0.02)
    with pytest.raises(IsplabError, match="ISO must be positive"):
        noise_levels_for_iso(0.0)


def test_real_camera_params_carry_iso_exposure_and_camera():
    rng = np.random.default_rng(2)
    for _ in range(30):
        p = sample_params(rng, camera_split="test")
        assert p.camera in TEST_CAMERAS
        np.testing.assert_array_equal(p.xyz_to_camera, xyz_to_camera(p.camera))
        assert 100 <= p.iso <= 12000 and -1.0 <= p.exposure_ev <= 0.5
        assert p.shot_noise == pytest.approx(1e-4 * p.iso / 100)
        # the exposure error is folded into the brightness gain: base gain in [1, 2] divided by 2^ev
        assert 1.0 - 1e-9 <= p.brightness_gain * 2**p.exposure_ev <= 2.0 + 1e-9
    legacy = sample_params(np.random.default_rng(3))
    assert legacy.camera == "legacy mix" and legacy.exposure_ev == 0.0 and legacy.iso is None


def test_overexposed_raw_clips_and_the_target_is_its_ideal_rendering():
    """A bright grey overexposed by a stop saturates the sensor: the target keeps the clipping."""
    p = sample_params(np.random.default_rng(0), camera_split="val", noise=False)
    ccm, gains = _batch([p], "ccm"), _batch([p], "wb_gains")
    srgb = torch.full((1, 3, 4, 4), 0.9, dtype=torch.float64)
    srgb[..., :2] = 0.3
    camera = unprocess_rgb(srgb, ccm, gains, torch.tensor([0.5], dtype=torch.float64))  # gain 1/2: one stop over
    clipped = camera.clamp(0, 1)
    assert camera[..., 2:].min() > 1.0 and camera[..., :2].max() < 1.0
    out = process_rgb(clipped, ccm, gains, torch.tensor([0.5], dtype=torch.float64))
    # the saturated pixels render as a saturated sensor (1, 1, 1) does, not as the scene's 0.9 grey
    saturated = process_rgb(torch.ones(1, 3, 1, 1, dtype=torch.float64), ccm, gains, torch.tensor([0.5], dtype=torch.float64))
    np.testing.assert_allclose(out[..., 2:].numpy(), saturated.expand(1, 3, 4, 2).numpy(), atol=1e-12)
    assert np.abs(out[..., 2:].numpy() - 0.9).max() > 0.05
    np.testing.assert_allclose(out[..., :2].numpy(), 0.3, atol=1e-6)  # the rest is the scene itself


def test_process_rgb_is_render_without_the_mosaic():
    """On a flat patch demosaicking is exact, so render() of the mosaic equals process_rgb()."""
    p = sample_params(np.random.default_rng(4), camera_split="train", noise=False)
    ccm, gains, brightness = _batch([p], "ccm"), _batch([p], "wb_gains"), _batch([p], "brightness_gain")
    camera = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64).reshape(1, 3, 1, 1).expand(1, 3, 8, 8)
    expected = process_rgb(camera, ccm, gains, brightness)
    rendered = render(bayer.mosaic(camera, "RGGB").unsqueeze(1), "RGGB", gains * brightness[:, None], ccm)
    np.testing.assert_allclose(rendered.numpy(), expected.numpy(), atol=1e-6)
