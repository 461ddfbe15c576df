"""Annotated DNGs -> AWB statistics PNGs, the dataset Raspberry Pi's reference ``converter.py`` makes.

Input names: ``<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng`` (the white-balance gains that make
the scene's grey neutral) or ``<user>,<sensor>,<id>,<x1>,<y1>,<x2>,<y2>.dng`` (a grey rectangle in
raw pixel coordinates, rounded down to even).

Per image (``tuning`` is the sensor's libcamera tuning for the target):

1. label gains: from the name, or G/R and G/B of the grey rectangle (:func:`label_gains`: per-plane
   medians after black level and lens-shading correction). True temperature: the CT curve inverted
   at ``1 / gains``; camera temperature: the curve inverted at the as-shot neutral.
2. half-resolution RGB: Bayer planes, greens averaged, minus black level, / white level, clipped to
   0..1, x65535, truncated to uint16.
3. lux from that image's mean luma ``0.299 R g_r + 0.587 G + 0.114 B g_b`` (white-balanced by the
   label gains ``g``) and the exposure (:meth:`Tuning.lux`), x1.05 (the reference's correction: its
   estimate ran 5-10% below the hardware's). On VC4, as in the reference, the lens-shading correction
   at the true temperature is applied to the mosaic first (black level removed, clipped to the white
   level); the statistics themselves are made from the uncorrected image.
4. INTER_AREA resize to the zone grid (PiSP 32x32, VC4 16 wide x 12 high) on uint16.
5. rendering at 5000 K: ALSC gains at 5000 K, clip to 0..65535, the CT curve's 5000 K gains
   ``(1/r, 1, 1/b)``, clip, the CCM interpolated at 5000 K, / 65535, clip to 0..1, x65535, uint16.

Output: ``<user>,<sensor>,<id>,<true_temp>,<lux>,<camera_temp>.png`` (each rounded to an integer)
in ``OUTPUT/train`` or, for a random ``split`` proportion, ``OUTPUT/test``.

**Agreement with the reference** (``raspberrypi/awb_nn`` ``converter.py``, run on isplab's synthetic
captures of a lens that shades, in ``tests/workflows/awb/test_convert.py``): for files named by their
gains the names agree to the kelvin and lux and the statistics to one 16-bit step, on both targets.
Files named by a grey rectangle differ in two places, on purpose:

* *The rectangle's gains are measured after lens-shading correction.* The reference takes them from
  the raw mosaic, so the lens's colour shading at the rectangle (red and blue fall off differently
  towards the corners) enters the label, which then depends on where the annotator drew the box (up
  to 2 mireds on the tests' synthetic grey cards).
  The CT curve describes grey *after* lens-shading correction (libcamera's AWB statistics and the
  network's 5000 K input both come after it), and the colour-test rendering applies lens shading before
  the label gains, so a grey card only renders grey with gains measured on the corrected image. The
  correction needs the temperature that the gains give, so the two are iterated to agreement (1 K).
  With flat (or absent) ``rpi.alsc`` tables both ways give the same gains.
* *VC4 lux uses the label gains.* The reference recomputes the rectangle's gains for the lux after
  its lens-shading step, which has already removed the black level, so black is subtracted twice:
  its VC4 lux for a rectangle-named file is not the lux of the same file named by those gains (5-40%
  high on the tests' grey cards).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from isplab.errors import IsplabError
from isplab.io import RawImage, read_raw, write_image
from isplab.io.paths import check_writable_dir, prepare_output_dir
from isplab.isp.bayer import pack, to_half_rgb, unpack
from isplab.workflows.awb.dataset import TARGET_SIZES, parse_stats_name
from isplab.workflows.awb.tuning import CANONICAL_CT, TARGETS, Tuning, find_tuning, load_tuning

__all__ = [
    "LUX_CORRECTION",
    "NAME_PATTERNS",
    "AnnotatedName",
    "ConvertSummary",
    "camera_rgb",
    "convert_dng",
    "convert_folder",
    "label_gains",
    "parse_annotated_name",
    "render_label",
    "stats_name",
]

NAME_PATTERNS = (
    "<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng",
    "<user>,<sensor>,<id>,<x1>,<y1>,<x2>,<y2>.dng",
)
#: The reference converter's lux estimate ran 5-10% below what the hardware measures.
LUX_CORRECTION = 1.05
# Rec. 601 luma weights, as libcamera's statistics and the reference's lux estimate use.
_LUMA = np.array([0.299, 0.587, 0.114])
_UINT16_MAX = 65535.0
# Lens shading depends on the temperature the rectangle's gains give: rounds of correcting and
# re-measuring (each moves the temperature far less than the last; 1 K agreement ends it).
_LABEL_ITERATIONS = 8


@dataclass(frozen=True)
class AnnotatedName:
    """The parts of an annotated DNG's file name.

    Attributes:
        gains: ``(red_gain, blue_gain)`` when the name gives them, else ``None``.
        grey_box: ``(x1, y1, x2, y2)`` raw-pixel rectangle rounded down to even coordinates (so it
            starts on a Bayer tile) when the name gives one, else ``None``.
    """

    path: Path
    user: str
    sensor: str
    id: str
    gains: tuple[float, float] | None = None
    grey_box: tuple[int, int, int, int] | None = None

    @property
    def prefix(self) -> str:
        """``<user>,<sensor>,<id>``."""
        return f"{self.user},{self.sensor},{self.id}"


def parse_annotated_name(path: str | Path) -> AnnotatedName:
    """Parse ``<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng`` or ``<user>,<sensor>,<id>,<x1>,<y1>,<x2>,<y2>.dng``.

    Raises:
        IsplabError: the name matches neither pattern (the message names the file and both patterns).
    """
    path = Path(path)
    parts = path.stem.split(",")
    expected = f"expected {NAME_PATTERNS[0]} or {NAME_PATTERNS[1]}"
    if path.suffix.lower() != ".dng" or len(parts) not in (5, 7) or not all(parts[:3]):
        raise IsplabError(f"cannot parse annotated DNG name {path.name!r}: {expected}")
    user, sensor, id_ = parts[:3]
    try:
        if len(parts) == 5:
            gains = (float(parts[3]), float(parts[4]))
            if not all(np.isfinite(g) and g > 0 for g in gains):
                raise ValueError
            return AnnotatedName(path, user, sensor, id_, gains=gains)
        x1, y1, x2, y2 = (int(v) // 2 * 2 for v in parts[3:])
    except ValueError as e:
        raise IsplabError(f"cannot parse annotated DNG name {path.name!r}: {expected} (positive numbers)") from e
    if not (0 <= x1 < x2 and 0 <= y1 < y2):
        raise IsplabError(
            f"grey rectangle in {path.name!r} is empty or negative: ({x1},{y1})-({x2},{y2}) after rounding to even; "
            f"{expected} with x1 < x2 and y1 < y2"
        )
    return AnnotatedName(path, user, sensor, id_, grey_box=(x1, y1, x2, y2))


def label_gains(raw: RawImage, name: AnnotatedName, tuning: Tuning | None = None) -> tuple[float, float]:
    """``(red_gain, blue_gain)`` of the label: from the name, or G/R and G/B of the grey rectangle.

    The rectangle's value per Bayer plane is the median of the raw values inside it, minus black
    level (a median, as the reference, so specular or dark pixels in the patch do not bias it), after
    the lens-shading correction of ``tuning`` (``rpi.alsc``) at the temperature the gains give,
    iterated until that temperature moves by less than 1 K (see the module docstring for why).
    Without ``tuning`` the raw values are used as they are.

    Raises:
        IsplabError: the rectangle lies outside the image or its red or blue is not above black.
    """
    if name.gains is not None:
        return name.gains
    x1, y1, x2, y2 = name.grey_box
    planes = pack(raw.mosaic, raw.cfa_pattern)
    box = (slice(None), slice(y1 // 2, y2 // 2), slice(x1 // 2, x2 // 2))
    values = planes[box].astype(np.float64) - raw.black_level[:, None, None]
    if values[0].size == 0:
        h, w = raw.mosaic.shape
        raise IsplabError(f"grey rectangle ({x1},{y1})-({x2},{y2}) of {name.path} lies outside its {w}x{h} image")

    def gains(shading: np.ndarray | None) -> tuple[float, float]:
        patch = values if shading is None else values * shading[[0, 1, 1, 2]][box]  # both greens: G table
        r, gr, gb, b = (float(np.median(p)) for p in patch)
        if r <= 0 or b <= 0:
            raise IsplabError(f"grey rectangle of {name.path} has no signal above black level in red or blue")
        return (gr + gb) / 2 / r, (gr + gb) / 2 / b

    result = gains(None)
    if tuning is None:
        return result
    ct = tuning.ct_from_rb(1.0 / result[0], 1.0 / result[1])
    for _ in range(_LABEL_ITERATIONS):
        result = gains(tuning.alsc_at(ct, planes.shape[-2:]))
        previous, ct = ct, tuning.ct_from_rb(1.0 / result[0], 1.0 / result[1])
        if abs(ct - previous) < 1.0:
            break
    return result


@functools.lru_cache(maxsize=32)
def _tuning(sensor: str, target: str, tuning_dir: str | None) -> Tuning:
    # Cached: a folder holds many images of few sensors, and each worker process loads each once.
    return load_tuning(find_tuning(sensor, target, tuning_dir))


def _half_rgb(mosaic: np.ndarray, raw: RawImage, subtract_black: bool) -> np.ndarray:
    """``(h, w, 3)`` uint16: planes (greens averaged) [minus black] / white, clipped, x65535, truncated."""
    rgb = to_half_rgb(mosaic.astype(np.float64), raw.cfa_pattern).transpose(1, 2, 0)
    if subtract_black:
        black = raw.black_level
        rgb = rgb - np.array([black[0], (black[1] + black[2]) / 2, black[3]])
    return (np.clip(rgb / raw.white_level, 0.0, 1.0) * _UINT16_MAX).astype(np.uint16)


def _lens_shaded_mosaic(raw: RawImage, tuning: Tuning, ct: float) -> np.ndarray:
    """The mosaic minus black level, clipped to the white level, times the ALSC gains at ``ct``."""
    planes = pack(raw.mosaic.astype(np.float32), raw.cfa_pattern)
    planes -= raw.black_level.astype(np.float32)[:, None, None]
    planes = np.clip(planes, 0, raw.white_level)
    r, g, b = tuning.alsc_at(ct, planes.shape[-2:])
    planes *= np.stack([r, g, g, b])  # both greens take the green table
    return unpack(np.clip(planes, 0, raw.white_level).astype(np.uint16), raw.cfa_pattern)


def _estimate_lux(rgb: np.ndarray, gains: tuple[float, float], raw: RawImage, tuning: Tuning) -> float:
    y = float(np.mean(rgb @ (_LUMA * np.array([gains[0], 1.0, gains[1]]))))
    return tuning.lux(y, raw.exposure_time, raw.analogue_gain, raw.aperture) * LUX_CORRECTION


def _render(rgb: np.ndarray, tuning: Tuning, ct: float, gains: tuple[float, float] | None = None) -> np.ndarray:
    """``(H, W, 3)`` float64 in 0..1: lens shading, WB gains (the CT curve's at ``ct`` unless
    given) and the CCM at ``ct`` applied to 16-bit camera RGB, clipping to 16 bits in between."""
    x = np.clip(rgb.astype(np.float64) * tuning.alsc_at(ct, rgb.shape[:2]).transpose(1, 2, 0), 0, _UINT16_MAX)
    if gains is None:
        r, b = tuning.gains_at(ct)
        gains = (1.0 / r, 1.0 / b)
    x = np.clip(x * np.array([gains[0], 1.0, gains[1]]), 0, _UINT16_MAX)
    x = x @ tuning.ccm_at(ct).T
    return np.clip(x / _UINT16_MAX, 0.0, 1.0)


def _to_uint16(x: np.ndarray) -> np.ndarray:
    return (x * _UINT16_MAX).astype(np.uint16)  # truncation, as the reference


def camera_rgb(raw: RawImage) -> np.ndarray:
    """``(H/2, W/2, 3)`` uint16 camera RGB the statistics are made from: Bayer planes (greens
    averaged) minus black level, / white level, clipped to 0..1, x65535, truncated."""
    return _half_rgb(raw.mosaic, raw, subtract_black=True)


def render_label(rgb: np.ndarray, tuning: Tuning, gains: tuple[float, float]) -> np.ndarray:
    """``(H, W, 3)`` uint16: camera RGB (:func:`camera_rgb`) as the label ``gains`` render it, before
    gamma: lens shading, the gains and the CCM at the gains' temperature (what ``colour_test`` shows)."""
    ct = tuning.ct_from_rb(1.0 / gains[0], 1.0 / gains[1])
    return _to_uint16(_render(rgb, tuning, ct, gains))


def _grid_size(target: str, resize: tuple[int, int] | None) -> tuple[int, int]:
    if target not in TARGETS:
        raise IsplabError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    if resize is None:
        height, width = TARGET_SIZES[target]
        return width, height
    if len(resize) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in resize):
        raise IsplabError(f"resize must be a (width, height) pair of positive integers, got {resize!r}")
    return int(resize[0]), int(resize[1])


def convert_dng(
    path: str | Path,
    target: str,
    tuning_dir: str | Path | None = None,
    resize: tuple[int, int] | None = None,
    colour_test: bool = False,
) -> tuple[np.ndarray, float, float, float, str]:
    """Convert one annotated DNG to AWB statistics (see the module docstring for the steps).

    Args:
        path: a DNG named as :data:`NAME_PATTERNS`.
        target: ``"pisp"`` or ``"vc4"`` (selects the tuning file and the zone grid).
        tuning_dir: extra folder searched first for the sensor's tuning (:func:`find_tuning`).
        resize: output ``(width, height)``; default the target's zone grid.
        colour_test: instead of statistics, return the image rendered with the labelled gains,
            lens shading and CCM at the true temperature and the tuning's gamma curve: a visual check
            that the label is right (grey looks grey), as the reference's ``--colour-test``.

    Returns:
        ``(stats, true_temp, lux, camera_temp, sensor)``: stats ``(H, W, 3)`` uint16 RGB, temperatures
        in kelvin, lux, and the sensor named in the file name.

    Raises:
        IsplabError: misnamed or unreadable file, missing tuning file.
    """
    size = _grid_size(target, resize)
    name = parse_annotated_name(path)
    raw = read_raw(path)
    tuning = _tuning(name.sensor, target, None if tuning_dir is None else str(tuning_dir))
    gains = label_gains(raw, name, tuning)
    true_temp = tuning.ct_from_rb(1.0 / gains[0], 1.0 / gains[1])
    # The as-shot neutral is the camera's own R/G, B/G of grey.
    camera_temp = tuning.ct_from_rb(raw.as_shot_neutral[0], raw.as_shot_neutral[2])

    rgb = camera_rgb(raw)
    if target == "vc4":
        shaded = _half_rgb(_lens_shaded_mosaic(raw, tuning, true_temp), raw, subtract_black=False)
        lux = _estimate_lux(shaded, gains, raw, tuning)
    else:
        lux = _estimate_lux(rgb, gains, raw, tuning)
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)

    if colour_test:
        stats = tuning.gamma_lut()[render_label(rgb, tuning, gains)]
    else:
        stats = _to_uint16(_render(rgb, tuning, CANONICAL_CT))
    return stats, true_temp, lux, camera_temp, name.sensor


def stats_name(name: AnnotatedName, true_temp: float, lux: float, camera_temp: float) -> str:
    """``<user>,<sensor>,<id>,<true_temp>,<lux>,<camera_temp>.png``, numbers rounded as the reference."""
    return f"{name.prefix},{round(true_temp)},{round(lux)},{round(camera_temp)}.png"


@dataclass
class ConvertSummary:
    """What :func:`convert_folder` did.

    Attributes:
        written: output PNGs, in input order.
        failed: ``(input DNG, error message)`` for each file skipped.
        train: images written to ``train/``.
        test: images written to ``test/``.
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    train: int = 0
    test: int = 0

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    def __str__(self) -> str:
        text = f"converted {len(self.written)} of {len(self.written) + len(self.failed)} DNGs"
        text += f" ({self.train} train, {self.test} test)"
        return text + (f"; {len(self.failed)} failed" if self.failed else "")


def _convert_to_file(
    path: Path, folder: Path, target: str, tuning_dir: str | None, resize: tuple[int, int] | None, colour_test: bool
) -> Path:
    """Convert ``path`` and write its PNG into ``folder`` (a temporary name renamed into place)."""
    stats, true_temp, lux, camera_temp, _ = convert_dng(path, target, tuning_dir, resize, colour_test)
    out = folder / stats_name(parse_annotated_name(path), true_temp, lux, camera_temp)
    partial = folder / f".{out.stem}.partial{os.getpid()}.png"
    try:
        write_image(partial, stats, overwrite=True)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def convert_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    target: str,
    *,
    split: float = 0.0,
    resize: tuple[int, int] | None = None,
    tuning_dir: str | Path | None = None,
    colour_test: bool = False,
    workers: int | None = None,
    progress: bool = True,
    seed: int = 0,
    overwrite: bool = False,
) -> ConvertSummary:
    """Convert every ``*.dng`` under ``input_dir`` (recursively) into ``output_dir/train`` and ``output_dir/test``.

    Each file goes to ``test/`` with probability ``split`` (decided from ``seed`` and the sorted file
    list, so a run is reproducible whatever the completion order). Files are converted in parallel;
    a file that fails (misnamed, corrupt, no tuning) is reported and skipped, the others are written.

    A previous dataset in ``output_dir`` (statistics PNGs in ``train/`` or ``test/``) is refused
    before any conversion unless ``overwrite``; with ``overwrite`` those PNGs are deleted first, so
    no image of the old split is left in the other folder. Other files there are left alone.

    Args:
        workers: processes (default: CPU count); 1 converts in this process.
        progress: show a progress bar and report failures as they happen.
        overwrite: replace a previous dataset in ``output_dir``.

    Returns:
        The summary; ``summary.ok`` is false when any file failed.

    Raises:
        IsplabError: bad arguments, ``input_dir`` missing or holding no DNG, ``output_dir`` holding
            a dataset without ``overwrite`` or not writable.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    _grid_size(target, resize)
    if not 0.0 <= split <= 1.0:
        raise IsplabError(f"split must be a proportion between 0 and 1, got {split}")
    if not input_dir.is_dir():
        raise IsplabError(f"input folder not found: {input_dir}")
    paths = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() == ".dng" and p.is_file())
    if not paths:
        raise IsplabError(f"no .dng files in {input_dir} (expected annotated DNGs named {NAME_PATTERNS[0]})")

    folders = {"train": output_dir / "train", "test": output_dir / "test"}
    previous = _previous_statistics(folders.values())
    prepare_output_dir(output_dir, overwrite=overwrite, names=[str(p.relative_to(output_dir)) for p in previous],
                       what="dataset folder")
    for path in previous:
        path.unlink()
    for folder in folders.values():
        check_writable_dir(folder)
    rng = random.Random(seed)
    destination = {p: "test" if rng.random() < split else "train" for p in paths}
    args = (target, None if tuning_dir is None else str(tuning_dir), resize, colour_test)

    summary = ConvertSummary()
    results: dict[Path, Path | str] = {}
    with _progress_bar(progress, len(paths)) as advance:
        if workers == 1:
            for path in paths:
                results[path] = _attempt(_convert_to_file, path, folders[destination[path]], *args)
                advance(path, results[path])
        else:
            # "spawn": workers start clean rather than forking a parent that may hold torch/OpenCV threads.
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = {
                    pool.submit(_attempt, _convert_to_file, p, folders[destination[p]], *args): p for p in paths
                }
                for future in concurrent.futures.as_completed(futures):
                    path = futures[future]
                    results[path] = future.result()
                    advance(path, results[path])
    for path in paths:
        result = results[path]
        if not isinstance(result, Path):
            summary.failed.append((path, result))
            continue
        summary.written.append(result)
        if destination[path] == "test":
            summary.test += 1
        else:
            summary.train += 1
    return summary


def _previous_statistics(folders) -> list[Path]:
    """Files an earlier conversion wrote in ``folders``: statistics PNGs (named as :func:`stats_name`)
    and partial files of an interrupted run."""
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() != ".png":
                continue
            partial = path.name.startswith(".") and ".partial" in path.name
            if partial or _is_stats_name(path):
                found.append(path)
    return found


def _is_stats_name(path: Path) -> bool:
    try:
        parse_stats_name(path)
    except IsplabError:
        return False
    return True


def _attempt(function, path: Path, *args) -> Path | str:
    """``function(path, *args)``, or the error message when it fails (a bad file must not stop the run)."""
    try:
        return function(path, *args)
    except IsplabError as e:
        return str(e)
    except Exception as e:  # corrupt data can raise anything from the decoders: report, don't crash
        return f"cannot convert {path}: {type(e).__name__}: {e}"


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[Path, Path | str], None]]:
    """Yield ``advance(path, result)``: steps a rich progress bar and prints failures above it."""
    if not enabled:
        yield lambda path, result: None
        return
    columns = (TextColumn("converting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("convert", total=total)

        def advance(path: Path, result: Path | str) -> None:
            if not isinstance(result, Path):
                bar.console.print(f"[red]skipped[/red] {escape(path.name)}: {escape(result)}", highlight=False)
            bar.advance(task)

        yield advance
