"""A small HTML report writer for workflow results: headings, text, tables, images, plots.

A :class:`Report` writes images as PNG files into its ``out_dir`` as they are added and
:meth:`Report.write` puts one self-contained HTML page next to them (inline CSS, relative
image links, no scripts or external assets), so the directory can be zipped or served as is.
All text is HTML-escaped. Typical use::

    report = Report("Denoiser, run 3", "runs/3/report")
    report.add_metrics({"PSNR (dB)": 38.21, "SSIM": 0.962})
    report.add_figure(plot_curves("runs/3", ["train_loss_epoch", "val_loss"]), "Loss curves")
    report.add_image(output_rgb, "Network output", name="output")
    report.add_link("runs/3/test/report.html", "Per-image test report")
    report.add_run_info(device="cuda", durations={"train": 812.4, "test": 31.0})
    report.write()  # runs/3/report/report.html

Links to other pages or files next to the report (sub-reports, CSVs) are relative, so the folder
can be moved as a whole; they can also be table cells (:meth:`Report.link`).
"""

from __future__ import annotations

import csv
import html
import numbers
import os
import platform
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure

from isplab import __version__
from isplab.engine.trainer import metrics_csv_files
from isplab.errors import IsplabError

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 70rem;
       margin: 2rem auto; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .3rem; }
p { white-space: pre-wrap; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .95rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: .5rem 1rem 1rem 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9rem; color: #555; }
"""


@dataclass(frozen=True)
class Link:
    """A hyperlink: ``href`` (relative to the report page, or a URL) and its text.

    Make one with :meth:`Report.link`; it can be a table cell or go through :meth:`Report.add_link`.
    """

    href: str
    text: str

    def html(self) -> str:
        return f'<a href="{_esc(self.href)}">{_esc(self.text)}</a>'


class Report:
    """Collects report blocks in order and writes them as ``out_dir/report.html``.

    Args:
        title: page title and top heading.
        out_dir: directory for the HTML file and its PNG images (created).
    """

    def __init__(self, title: str, out_dir: str | Path) -> None:
        self.title = title
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._blocks: list[str] = []
        self._files: set[str] = set()

    def add_heading(self, text: str, level: int = 2) -> None:
        """A section heading; ``level`` 2-6 (the title is the only level 1)."""
        if level not in range(2, 7):
            raise IsplabError(f"heading level must be 2..6, got {level!r}")
        self._blocks.append(f"<h{level}>{_esc(text)}</h{level}>")

    def add_text(self, text: str) -> None:
        """A paragraph; line breaks are kept."""
        self._blocks.append(f"<p>{_esc(text)}</p>")

    def add_table(
        self,
        rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
        columns: Sequence[str] | None = None,
        caption: str | None = None,
        float_format: str = "{:.3f}",
    ) -> None:
        """A table from dict rows (columns: ``columns`` or the keys in first-seen order; missing
        cells are blank) or from list rows (``columns`` is the optional header).

        Floats (Python, numpy or 0-d torch) use ``float_format``; ``None`` is blank.
        """
        rows = list(rows)
        if rows and all(isinstance(row, Mapping) for row in rows):
            if columns is None:
                columns = list(dict.fromkeys(key for row in rows for key in row))
            cells = [[row.get(column) for column in columns] for row in rows]
        elif any(isinstance(row, Mapping) for row in rows):
            raise IsplabError("table rows must be all dicts or all sequences, not a mix")
        else:
            cells = [list(row) for row in rows]
            for i, row in enumerate(cells):
                if columns is not None and len(row) != len(columns):
                    raise IsplabError(f"table row {i} has {len(row)} cells but there are {len(columns)} columns")
        parts = ["<table>"]
        if caption:
            parts.append(f"<caption>{_esc(caption)}</caption>")
        if columns:
            parts.append("<tr>" + "".join(f"<th>{_esc(str(c))}</th>" for c in columns) + "</tr>")
        for row in cells:
            parts.append("<tr>" + "".join(_cell(value, float_format) for value in row) + "</tr>")
        parts.append("</table>")
        self._blocks.append("".join(parts))

    def add_metrics(
        self, metrics: Mapping[str, Any], caption: str | None = "Metrics", float_format: str = "{:.4f}"
    ) -> None:
        """A two-column metric/value table."""
        self.add_table(list(metrics.items()), ["metric", "value"], caption, float_format)

    def link(self, target: str | Path, text: str | None = None) -> Link:
        """A :class:`Link` to a file (``target`` a path, relative to the current directory like
        every path, made relative to the page) or to a URL (``http(s)://...``) or anchor (``#...``).

        Raises:
            IsplabError: the file does not exist (a report never links to nothing).
        """
        if isinstance(target, str) and target.startswith(("http://", "https://", "#")):
            return Link(target, text or target)
        path = Path(target)
        if not path.exists():
            raise IsplabError(f"cannot link to {path} from the report: it does not exist")
        href = Path(os.path.relpath(path.resolve(), self.out_dir.resolve())).as_posix()
        return Link(quote(href), text or path.name)

    def add_link(self, target: str | Path | Link, text: str | None = None, *, before: str = "", after: str = "") -> Link:
        """A paragraph holding a hyperlink (see :meth:`link`), with optional text around it."""
        link = target if isinstance(target, Link) else self.link(target, text)
        self._blocks.append(f"<p>{_esc(before)}{link.html()}{_esc(after)}</p>")
        return link

    def add_run_info(
        self,
        *,
        device: str,
        durations: Mapping[str, float] | None = None,
        links: Mapping[str, Sequence[Link]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Record how the results were made: isplab's version, Python, torch, the device, and
        each stage's wall time (``durations``: name -> seconds, in order) with links to its own
        reports (``links``: name -> links)."""
        info: dict[str, Any] = {
            "isplab": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": device,
        }
        info.update(extra or {})
        self.add_table(list(info.items()), ["run", "value"], caption="Run")
        if durations:
            links = links or {}
            parts = ["<table><caption>Time per stage</caption><tr><th>stage</th><th>wall time</th><th>reports</th></tr>"]
            for name, seconds in durations.items():
                cells = ", ".join(link.html() for link in links.get(name, ()))
                parts.append(
                    f'<tr><td>{_esc(name)}</td><td class="num">{_esc(format_duration(seconds))}</td><td>{cells}</td></tr>'
                )
            total = sum(durations.values())
            parts.append(f'<tr><th>total</th><th class="num">{_esc(format_duration(total))}</th><th></th></tr></table>')
            self._blocks.append("".join(parts))

    @property
    def position(self) -> int:
        """The number of blocks so far: where :meth:`insert_at` puts later blocks."""
        return len(self._blocks)

    @contextmanager
    def insert_at(self, position: int) -> Iterator[None]:
        """Blocks added inside the ``with`` go at ``position`` (from :attr:`position`) instead of
        the end: e.g. a summary at the top that is only known once everything has run."""
        if not 0 <= position <= len(self._blocks):
            raise IsplabError(f"report position {position} is outside 0..{len(self._blocks)}")
        blocks, self._blocks = self._blocks, []
        try:
            yield
        finally:
            blocks[position:position] = self._blocks
            self._blocks = blocks

    def add_image(
        self, image: np.ndarray | torch.Tensor | str | Path, caption: str, name: str | None = None
    ) -> Path:
        """An image with a caption; returns the file the page links to.

        ``image`` is a numpy ``(H, W)``/``(H, W, C)`` or torch ``(C, H, W)`` array with ``C`` 1 or
        3 (see :func:`save_png`), written as ``out_dir/<name>.png``; or an existing image file,
        copied into ``out_dir`` unless it already is inside it.
        """
        if isinstance(image, (str, Path)):
            source = Path(image)
            if not source.is_file():
                raise IsplabError(f"image file {source} does not exist")
            if _is_inside(source, self.out_dir):
                path = source
            else:
                path = self._claim(name or source.stem, source.suffix.lower())
                shutil.copyfile(source, path)
        else:
            path = save_png(self._claim(name or self._free_name("image"), ".png"), image)
        self._add_figure_block(path, caption)
        return path

    def add_figure(self, figure: Figure, caption: str, name: str | None = None, dpi: int = 120) -> Path:
        """A matplotlib figure saved as PNG (rendered with Agg); returns the PNG's path."""
        path = self._claim(name or self._free_name("figure"), ".png")
        figure.savefig(path, format="png", dpi=dpi)
        self._add_figure_block(path, caption)
        return path

    def write(self, filename: str = "report.html") -> Path:
        """Write the page to ``out_dir/filename`` and return its path."""
        path = self.out_dir / filename
        title = _esc(self.title)
        body = "\n".join(self._blocks)
        path.write_text(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{title}</h1>\n{body}\n</body>\n</html>\n",
            encoding="utf-8",
        )
        return path

    def _free_name(self, prefix: str) -> str:
        n = 0
        while f"{prefix}_{n:03d}.png" in self._files:
            n += 1
        return f"{prefix}_{n:03d}"

    def _claim(self, name: str, suffix: str) -> Path:
        # Names become file names next to the page: keep them portable and unique.
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.removesuffix(suffix)).strip("._") or "image"
        filename = stem + suffix
        if filename in self._files:
            raise IsplabError(f"report file name {filename!r} is already used in {self.out_dir}")
        self._files.add(filename)
        return self.out_dir / filename

    def _add_figure_block(self, path: Path, caption: str) -> None:
        src = quote(Path(os.path.relpath(path, self.out_dir)).as_posix())
        self._blocks.append(
            f'<figure><img src="{_esc(src)}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )


def format_duration(seconds: float) -> str:
    """``42.3 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def save_png(path: str | Path, image: np.ndarray | torch.Tensor) -> Path:
    """Write an image as PNG and return ``path``.

    ``image``: numpy ``(H, W)`` or ``(H, W, C)``, or torch ``(C, H, W)``/``(H, W)``, with ``C`` 1
    or 3 (RGB). Floats are taken as [0, 1], clipped and written as 8-bit; ``uint8`` and
    ``uint16`` are written at their own bit depth.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise IsplabError(f"save_png writes PNG files, got the file name {path.name!r}")
    array = _to_hwc(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise IsplabError(f"image for {path.name} contains NaN or infinite values")
        array = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif array.dtype not in (np.uint8, np.uint16):
        raise IsplabError(f"image for {path.name} has dtype {array.dtype}: expected float, uint8 or uint16")
    if array.ndim == 3:
        array = array[..., 0] if array.shape[2] == 1 else array[..., ::-1]  # OpenCV writes BGR
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(array)):
        raise IsplabError(f"could not write PNG {path}")
    return path


def plot_curves(
    csv_log: str | Path | Sequence[str | Path],
    keys: Iterable[str],
    *,
    x: str = "step",
    logy: bool = False,
    title: str | None = None,
) -> Figure:
    """Plot logged metrics from Lightning ``metrics.csv`` files against ``x`` (``step``/``epoch``).

    ``csv_log`` is a ``metrics.csv``, a list of them (concatenated in order), a directory holding
    one, or a run directory of :func:`isplab.engine.trainer.build_trainer`, whose fits (the first
    and every resume) are all read. ``keys`` are column names such as ``train_loss_epoch`` or ``val_loss``.

    Raises:
        IsplabError: no CSV file found, or a key that no file contains (the message lists the
            available columns).
    """
    rows = _read_csv_rows(_csv_paths(csv_log))
    columns = sorted({column for row in rows for column in row if row[column] not in ("", None)})
    keys = list(keys)
    missing = [key for key in [*keys, x] if key not in columns]
    if missing:
        raise IsplabError(f"metric(s) {', '.join(missing)} not logged; available: {', '.join(columns)}")

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = figure.add_subplot()
    for key in keys:
        points = [(float(row[x]), float(row[key])) for row in rows if row.get(key) not in ("", None)]
        ax.plot(*zip(*points), marker=".", label=key)
    ax.set_xlabel(x)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def _csv_paths(csv_log: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(csv_log, (str, Path)):
        path = Path(csv_log)
        if not path.is_dir():
            paths = [path]
        elif (path / "metrics.csv").is_file():  # one logger version directory
            paths = [path / "metrics.csv"]
        else:
            paths = metrics_csv_files(path)
    else:
        paths = [Path(p) for p in csv_log]
    if not paths:
        raise IsplabError(f"no metrics.csv under {csv_log} (expected logs/csv/version_*/metrics.csv)")
    for path in paths:
        if not path.is_file():
            raise IsplabError(f"metrics file {path} does not exist")
    return paths


def _read_csv_rows(paths: list[Path]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in paths:
        with path.open(newline="") as file:
            rows.extend(csv.DictReader(file))
    return rows


def _to_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        array = (tensor.permute(1, 2, 0) if tensor.ndim == 3 else tensor).numpy()
    else:
        array = np.asarray(image)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        layout = "(C, H, W)" if isinstance(image, torch.Tensor) else "(H, W, C)"
        raise IsplabError(
            f"cannot show an image of shape {tuple(image.shape)}: expected (H, W) or {layout} with C 1 or 3"
        )
    return array


def _is_inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _cell(value: Any, float_format: str) -> str:
    if getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        value = value.item()
    if value is None:
        return "<td></td>"
    if isinstance(value, Link):
        return f"<td>{value.html()}</td>"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        text = str(value) if isinstance(value, numbers.Integral) else float_format.format(value)
        return f'<td class="num">{_esc(text)}</td>'
    return f"<td>{_esc(str(value))}</td>"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
