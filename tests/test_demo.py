"""`isplab demo`: sections composed, timed and reported; the terminal shows stage lines only."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from isplab import __version__
from isplab.demo import SECTIONS, run_demo
from isplab.errors import IsplabError

STAGE_LINE = re.compile(r"^\[ ?\d+:\d\d\] ")
# What third-party code prints during the sections; none of it may reach the terminal.
NOISE = ("GPU available", "TPU available", "Total FLOPs", "LiteRT", "absl::InitializeLog", "Trainer.fit")


class Page(HTMLParser):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.cells: list[str] = []
        self._cell = False
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.append(dict(attrs)["href"])
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._cell = self._cell or tag in ("td", "th")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data):
        if self._cell and data.strip():
            self.cells.append(data.strip())

    def after(self, label: str) -> str:
        return self.cells[self.cells.index(label) + 1]


@pytest.mark.slow
def test_data_section_through_the_cli(tmp_path, isplab_cli):
    out = tmp_path / "demo"
    args = ("demo", "-o", str(out), "--section", "data", "-n", "2", "--size", "64x48", "--device", "cpu")
    result = isplab_cli(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == f"report: {out / 'report.html'}"
    assert all(STAGE_LINE.match(line) for line in lines[:-1]), lines
    assert [line.split("] ", 1)[1].split(":")[0] for line in lines[1:-2]] == ["data"] * 3
    assert lines[-3].split("] ")[1].startswith("data: done in ")
    page = Page(out / "report.html")
    assert page.after("isplab") == __version__ and page.after("device") == "cpu"
    assert re.fullmatch(r"\d+\.\d s", page.after("data"))
    assert page.images[0] == "data/psnr.png" and all((out / src).is_file() for src in page.images)
    assert (out / "data/console.log").is_file() and (out / "data/synth/synth_00001.dng").is_file()

    # A second run refuses to replace the first without --overwrite, and touches nothing.
    before = (out / "report.html").read_bytes()
    result = isplab_cli(*args)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: demo folder {out} already holds report.html, data: pass --overwrite to replace them, "
        "or choose another folder\n"
    )
    assert (out / "report.html").read_bytes() == before
    (out / "data/stale.txt").write_text("from an older run")
    assert isplab_cli(*args, "--overwrite").returncode == 0
    assert not (out / "data/stale.txt").exists()


def test_bad_arguments_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(IsplabError, match=r"unknown demo section 'hdrplus': expected one of data, awb, isp, proxy, sky, genisp"):
        run_demo(tmp_path / "a", sections=["data", "hdrplus"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(IsplabError, match="demo folder .*file is a file: expected a folder"):
        run_demo(blocker)
    assert not (tmp_path / "a").exists()


def test_a_failing_section_names_its_log_and_the_cli_prints_one_line(tmp_path, capfd):
    with pytest.raises(IsplabError, match="bad size|at least"):
        run_demo(tmp_path / "demo", sections=["data"], device="cpu", options={"data": {"count": 0}})
    err = capfd.readouterr().err.splitlines()
    assert re.fullmatch(rf"\[ ?\d+:\d\d\] data: failed after \d+\.\d s; its console output is in "
                        rf"{re.escape(str(tmp_path / 'demo/data/console.log'))}", err[-1]), err


@pytest.mark.slow
def test_every_section_small_quiet_timed_and_linked(tmp_path, capfd):
    """All sections at toy sizes: the terminal gets stage lines only, the report links sub-reports,
    shows the training curves from the runs' metrics.csv and each section's time."""
    out = tmp_path / "demo"
    options = {
        "data": {"count": 1, "size": (64, 48)},
        "awb": {"captures": 24, "epochs": 2, "folds": 2},
        "isp": {"iters": 6, "train_pairs": 2, "val_pairs": 1},
        "proxy": {"iters": 10, "count": 4, "images": 2, "size": (64, 48), "steps": 2, "search_renders": 2},
        "sky": {"images": 4, "size": (128, 64), "epochs": 1},
        "genisp": {"images": 8, "size": (96, 64), "detector_epochs": 1, "genisp_epochs": 1, "batch_size": 4},
    }
    report = run_demo(out, device="cpu", options=options)
    terminal = capfd.readouterr()
    lines = terminal.err.splitlines()
    assert lines and [line for line in lines if not STAGE_LINE.match(line)] == []
    assert terminal.out == ""
    sections = list(SECTIONS)
    assert [line.split("] ", 1)[1].split(":")[0] for line in lines if ": done in " in line] == sections
    for word in NOISE:
        assert word not in terminal.err
    logs = "".join((out / name / "console.log").read_text(errors="replace") for name in sections)
    assert "GPU available" in logs and "LiteRT" in logs  # kept, not lost

    page = Page(report)
    assert page.after("isplab") == __version__
    for name in sections:
        assert re.fullmatch(r"\d+\.\d s|\d+ min \d\d s", page.after(name)), name
    assert {"awb/cv/report.html", "isp/test_0/report.html", "isp/test_1/report.html"} <= set(page.links)
    for href in page.links:
        assert (out / href).is_file(), href
    assert {"awb/train_curve.png", "isp/curve_loss.png", "isp/curve_psnr.png"} <= set(page.images)
    assert (out / "awb/train/logs/csv/version_0/metrics.csv").is_file()
