"""Real cameras' colour matrices: copied faithfully, split without leaks, physically sensible."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from isplab.data.cameras import (
    CAMERAS,
    TEST_CAMERAS,
    VAL_CAMERAS,
    camera_split,
    xyz_to_camera,
)
from isplab.data.unprocess import illuminant_neutral, sample_camera
from isplab.errors import IsplabError
from isplab.isp.color import LINEAR_SRGB_TO_XYZ, camera_to_srgb_matrix

CAMCONST = Path("/usr/share/rawtherapee/camconst.json")


def test_spot_values_typed_from_camconst():
    """Two entries typed here by hand from camconst.json (RawTherapee 5.9)."""
    assert CAMERAS["Nikon D700"] == (8139, -2171, -664, -8748, 16541, 2296, -1924, 2008, 8093)
    assert CAMERAS["Sony ILCE-7M3"] == (7374, -2389, -551, -5435, 13162, 2519, -1006, 1795, 6552)
    np.testing.assert_allclose(xyz_to_camera("Nikon D700")[1], [-0.8748, 1.6541, 0.2296])


@pytest.mark.skipif(not CAMCONST.is_file(), reason="Debian's rawtherapee-data is not installed")
def test_every_matrix_equals_camconst():
    text = re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", CAMCONST.read_text(), flags=re.DOTALL))
    found = {}
    for match in re.finditer(r'"make_model"\s*:\s*(\[[^\]]*\]|"[^"]*")(.*?)(?="make_model"|\Z)', text, flags=re.DOTALL):
        names = json.loads(match.group(1))
        matrix = re.search(r'"dcraw_matrix"\s*:\s*\[([^\]]*)\]', match.group(2))
        if matrix:
            for name in [names] if isinstance(names, str) else names:
                found[name] = tuple(int(v) for v in matrix.group(1).split(","))
    for name, matrix in CAMERAS.items():
        assert found[name] == matrix, name


def test_splits_are_disjoint_and_cover_every_camera():
    train, val, test = (set(camera_split(s)) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(CAMERAS) == set(camera_split("all"))
    assert len(CAMERAS) >= 40 and len(test) >= 8 and len(val) >= 5
    assert set(TEST_CAMERAS) == test and set(VAL_CAMERAS) == val
    # no two cameras share a matrix, so no held-out camera is a training camera under another name
    assert len(set(CAMERAS.values())) == len(CAMERAS)
    # several makes on each side, smartphones included among the held-out ones
    makes = lambda names: {n.split()[0].lower() for n in names}
    assert len(makes(test)) >= 6 and len(makes(train)) >= 6
    assert "LG mobile LG-H815" in test


def test_every_camera_renders_white_as_white():
    """Camera white under D65, white balanced, maps to sRGB (1, 1, 1); neutrals are positive."""
    d65 = (LINEAR_SRGB_TO_XYZ @ torch.ones(3, dtype=torch.float64)).numpy()
    for name in CAMERAS:
        m = xyz_to_camera(name)
        neutral = m @ d65
        assert np.all(neutral > 0), name
        balanced = neutral / neutral
        np.testing.assert_allclose(camera_to_srgb_matrix(m).numpy() @ balanced, np.ones(3), atol=1e-9)
        # a warm light gives more red than blue in every real camera
        warm = illuminant_neutral(m, 2800.0)
        assert warm[0] > warm[2], name


def test_sampled_cameras_come_from_their_split():
    rng = np.random.default_rng(0)
    test_matrices = {name: xyz_to_camera(name) for name in TEST_CAMERAS}
    for _ in range(20):
        name, matrix = sample_camera(rng, "test")
        np.testing.assert_array_equal(matrix, test_matrices[name])
    seen = {sample_camera(rng, "test")[0] for _ in range(200)}
    assert seen == set(TEST_CAMERAS)
    for _ in range(20):
        name, matrix = sample_camera(rng, "train")
        first, second = (part.rsplit(" x ", 1) for part in name.split(" + "))
        assert first[0] in camera_split("train") and second[0] in camera_split("train") and first[0] != second[0]
        w = float(first[1])
        np.testing.assert_allclose(matrix, w * xyz_to_camera(first[0]) + (1 - w) * xyz_to_camera(second[0]), atol=0.01)


def test_unknown_names_are_refused():
    with pytest.raises(IsplabError, match="unknown camera 'Kodak'"):
        xyz_to_camera("Kodak")
    with pytest.raises(IsplabError, match="unknown camera split 'dev': expected one of train, val, test, all"):
        camera_split("dev")
