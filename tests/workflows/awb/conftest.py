"""Fixtures shared by the AWB workflow's tests."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from isplab.cli import main


@pytest.fixture
def awb_cli(monkeypatch, capsys):
    """``run(cwd, *args) -> (code, stdout, stderr)``: ``isplab awb ARGS`` through the real entry point,
    in process, in ``cwd`` (``None``: the current folder)."""

    def run(cwd: Path | None, *args: str) -> tuple[int, str, str]:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        # Lightning's log handler keeps the stderr of the test that imported it; give it this one's.
        for handler in logging.getLogger("lightning.pytorch").handlers:
            if isinstance(handler, logging.StreamHandler):
                monkeypatch.setattr(handler, "stream", sys.stderr)
        monkeypatch.setattr(sys, "argv", ["isplab", "awb", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
