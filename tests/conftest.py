"""Fixtures shared by the whole suite."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isplab.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def isplab_cli():
    """Run ``isplab ARGS`` in a subprocess, as a user would; returns the completed process."""
    return _run


@pytest.fixture
def isplab_ok():
    """Run ``isplab ARGS``, assert it exited 0 (showing the end of stderr otherwise), return stdout."""

    def run(*args, cwd=None) -> str:
        result = _run(*args, cwd=cwd)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    return run
