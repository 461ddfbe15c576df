"""Fixtures of the proxy tests: the installed darktable-cli (required in CI) and small DNGs."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from isplab.data.synth import SensorSpec, synthesize_sample
from isplab.io.dng import write_dng
from isplab.io.raw import RawImage


def _require_darktable():
    if shutil.which("darktable-cli") is None:
        message = "darktable-cli is not installed (apt-get install darktable)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: CI must run the darktable tests")
        pytest.skip(message)
    from isplab.workflows.proxy.darktable import find_darktable

    return find_darktable()


@pytest.fixture(scope="session")
def darktable():
    """The installed darktable (skips without it; fails in CI, where .ci/run installs it)."""
    return _require_darktable()


def make_dng(path, *, source: str, seed: int = 0, size=(128, 96), noise: bool = False):
    """A synthetic DNG from isplab's data synth machinery (one source image, optional noise)."""
    sensor = SensorSpec()
    mosaic, _, params, _, exif = synthesize_sample(0, seed, size, sensor, sources=(source,), noise=noise)
    raw = RawImage(
        mosaic=mosaic, cfa_pattern=sensor.pattern, black_level=np.full(4, sensor.black_level),
        white_level=sensor.white_level, as_shot_neutral=params.as_shot_neutral, color_matrix=params.xyz_to_camera,
        exposure_time=exif["exposure_time"], iso=exif["iso"], aperture=exif["aperture"], make=sensor.make,
        model=sensor.model, unique_camera_model=f"{sensor.make} {sensor.model}",
    )  # fmt: skip
    return write_dng(path, raw)


@pytest.fixture(scope="session")
def gradient_dng(tmp_path_factory):
    """A smooth, noise-free 128x96 DNG: demosaicing is (nearly) linear on it."""
    return make_dng(tmp_path_factory.mktemp("dng") / "gradient.dng", source="gradient")


@pytest.fixture(scope="session")
def texture_dng(tmp_path_factory):
    """A 128x96 DNG with detail at all scales (for sharpen and blur)."""
    return make_dng(tmp_path_factory.mktemp("dng") / "texture.dng", source="texture", seed=3)
