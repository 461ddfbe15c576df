"""Labelling a folder of DNGs with white-balance gains: listing, previews, grey rectangles, save and undo.

The folder holds captures named ``<user>,<sensor>,<id>.dng`` (as ``isplab awb capture`` and the
seed's snapper write them). Saving a label renames the DNG to
``<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng``, the name :func:`~isplab.workflows.awb.convert.parse_annotated_name`
reads, and appends a record to ``labels.json`` in the folder (rewritten atomically: a temporary file
renamed over it), so every label survives a crash and every original name can be recovered. Undo
renames the most recently saved file back and records that too.

Only regular ``*.dng`` files directly inside the folder are reachable: names holding a path
separator, and symlinks resolving outside the folder, are refused. The names in ``labels.json`` pass
the same check before undo renames anything: a tampered or corrupt labels file is refused as a whole
(:class:`LabelsFileError`) and nothing is renamed.
"""

from __future__ import annotations

import collections
import datetime
import functools
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from isplab.errors import IsplabError
from isplab.io import RawImage, read_raw
from isplab.workflows.awb.convert import AnnotatedName, camera_rgb, label_gains, parse_annotated_name, render_label
from isplab.workflows.awb.tuning import TARGETS, Tuning, find_tuning, load_tuning

__all__ = [
    "GAIN_RANGE", "LABELS_FILE", "METHODS", "PREVIEW_WIDTH", "Annotator", "ConflictError", "LabelsFileError",
    "NotFoundError", "check_gains", "check_name",
]

LABELS_FILE = "labels.json"
#: How a label was chosen: a grey rectangle, the temperature (+ purple/green) sliders, typed gains.
METHODS = ("rectangle", "temperature", "manual")
#: Accepted white-balance gains (a grey's G/R and G/B); real cameras stay well inside.
GAIN_RANGE = (0.05, 20.0)
#: Previews are rendered at most this wide, so rendering stays interactive on full-size raws.
PREVIEW_WIDTH = 640
# Raws (tens of MB each) kept in memory for rectangle medians and re-renders.
_CACHED_IMAGES = 4
_GAIN_DECIMALS = 4


class NotFoundError(IsplabError):
    """The requested image is not a DNG in the folder."""


class ConflictError(IsplabError):
    """The request clashes with the folder's state (a name already taken, nothing to undo)."""


class LabelsFileError(ConflictError):
    """``labels.json`` is unreadable, not the annotator's format, or names a file outside the folder."""


@dataclass
class _Loaded:
    raw: RawImage
    preview_rgb: np.ndarray  # (h, w, 3) uint16 camera RGB at preview size
    name: AnnotatedName


@functools.cache
def _srgb_lut() -> np.ndarray:
    # Used when the tuning has no rpi.contrast gamma curve (the sRGB transfer function, 16-bit).
    x = np.arange(65536) / 65535.0
    y = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.round(y * 65535).astype(np.uint16)


def check_name(name) -> str | None:
    """Why ``name`` is not a plain DNG file name (no separator, not ``.``/``..``, ends in ``.dng``), else None."""
    if not isinstance(name, str) or not name:
        return f"expected a file name, got {name!r}"
    if any(c in name for c in "/\\\0") or name in (".", ".."):
        return f"{name!r} is not a plain file name (no folders, no '..')"
    if not name.lower().endswith(".dng"):
        return f"{name!r} is not a .dng file name"
    return None


def check_gains(gains) -> tuple[float, float]:
    """``(red_gain, blue_gain)`` as floats, or IsplabError unless two finite numbers in :data:`GAIN_RANGE`."""
    lo, hi = GAIN_RANGE
    try:
        r, b = (float(g) for g in gains)
    except (TypeError, ValueError):
        raise IsplabError(f"gains must be two numbers [red_gain, blue_gain], got {gains!r}") from None
    if not all(math.isfinite(g) and lo <= g <= hi for g in (r, b)):
        raise IsplabError(f"gains must lie between {lo} and {hi}, got [{r}, {b}]")
    return r, b


class Annotator:
    """The labelling state of one folder; thread-safe (the web server calls it from many threads).

    Args:
        folder: the folder of DNGs.
        target: ``"pisp"`` or ``"vc4"``: which tuning file of each sensor renders previews and
            inverts the CT curve.
        tuning_dir: folder searched first for ``<target>/<sensor>.json`` (see :func:`find_tuning`).

    Raises:
        IsplabError: the folder does not exist, unknown target.
    """

    def __init__(self, folder: str | Path, target: str = "pisp", tuning_dir: str | Path | None = None) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise IsplabError(f"folder not found: {folder}")
        if target not in TARGETS:
            raise IsplabError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
        self.folder = folder.resolve()
        self.target = target
        self.tuning_dir = tuning_dir
        self.labels_path = self.folder / LABELS_FILE
        self._tunings: dict[str, Tuning] = {}
        self._images: collections.OrderedDict[Path, _Loaded] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one save or undo at a time: renames + labels file

    # --- the folder ----------------------------------------------------------------------------

    def _inside(self, path: Path) -> bool:
        try:
            return path.resolve().parent == self.folder and path.is_file()
        except OSError:
            return False

    def names(self) -> list[str]:
        """DNG names in the folder, sorted (symlinks out of the folder and other files left out)."""
        return sorted(
            p.name for p in self.folder.iterdir() if p.suffix.lower() == ".dng" and self._inside(p)
        )

    def path(self, name: str) -> Path:
        """The file of DNG ``name``.

        Raises:
            NotFoundError: ``name`` is not a plain file name of a DNG inside the folder.
        """
        if check_name(name) is not None:
            raise NotFoundError(f"not a DNG name in the folder: {name!r}")
        path = self.folder / name
        if not self._inside(path):
            raise NotFoundError(f"no DNG named {name!r} in {self.folder}")
        return path

    def _parse(self, name: str) -> AnnotatedName:
        """The name's parts; an unlabelled ``<user>,<sensor>,<id>.dng`` has neither gains nor box."""
        parts = Path(name).stem.split(",")
        if len(parts) == 3 and all(parts):
            return AnnotatedName(self.folder / name, *parts)
        try:
            return parse_annotated_name(self.folder / name)
        except IsplabError:
            raise IsplabError(
                f"cannot label {name!r}: expected <user>,<sensor>,<id>.dng or an annotated name "
                "<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng"
            ) from None

    def listing(self) -> list[dict]:
        """One entry per DNG: ``name``, ``labelled``, ``gains`` (from the name, else ``None``) and
        ``error`` (why it cannot be labelled, else ``None``)."""
        entries = []
        for name in self.names():
            try:
                parsed = self._parse(name)
            except IsplabError as e:
                entries.append({"name": name, "labelled": False, "gains": None, "error": str(e)})
                continue
            labelled = parsed.gains is not None or parsed.grey_box is not None
            entries.append({"name": name, "labelled": labelled, "gains": parsed.gains, "error": None})
        return entries

    # --- images and rendering ------------------------------------------------------------------

    def tuning(self, sensor: str) -> Tuning:
        """The sensor's tuning for the target (loaded once)."""
        with self._cache_lock:
            if sensor not in self._tunings:
                self._tunings[sensor] = load_tuning(find_tuning(sensor, self.target, self.tuning_dir))
            return self._tunings[sensor]

    def _load(self, name: str) -> _Loaded:
        key = self.path(name)
        with self._cache_lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        parsed = self._parse(name)
        raw = read_raw(key)
        rgb = camera_rgb(raw)
        height, width = rgb.shape[:2]
        if width > PREVIEW_WIDTH:
            size = (PREVIEW_WIDTH, max(1, round(height * PREVIEW_WIDTH / width)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        loaded = _Loaded(raw, rgb, parsed)
        with self._cache_lock:
            self._images[key] = loaded
            while len(self._images) > _CACHED_IMAGES:
                self._images.popitem(last=False)
        return loaded

    def temperature(self, name: str, gains: tuple[float, float]) -> float:
        """Colour temperature (K) of the light ``gains`` neutralise in ``name``: its sensor's CT curve
        inverted at ``1/gains``, as ``isplab awb convert`` computes the true temperature."""
        return self._temperature(self._load(name).name.sensor, check_gains(gains))

    def _temperature(self, sensor: str, gains: tuple[float, float]) -> float:
        return self.tuning(sensor).ct_from_rb(1.0 / gains[0], 1.0 / gains[1])

    def describe(self, name: str) -> dict:
        """What the page needs to label ``name``: raw ``width``/``height``, ``sensor``, the CT ``curve``
        (rows ``T, r, b``), the current ``gains`` (the label, else the camera's as-shot gains), their
        ``temperature`` and whether the image is ``labelled``."""
        loaded = self._load(name)
        parsed = loaded.name
        labelled = parsed.gains is not None or parsed.grey_box is not None
        tuning = self.tuning(parsed.sensor)
        gains = (label_gains(loaded.raw, parsed, tuning) if labelled
                 else tuple(float(g) for g in loaded.raw.wb_gains[[0, 2]]))
        height, width = loaded.raw.mosaic.shape
        return {
            "name": name, "sensor": parsed.sensor, "width": width, "height": height, "labelled": labelled,
            "gains": list(gains), "temperature": self._temperature(parsed.sensor, gains),
            "curve": tuning.ct_curve.tolist(),
        }

    def preview(self, name: str, gains: tuple[float, float]) -> bytes:
        """PNG (at most :data:`PREVIEW_WIDTH` wide) of ``name`` rendered with ``gains``: lens shading,
        the gains, the CCM at their temperature and the tuning's gamma curve (sRGB when it has none)."""
        gains = check_gains(gains)
        loaded = self._load(name)
        tuning = self.tuning(loaded.name.sensor)
        try:
            lut = tuning.gamma_lut()
        except IsplabError:
            lut = _srgb_lut()
        image = (lut[render_label(loaded.preview_rgb, tuning, gains)] >> 8).astype(np.uint8)
        ok, png = cv2.imencode(".png", image[..., ::-1])
        if not ok:
            raise IsplabError(f"cannot encode the preview of {name}")
        return png.tobytes()

    def rectangle_gains(self, name: str, rectangle) -> tuple[float, float]:
        """``(red_gain, blue_gain)`` of a grey rectangle ``[x1, y1, x2, y2]`` in raw pixels (rounded down
        to even, so it starts on a Bayer tile), by the converter's own :func:`label_gains`."""
        loaded = self._load(name)
        x1, y1, x2, y2 = self._check_rectangle(rectangle, loaded.raw)
        return label_gains(loaded.raw, AnnotatedName(loaded.name.path, loaded.name.user, loaded.name.sensor,
                                                     loaded.name.id, grey_box=(x1, y1, x2, y2)),
                           self.tuning(loaded.name.sensor))

    @staticmethod
    def _check_rectangle(rectangle, raw: RawImage) -> tuple[int, int, int, int]:
        height, width = raw.mosaic.shape
        try:
            x1, y1, x2, y2 = (int(v) // 2 * 2 for v in rectangle)
        except (TypeError, ValueError):
            raise IsplabError(f"rectangle must be four integers [x1, y1, x2, y2], got {rectangle!r}") from None
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise IsplabError(
                f"rectangle ({x1},{y1})-({x2},{y2}) (rounded to even) must be non-empty and inside the {width}x{height} image"
            )
        return x1, y1, x2, y2

    # --- labels --------------------------------------------------------------------------------

    def labels(self) -> list[dict]:
        """Every record of the labels file, oldest first (empty when there is none yet).

        Raises:
            LabelsFileError: the file is unreadable or not JSON, or a record is not a ``save`` with
                plain DNG names ``original`` and ``name`` or an ``undo`` with plain DNG names ``name``
                and ``labelled`` (see :func:`check_name`).
        """
        path = self.labels_path
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            message = " ".join(str(e).split())
            raise LabelsFileError(f"cannot read labels file {path}: {message}") from e
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise LabelsFileError(f"malformed labels file {path}: expected an object {{\"records\": [...]}}")
        for index, record in enumerate(data["records"]):
            problem = self._check_record(record)
            if problem:
                raise LabelsFileError(f"malformed labels file {path}: record {index} {problem}; nothing was renamed")
        return data["records"]

    @staticmethod
    def _check_record(record) -> str | None:
        if not isinstance(record, dict):
            return f"is {type(record).__name__}, expected an object"
        keys = {"save": ("original", "name"), "undo": ("name", "labelled")}.get(record.get("action"))
        if keys is None:
            return f"has action {record.get('action')!r}, expected 'save' or 'undo'"
        for key in keys:
            problem = check_name(record.get(key))
            if problem:
                return f"{key!r}: {problem}"
        return None

    def _write_labels(self, records: list[dict]) -> None:
        partial = self.folder / f".{LABELS_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(partial, "w") as f:
                json.dump({"version": 1, "records": records}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, self.labels_path)
        finally:
            partial.unlink(missing_ok=True)

    def save(self, name: str, gains, method: str, rectangle=None) -> dict:
        """Label ``name``: rename it to ``<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng`` and record it.

        Args:
            gains: ``(red_gain, blue_gain)``, stored with 4 decimals.
            method: one of :data:`METHODS`.
            rectangle: the grey rectangle ``[x1, y1, x2, y2]`` (raw pixels) for method ``rectangle``.

        Returns:
            The record appended to the labels file (``original``, ``name``, ``gains``, ``method``,
            ``rectangle``, ``temperature``, ``time``).

        Raises:
            NotFoundError: no such DNG.
            ConflictError: a file of the new name exists already (nothing is overwritten).
            LabelsFileError: the labels file is corrupt (nothing is renamed).
            IsplabError: bad gains, method or rectangle, unparseable name.
        """
        gains = tuple(round(g, _GAIN_DECIMALS) for g in check_gains(gains))
        if method not in METHODS:
            raise IsplabError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
        with self._write_lock:
            loaded = self._load(name)
            if rectangle is not None:
                rectangle = list(self._check_rectangle(rectangle, loaded.raw))
            elif method == "rectangle":
                raise IsplabError("method 'rectangle' needs the rectangle [x1, y1, x2, y2]")
            parsed = loaded.name
            new_name = f"{parsed.prefix},{gains[0]:.{_GAIN_DECIMALS}f},{gains[1]:.{_GAIN_DECIMALS}f}.dng"
            record = {
                "action": "save", "original": name, "name": new_name, "gains": list(gains), "method": method,
                "rectangle": rectangle, "temperature": round(self._temperature(parsed.sensor, gains), 1),
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            records = self.labels() + [record]
            if new_name != name:
                self._rename(name, new_name)
            try:
                self._write_labels(records)
            except OSError as e:
                if new_name != name:
                    self._rename(new_name, name)
                raise IsplabError(f"cannot write labels file {self.labels_path}: {e}") from e
            return record

    def undo(self) -> dict:
        """Rename the most recently saved (and not yet undone) file back to its name before that save.

        Returns:
            The ``undo`` record appended to the labels file (``name`` restored from ``labelled``).

        Raises:
            ConflictError: nothing to undo, or the files changed since (the labelled file is gone
                or the original name is taken).
            LabelsFileError: the labels file is corrupt or names a file outside the folder (nothing
                is renamed).
        """
        with self._write_lock:
            records = self.labels()
            saves = []
            for record in records:  # replay: a save pushes, an undo pops
                if record.get("action") == "save":
                    saves.append(record)
                elif record.get("action") == "undo" and saves:
                    saves.pop()
            if not saves:
                raise ConflictError("nothing to undo")
            last = saves[-1]
            if last["name"] != last["original"]:
                self._rename(last["name"], last["original"])
            record = {
                "action": "undo", "name": last["original"], "labelled": last["name"],
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            try:
                self._write_labels(records + [record])
            except OSError as e:
                if last["name"] != last["original"]:
                    self._rename(last["original"], last["name"])
                raise IsplabError(f"cannot write labels file {self.labels_path}: {e}") from e
            return record

    def _rename(self, old: str, new: str) -> None:
        source = self.folder / old
        destination = self.folder / new
        if not self._inside(source):
            raise ConflictError(f"cannot rename {old!r}: it is no longer in {self.folder}")
        if os.path.lexists(destination):
            raise ConflictError(f"cannot rename {old!r} to {new!r}: {new!r} already exists")
        try:
            try:
                # link + unlink rather than rename: link fails instead of replacing a file that appeared meanwhile.
                os.link(source, destination, follow_symlinks=False)
            except FileExistsError:
                raise ConflictError(f"cannot rename {old!r} to {new!r}: {new!r} already exists") from None
            except OSError:  # no hard links on this file system (FAT, some network shares)
                os.rename(source, destination)
            else:
                os.unlink(source)
        except OSError as e:
            raise IsplabError(f"cannot rename {old!r} to {new!r} in {self.folder}: {e}") from e
        with self._cache_lock:
            self._images.pop(source, None)
