"""Fixtures of the proxy tests: the installed darktable-cli (required in CI) and small DNGs."""

from __future__ import annotations

import os
import shutil

import pytest

from isplab.data.synth import SensorSpec, synthesize_raw
from isplab.io.dng import write_dng


def _require_darktable():
    if shutil.which("darktable-cli") is None:
        message = "darktable-cli is not installed (apt-get install darktable)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: CI must run the darktable tests")
        pytest.skip(message)
    from isplab.workflows.proxy.darktable import find_darktable

    return find_darktable()


@pytest.fixture(scope="session")
def refused():
    """``refused(*args)``: run ``isplab ARGS`` in this process, assert it failed with an
    IsplabError and return its message (the CLI prints it as one ``error:`` line, checked once in a
    subprocess in ``test_generate.py``)."""
    from typer.testing import CliRunner

    from isplab.cli import app
    from isplab.errors import IsplabError

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert isinstance(result.exception, IsplabError), result.output
        return str(result.exception)

    return run


@pytest.fixture(scope="session")
def darktable():
    """The installed darktable (skips without it; fails in CI, where .ci/run installs it)."""
    return _require_darktable()


def make_dng(path, *, source: str, seed: int = 0, size=(128, 96), noise: bool = False):
    """A synthetic DNG from isplab's data synth machinery (one source image, optional noise)."""
    raw = synthesize_raw(0, seed, size, SensorSpec(), sources=(source,), noise=noise)[0]
    return write_dng(path, raw)


@pytest.fixture(scope="session")
def gradient_dng(tmp_path_factory):
    """A smooth, noise-free 128x96 DNG: demosaicing is (nearly) linear on it."""
    return make_dng(tmp_path_factory.mktemp("dng") / "gradient.dng", source="gradient")


@pytest.fixture(scope="session")
def texture_dng(tmp_path_factory):
    """A 128x96 DNG with detail at all scales (for sharpen and blur)."""
    return make_dng(tmp_path_factory.mktemp("dng") / "texture.dng", source="texture", seed=3)
