"""HTML report writer: files, escaping, tables, PNG round trips, curve plots."""

from __future__ import annotations

import csv
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from isplab import __version__
from isplab.engine.report import Link, Report, format_duration, plot_curves, save_png
from isplab.errors import IsplabError


class PageParser(HTMLParser):
    """Collects tags, image sources, links, table cells and visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "a":
            self.links.append(dict(attrs)["href"])
        if tag in ("td", "th"):
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_cell:
            self.cells.append(data)


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def gradient_image(h: int = 6, w: int = 10) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx / (w - 1), yy / (h - 1), np.full((h, w), 0.25)], axis=-1)


def test_report_page_is_self_contained_and_escaped(tmp_path):
    report = Report("Run <1> & co", tmp_path / "report")
    report.add_heading("Results <b>bold?</b>")
    report.add_text('A "quoted" <script>alert(1)</script>\nsecond line')
    report.add_image(gradient_image(), "Output <RGB>", name="out put/1")
    report.add_figure(Figure(), "Empty figure")
    page = report.write()

    assert page == tmp_path / "report/report.html"
    raw = page.read_text(encoding="utf-8")
    parsed = parse(page)
    assert "<script" not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "<title>Run &lt;1&gt; &amp; co</title>" in raw
    assert 'A "quoted" <script>alert(1)</script>\nsecond line' in parsed.text
    assert "Results <b>bold?</b>" in parsed.text and "b" not in parsed.tags
    # No external assets: inline CSS only, every image a relative file next to the page.
    assert "link" not in parsed.tags and "script" not in parsed.tags and "http" not in raw
    assert parsed.images == ["out_put_1.png", "figure_000.png"]
    for src in parsed.images:
        with Image.open(page.parent / src) as image:
            assert image.format == "PNG"
    with Image.open(page.parent / "out_put_1.png") as image:
        assert image.size == (10, 6)


def test_tables_and_metrics(tmp_path):
    report = Report("Tables", tmp_path)
    report.add_table(
        [{"image": "a<b>.dng", "psnr": 31.23456, "ssim": np.float32(0.9)}, {"image": "c.dng", "n": 3}],
        caption="Per-image <scores>",
    )
    report.add_table([[1, 2.5, None], ["x", torch.tensor(0.125), True]], columns=["a", "b", "c"],
                     float_format="{:.1f}")
    report.add_metrics({"PSNR (dB)": 38.0, "images": 12})
    parsed = parse(report.write("tables.html"))
    assert parsed.tags.count("table") == 3
    assert parsed.cells == [
        "image", "psnr", "ssim", "n",
        "a<b>.dng", "31.235", "0.900",
        "c.dng", "3",
        "a", "b", "c",
        "1", "2.5",
        "x", "0.1", "True",
        "metric", "value",
        "PSNR (dB)", "38.0000",
        "images", "12",
    ]
    assert "Per-image <scores>" in parsed.text


def test_table_errors(tmp_path):
    report = Report("Bad tables", tmp_path)
    with pytest.raises(IsplabError, match="table row 1 has 1 cells but there are 2 columns"):
        report.add_table([[1, 2], [3]], columns=["a", "b"])
    with pytest.raises(IsplabError, match="all dicts or all sequences"):
        report.add_table([{"a": 1}, [2]])


def test_save_png_float_uint8_and_channel_order(tmp_path):
    image = gradient_image()
    image[0, 0] = [1.5, -0.2, 0.5]  # out of range: clipped
    with Image.open(save_png(tmp_path / "f.png", image)) as png:
        assert png.mode == "RGB"
        read = np.asarray(png)
    assert np.array_equal(read, np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    assert tuple(read[0, 0]) == (255, 0, 128)  # red stays in the first channel

    rgb8 = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    with Image.open(save_png(tmp_path / "u8.png", rgb8)) as png:
        assert np.array_equal(np.asarray(png), rgb8)
    gray = rgb8[..., 0]
    for name, array in (("g2.png", gray), ("g3.png", gray[..., None])):
        with Image.open(save_png(tmp_path / name, array)) as png:
            assert png.mode == "L" and np.array_equal(np.asarray(png), gray)


def test_save_png_uint16_keeps_16_bits(tmp_path):
    rgb16 = np.random.default_rng(0).integers(0, 65536, size=(4, 5, 3), dtype=np.uint16)
    path = save_png(tmp_path / "u16.png", rgb16)
    read = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # OpenCV returns BGR
    assert read.dtype == np.uint16 and np.array_equal(read[..., ::-1], rgb16)


def test_save_png_accepts_torch_chw(tmp_path):
    image = gradient_image()
    save_png(tmp_path / "numpy.png", image)
    save_png(tmp_path / "torch.png", torch.from_numpy(image).permute(2, 0, 1).float())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "numpy.png")),
                          np.asarray(Image.open(tmp_path / "torch.png")))


def test_save_png_errors(tmp_path):
    with pytest.raises(IsplabError, match=r"shape \(4, 4, 4\): expected \(H, W\) or \(H, W, C\) with C 1 or 3"):
        save_png(tmp_path / "a.png", np.zeros((4, 4, 4)))
    with pytest.raises(IsplabError, match=r"shape \(1, 3, 4, 4\): expected \(H, W\) or \(C, H, W\)"):
        save_png(tmp_path / "a.png", torch.zeros(1, 3, 4, 4))
    with pytest.raises(IsplabError, match="NaN or infinite"):
        save_png(tmp_path / "a.png", np.full((4, 4), np.nan))
    with pytest.raises(IsplabError, match="dtype int32: expected float, uint8 or uint16"):
        save_png(tmp_path / "a.png", np.zeros((4, 4), np.int32))
    with pytest.raises(IsplabError, match="writes PNG files, got the file name 'a.jpg'"):
        save_png(tmp_path / "a.jpg", np.zeros((4, 4)))


def test_add_image_from_file(tmp_path):
    outside = save_png(tmp_path / "elsewhere/photo.png", gradient_image())
    report = Report("Files", tmp_path / "report")
    copied = report.add_image(outside, "Copied")
    inside = save_png(tmp_path / "report/sub/inside.png", gradient_image())
    linked = report.add_image(inside, "Linked in place")
    assert copied == tmp_path / "report/photo.png" and copied.read_bytes() == outside.read_bytes()
    assert linked == inside
    assert parse(report.write()).images == ["photo.png", "sub/inside.png"]
    with pytest.raises(IsplabError, match=r"report file name 'photo.png' is already used"):
        report.add_image(gradient_image(), "Same name", name="photo")
    with pytest.raises(IsplabError, match="missing.png does not exist"):
        report.add_image(tmp_path / "missing.png", "Missing")


def write_lightning_csv(path: Path, rows: list[dict]) -> Path:
    """A metrics.csv laid out as Lightning's CSVLogger writes it: sparse rows, sorted columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = sorted({key for row in rows for key in row})
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_plot_curves(tmp_path):
    first = write_lightning_csv(tmp_path / "logs/csv/version_0/metrics.csv", [
        {"epoch": 0, "step": 1, "train_loss_step": 0.9},
        {"epoch": 0, "step": 3, "val_loss": 0.8},
        {"epoch": 0, "step": 3, "train_loss_epoch": 0.85},
        {"epoch": 1, "step": 7, "val_loss": 0.5},
    ])
    write_lightning_csv(tmp_path / "logs/csv/version_1/metrics.csv", [
        {"epoch": 2, "step": 11, "val_loss": 0.4, "lr-Adam": 0.001},
    ])
    figure = plot_curves(first, ["val_loss", "train_loss_epoch"], logy=True, title="Losses")
    ax = figure.axes[0]
    assert [line.get_label() for line in ax.lines] == ["val_loss", "train_loss_epoch"]
    assert ax.lines[0].get_xydata().tolist() == [[3, 0.8], [7, 0.5]]
    assert ax.get_yscale() == "log" and ax.get_title() == "Losses" and ax.get_xlabel() == "step"

    # A run directory reads every version in order.
    ax = plot_curves(tmp_path, ["val_loss"], x="epoch").axes[0]
    assert ax.lines[0].get_xydata().tolist() == [[0, 0.8], [1, 0.5], [2, 0.4]]

    # ...and so does a logger's version directory.
    assert len(plot_curves(first.parent, ["val_loss"]).axes[0].lines[0].get_xdata()) == 2

    with pytest.raises(IsplabError, match="train_loss not logged; available: epoch, step, train_loss_epoch, "
                                          "train_loss_step, val_loss$"):
        plot_curves(first, ["train_loss"])
    with pytest.raises(IsplabError, match="no metrics.csv under"):
        plot_curves(tmp_path / "logs", ["val_loss"])
    with pytest.raises(IsplabError, match="nope.csv does not exist"):
        plot_curves([tmp_path / "nope.csv"], ["val_loss"])


def test_links_are_relative_hyperlinks_to_existing_files(tmp_path):
    sub = tmp_path / "demo/awb/cv/report.html"
    sub.parent.mkdir(parents=True)
    sub.write_text("<html></html>")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/errors #1.csv").write_text("a,b\n")
    report = Report("Links", tmp_path / "demo")
    report.add_link(sub, "cross-validation report", before="Full results: ", after=".")
    cell = report.link(tmp_path / "elsewhere/errors #1.csv")
    report.add_table([{"what": "errors", "file": cell}])
    report.add_link("https://example.org/x?a=1&b=2", "upstream")
    page = report.write()
    parsed = parse(page)
    assert parsed.links == ["awb/cv/report.html", "../elsewhere/errors%20%231.csv", "https://example.org/x?a=1&b=2"]
    for href in parsed.links[:2]:  # each relative link resolves to the file, from the page's folder
        assert (page.parent / Path(href.replace("%20", " ").replace("%23", "#"))).is_file()
    assert "Full results: cross-validation report." in "".join(parsed.text)
    assert cell == Link("../elsewhere/errors%20%231.csv", "errors #1.csv") and "errors #1.csv" in parsed.cells
    with pytest.raises(IsplabError, match=r"cannot link to .*missing.html from the report: it does not exist"):
        report.link(tmp_path / "missing.html")


def test_run_info_records_version_device_and_stage_times(tmp_path):
    (tmp_path / "awb/cv").mkdir(parents=True)
    (tmp_path / "awb/cv/report.html").write_text("")
    report = Report("Demo", tmp_path)
    start = report.position
    report.add_heading("Later section")
    with report.insert_at(start):  # known only at the end, shown at the top
        report.add_run_info(
            device="cpu",
            durations={"data": 12.25, "awb": 125.0, "isp": 3725.0},
            links={"awb": [report.link(tmp_path / "awb/cv/report.html", "cross-validation")]},
            extra={"seed": 3},
        )
    page = report.write()
    parsed = parse(page)
    cells = parsed.cells
    assert cells[cells.index("isplab") + 1] == __version__
    assert cells[cells.index("device") + 1] == "cpu"
    assert cells[cells.index("seed") + 1] == "3"
    assert cells[cells.index("data") + 1] == "12.2 s"
    assert cells[cells.index("awb") + 1: cells.index("awb") + 3] == ["2 min 05 s", "cross-validation"]
    assert cells[cells.index("isp") + 1] == "1 h 02 min"
    assert cells[cells.index("total") + 1] == "1 h 04 min"
    assert parsed.links == ["awb/cv/report.html"]
    raw = page.read_text()
    assert raw.index("Time per stage") < raw.index("Later section")
    with pytest.raises(IsplabError, match="report position 9 is outside 0..3"):
        with report.insert_at(9):
            pass


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0 s"), (59.94, "59.9 s"), (60.2, "1 min 00 s"),
                                           (3599.4, "59 min 59 s"), (7322, "2 h 02 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
