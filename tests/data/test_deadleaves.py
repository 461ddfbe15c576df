"""Dead-leaves scenes: the model's statistics (radius law, 1/f^2 spectrum, occlusion), colours, blur."""

import colour
import numpy as np
import pytest

from isplab.data.deadleaves import (
    _front_most,
    _leaf_pixels,
    dead_leaves,
    lab_to_srgb,
    leaf_radii,
    natural_colours,
)
from isplab.data.sources import load_source
from isplab.errors import IsplabError


def radial_power_slope(image: np.ndarray) -> float:
    """Log-log slope of the radially averaged power spectrum of the luminance, 4/N .. 1/4 cycles/px."""
    grey = image.mean(axis=2) - image.mean()
    n = grey.shape[0]
    window = np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey * window))) ** 2
    y, x = np.indices(power.shape)
    radius = np.hypot(y - n // 2, x - n // 2).astype(int)
    radial = np.bincount(radius.ravel(), power.ravel()) / np.bincount(radius.ravel())
    f = np.arange(len(radial)) / n
    band = (f >= 4 / n) & (f <= 0.25)
    return float(np.polyfit(np.log(f[band]), np.log(radial[band]), 1)[0])


def test_same_generator_state_same_scene():
    a = dead_leaves((96, 64), np.random.default_rng(5))
    b = dead_leaves((96, 64), np.random.default_rng(5))
    c = dead_leaves((96, 64), np.random.default_rng(6))
    assert a.shape == (64, 96, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.05
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_registered_as_a_source():
    np.testing.assert_array_equal(
        load_source("deadleaves", (80, 48), np.random.default_rng(2)), dead_leaves((80, 48), np.random.default_rng(2))
    )


def test_radii_follow_the_r_minus_3_law():
    """The histogram's log-log slope is -3 (a uniform radius law would give 0)."""
    radii = leaf_radii(200_000, np.random.default_rng(0), 2.0, 200.0)
    assert radii.min() >= 2.0 and radii.max() <= 200.0
    edges = np.geomspace(2.0, 50.0, 15)
    counts, _ = np.histogram(radii, edges)
    density = counts / np.diff(edges)
    centres = np.sqrt(edges[1:] * edges[:-1])
    slope = np.polyfit(np.log(centres), np.log(density), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.05)
    # Closed form: P(r > 4) = (4^-2 - 200^-2) / (2^-2 - 200^-2) for p(r) ~ r^-3 on [2, 200].
    expected = (4.0**-2 - 200.0**-2) / (2.0**-2 - 200.0**-2)
    assert (radii > 4).mean() == pytest.approx(expected, abs=0.005)


def test_power_spectrum_falls_as_one_over_f_squared():
    """Scale invariance: the slope is near the natural -2; uniform radii (alpha 0) are far steeper."""
    sharp = {"blur_probability": 0.0}
    slopes = [radial_power_slope(dead_leaves(256, np.random.default_rng(s), **sharp)) for s in range(4)]
    assert np.mean(slopes) == pytest.approx(-2.1, abs=0.25)
    uniform = [radial_power_slope(dead_leaves(256, np.random.default_rng(s), alpha=0.0, **sharp)) for s in range(4)]
    assert np.mean(uniform) < -2.5


def test_front_most_leaf_hides_the_ones_behind():
    """Leaf 0 (a small disc) lies in front of leaf 1 (a large rectangle) where they overlap."""
    radii = np.array([3.0, 12.0])
    pixels, owners = _leaf_pixels(
        32, 32, radii, cx=np.array([16.0, 16.0]), cy=np.array([16.0, 16.0]), kind=np.array([0, 1]),
        theta=np.zeros(2), aspect=np.ones(2),
    )
    front = _front_most(pixels, owners, 32 * 32, background=2).reshape(32, 32)
    disc = (np.hypot(*np.mgrid[-16:16, -16:16]) <= 3)
    np.testing.assert_array_equal(front == 0, disc)
    # The unrotated square of half diagonal 12 spans 16 +- 12/sqrt(2) = 7.5 .. 24.5 -> pixels 8..24.
    square = np.zeros((32, 32), bool)
    square[8:25, 8:25] = True
    np.testing.assert_array_equal(front == 1, square & ~disc)
    assert np.all(front[~square] == 2)


def test_flat_leaves_use_only_palette_colours():
    palette = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.2, 0.2, 0.9]])
    image = dead_leaves(64, np.random.default_rng(1), palette=palette, texture_probability=0.0, blur_probability=0.0)
    distances = np.abs(image.reshape(-1, 1, 3) - palette[None].astype(np.float32)).sum(axis=2).min(axis=1)
    assert distances.max() < 1e-6
    used = {tuple(np.round(c, 3)) for c in image.reshape(-1, 3)}
    assert len(used) == 3


def test_textures_and_depth_blur_change_the_scene_as_described():
    rng = lambda: np.random.default_rng(4)
    flat = dead_leaves(128, rng(), texture_probability=0.0, blur_probability=0.0)
    textured = dead_leaves(128, rng(), texture_probability=1.0, blur_probability=0.0)
    blurred = dead_leaves(128, rng(), texture_probability=0.0, blur_probability=1.0)
    # Flat leaves: a few hundred distinct colours at most (one per visible leaf); textures add many more.
    distinct = lambda im: len(np.unique(np.round(im.reshape(-1, 3), 4), axis=0))
    assert distinct(textured) > 3 * distinct(flat)
    # Defocus removes high frequencies: mean absolute horizontal gradient drops.
    gradient = lambda im: np.abs(np.diff(im, axis=1)).mean()
    assert gradient(blurred) < 0.8 * gradient(flat)


def test_lab_to_srgb_matches_colour_science():
    lab = np.array([[50.0, 10.0, -20.0], [75.0, -30.0, 40.0], [30.0, 5.0, 5.0], [90.0, 0.0, 0.0]])
    ours = lab_to_srgb(lab)
    xyz = colour.Lab_to_XYZ(lab, illuminant=colour.CCS_ILLUMINANTS["CIE 1931 2 Degree Standard Observer"]["D65"])
    reference = colour.XYZ_to_sRGB(xyz)
    np.testing.assert_allclose(ours, reference, atol=2e-3)


def test_colour_model_statistics():
    """Lightness ~ 100 Beta(2, 2.5) (mean 44.4), chroma ~ Gamma(1.5, 12) (mean 18) before gamut clipping."""
    srgb = natural_colours(20_000, np.random.default_rng(0))
    lab = colour.XYZ_to_Lab(colour.sRGB_to_XYZ(srgb))
    assert lab[:, 0].mean() == pytest.approx(44.4, abs=3.0)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    assert 12.0 < np.median(chroma) < 18.0  # gamut clipping only ever lowers chroma
    # no hue is favoured: the mean of a and b is near 0
    assert abs(lab[:, 1].mean()) < 3.0 and abs(lab[:, 2].mean()) < 3.0


def test_bad_arguments_are_refused():
    with pytest.raises(IsplabError, match="rmin < rmax"):
        dead_leaves(32, np.random.default_rng(0), rmin=5.0, rmax=2.0)
    with pytest.raises(IsplabError, match="unknown leaf shape"):
        dead_leaves(32, np.random.default_rng(0), shapes=("triangle",))
    with pytest.raises(IsplabError, match="palette"):
        dead_leaves(32, np.random.default_rng(0), palette=np.zeros((3, 4)))


def test_scene_colours_lie_within_the_range_of_the_bundled_photographs():
    """Mean lightness and median chroma of dead-leaves scenes vs scikit-image's colour photographs."""
    from isplab.data.sources import SKIMAGE_PHOTOS, skimage_photo

    def stats(image):
        lab = colour.XYZ_to_Lab(colour.sRGB_to_XYZ(image.reshape(-1, 3)[::5]))
        return lab[:, 0].mean(), np.median(np.hypot(lab[:, 1], lab[:, 2]))

    photos = np.array([stats(skimage_photo(name)) for name in SKIMAGE_PHOTOS if name != "hubble"])  # hubble: night sky
    scenes = np.array([stats(dead_leaves(192, np.random.default_rng(s))) for s in range(4)])
    lightness, chroma = scenes.mean(axis=0)
    assert photos[:, 0].min() <= lightness <= photos[:, 0].max()
    assert photos[:, 1].min() <= chroma <= photos[:, 1].max()
