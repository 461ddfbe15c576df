"""Source images: pixel values checked against independent readers and published chart colours."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import skimage.data

from isplab.data.sources import (
    PROCEDURAL,
    SKIMAGE_PHOTOS,
    SOURCES,
    check_sources,
    load_source,
    random_crop_resized,
    skimage_photo,
)
from isplab.data.synth import SensorSpec, synthesize_sample
from isplab.errors import IsplabError

# ColorChecker Classic patches in reading order (row by row, 6 per row), 8-bit sRGB, as published
# by X-Rite/BabelColor — typed here independently of the table in isplab.data.sources.
CHECKER = {
    (0, 0): ("dark skin", (115, 82, 68)),
    (0, 2): ("blue sky", (98, 122, 157)),
    (1, 0): ("orange", (214, 126, 44)),
    (1, 1): ("purplish blue", (80, 91, 166)),
    (2, 0): ("blue", (56, 61, 150)),
    (2, 1): ("green", (70, 148, 73)),
    (2, 2): ("red", (175, 54, 60)),
    (2, 3): ("yellow", (231, 199, 31)),
    (2, 4): ("magenta", (187, 86, 149)),
    (2, 5): ("cyan", (8, 133, 161)),
    (3, 0): ("white", (243, 243, 242)),
    (3, 5): ("black", (52, 52, 52)),
}


@pytest.mark.parametrize("name", sorted(SKIMAGE_PHOTOS))
def test_skimage_photos_match_an_independent_reader(name):
    """Every pixel equals imageio's (Pillow's) decoding of the same bundled file, in RGB order."""
    reference = iio.imread(Path(skimage.data.data_dir) / SKIMAGE_PHOTOS[name])[..., :3]
    ours = skimage_photo(name)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_array_equal(np.round(ours * 255).astype(np.uint8), reference)


def test_known_pixels_of_bundled_photos():
    """A few pixels of scikit-image's own loaders, and the photos' overall colour casts."""
    astronaut = skimage_photo("astronaut")
    np.testing.assert_array_equal(np.round(astronaut[0, 0] * 255), skimage.data.astronaut()[0, 0])
    np.testing.assert_array_equal(np.round(skimage_photo("coffee")[200, 300] * 255), skimage.data.coffee()[200, 300])
    # Warm photos are red > green > blue on average, the Saturn-V sky shot is blue.
    for name in ("coffee", "chelsea", "astronaut"):
        r, g, b = skimage_photo(name).reshape(-1, 3).mean(0)
        assert r > g > b, name
    r, g, b = skimage_photo("rocket").reshape(-1, 3).mean(0)
    assert b > g > r


@pytest.mark.parametrize("name", sorted(SKIMAGE_PHOTOS))
def test_load_source_is_a_crop_of_the_independently_read_photo(name):
    reference = iio.imread(Path(skimage.data.data_dir) / SKIMAGE_PHOTOS[name])[..., :3].astype(np.float32) / 255
    expected = random_crop_resized(reference, (96, 64), np.random.default_rng(3))
    np.testing.assert_allclose(load_source(name, (96, 64), np.random.default_rng(3)), expected, atol=1e-6)


def test_crop_keeps_channel_order_and_values():
    image = np.zeros((60, 80, 3), np.float32)
    image[:] = (0.9, 0.5, 0.1)
    out = random_crop_resized(image, (32, 24), np.random.default_rng(0))
    assert out.shape == (24, 32, 3)
    np.testing.assert_allclose(out, np.broadcast_to([0.9, 0.5, 0.1], out.shape), atol=1e-6)
    # A left-to-right ramp stays left to right (no transposition or flip).
    ramp = np.repeat(np.linspace(0, 1, 80, dtype=np.float32)[None, :, None], 60, axis=0).repeat(3, axis=2)
    out = random_crop_resized(ramp, (32, 24), np.random.default_rng(0))
    assert np.all(np.diff(out[12, :, 0]) > 0)


def chart_patch_colours(image: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """The colour at the centre of each of the 6x4 patches, located from the chart's dark frame."""
    frame = np.all(np.isclose(image, 0.05), axis=2)
    rows, cols = np.nonzero(frame)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    ph, pw = (y1 - y0) / 4, (x1 - x0) / 6
    return {
        (r, c): image[int(y0 + (r + 0.5) * ph), int(x0 + (c + 0.5) * pw)] for r in range(4) for c in range(6)
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chart_patches_have_the_published_colours_in_place(seed):
    image = load_source("chart", (240, 160), np.random.default_rng(seed))
    found = chart_patch_colours(image)
    for (r, c), (name, rgb) in CHECKER.items():
        np.testing.assert_allclose(found[r, c] * 255, rgb, atol=0.01, err_msg=f"{name} at row {r}, column {c}")


@pytest.mark.parametrize("name", [*SOURCES, "deadleaves"])
def test_every_source_gives_srgb_of_requested_size(name):
    image = load_source(name, (96, 64), np.random.default_rng(1))
    assert image.shape == (64, 96, 3)
    assert image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.01, "a source must not be flat"


def test_sources_are_deterministic_for_a_seed():
    a = load_source("texture", (64, 64), np.random.default_rng(7))
    b = load_source("texture", (64, 64), np.random.default_rng(7))
    c = load_source("texture", (64, 64), np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.05


def test_user_image_file_as_source(tmp_path):
    """A user's PNG (written by Pillow, not OpenCV) comes back with its own RGB values."""
    rgb = np.zeros((50, 80, 3), np.uint8)
    rgb[:] = (200, 100, 30)
    iio.imwrite(tmp_path / "mine.png", rgb)
    image = load_source(str(tmp_path / "mine.png"), (40, 24), np.random.default_rng(0))
    assert image.shape == (24, 40, 3)
    np.testing.assert_allclose(image, np.broadcast_to(np.array([200, 100, 30]) / 255, image.shape), atol=1e-6)


def test_unknown_source_names_the_choices():
    with pytest.raises(IsplabError, match="unknown source 'nope'.*astronaut"):
        load_source("nope", (32, 32), np.random.default_rng(0))


def test_check_sources_refuses_unknown_names_and_folders(tmp_path):
    image = tmp_path / "mine.png"
    iio.imwrite(image, np.zeros((8, 8, 3), np.uint8))
    assert check_sources(["chart", str(image)]) == ("chart", str(image))
    with pytest.raises(IsplabError, match=r"^unknown source 'nosuch': expected one of training, heldout, deadleaves, chart"):
        check_sources(["chart", "nosuch"])
    with pytest.raises(IsplabError, match=r"is a folder: expected an image file"):
        check_sources([str(tmp_path)])
    with pytest.raises(IsplabError, match="no source images given"):
        check_sources([])


def test_round_robin_order_interleaves_photographs_and_scenes():
    """Sample i uses source i mod len(sources), in the documented interleaved order."""
    assert SOURCES == ("chart", "astronaut", "texture", "coffee", "gradient", "chelsea", "rocket", "motorcycle", "hubble")
    assert sorted(SOURCES) == sorted([*SKIMAGE_PHOTOS, *(name for name in PROCEDURAL if name != "deadleaves")])
    sources = ("gradient", "chart", "coffee")
    used = [synthesize_sample(i, 0, (96, 64), SensorSpec(), sources, noise=False)[3] for i in range(5)]
    assert used == ["gradient", "chart", "coffee", "gradient", "chart"]
    # ...and the content is that source's: sample 1's target is the chart with its patches.
    target = synthesize_sample(1, 0, (240, 160), SensorSpec(), sources, noise=False)[1]
    np.testing.assert_allclose(chart_patch_colours(target)[2, 2] * 255, CHECKER[2, 2][1], atol=0.01)


def test_heldout_photographs_and_groups():
    """'heldout' stands for every bundled photograph (scikit-learn's only when it is installed),
    'training' for generated scenes only; no photograph is a training source."""
    from isplab.data.sources import (
        SKLEARN_PHOTOS,
        TRAINING_SOURCES,
        expand_sources,
        heldout_photos,
        is_heldout_photo,
        sklearn_available,
    )

    assert expand_sources(["training"]) == TRAINING_SOURCES
    assert not any(is_heldout_photo(name) for name in TRAINING_SOURCES)
    assert set(TRAINING_SOURCES) <= set(PROCEDURAL) and TRAINING_SOURCES.count("deadleaves") == 3
    assert expand_sources(["heldout", "chart"]) == (*heldout_photos(), "chart")
    if sklearn_available():
        assert heldout_photos() == (*SKIMAGE_PHOTOS, *SKLEARN_PHOTOS)
        china = load_source("china", (64, 48), np.random.default_rng(0))
        assert china.shape == (48, 64, 3) and china.std() > 0.05
    else:
        assert heldout_photos() == tuple(SKIMAGE_PHOTOS)
        with pytest.raises(IsplabError, match="source 'china' needs scikit-learn, which is not installed"):
            check_sources(["china"])
