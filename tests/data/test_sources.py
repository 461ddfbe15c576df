import numpy as np
import pytest

from isplab.data.sources import COLOR_CHECKER_SRGB, SOURCES, load_source
from isplab.errors import IsplabError


@pytest.mark.parametrize("name", SOURCES)
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


def test_chart_contains_the_color_checker_patches():
    image = load_source("chart", (240, 160), np.random.default_rng(0))
    colours = np.unique(image.reshape(-1, 3).round(4), axis=0)
    found = sum(np.any(np.all(np.isclose(colours, patch, atol=1e-3), axis=1)) for patch in COLOR_CHECKER_SRGB)
    assert found == 24


def test_user_image_file_as_source(tmp_path):
    import cv2

    rgb = (np.random.default_rng(0).random((50, 80, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "mine.png"), rgb[..., ::-1])
    image = load_source(str(tmp_path / "mine.png"), (40, 24), np.random.default_rng(0))
    assert image.shape == (24, 40, 3)


def test_unknown_source_names_the_choices():
    with pytest.raises(IsplabError, match="unknown source 'nope'.*astronaut"):
        load_source("nope", (32, 32), np.random.default_rng(0))


def test_round_robin_order_covers_every_source_once():
    from isplab.data.sources import PROCEDURAL, SKIMAGE_PHOTOS

    assert sorted(SOURCES) == sorted([*SKIMAGE_PHOTOS, *PROCEDURAL])
