"""libcamera Raspberry Pi tuning files: lookup, the quantities AWB needs, and ``rpi.nn.awb`` generation.

A tuning file is JSON ``{"version": 2.0, "target": "pisp" | "bcm2835", "algorithms": [{name: config}, ...]}``.
:class:`Tuning` reads what Raspberry Pi's AWB training tools read from it, with the same conventions:

* **CT curve** (``rpi.awb`` ``ct_curve``: ``T, r, b`` triples): ``r = R/G`` and ``b = B/G`` of a grey
  surface at ``T`` kelvin, i.e. the reciprocal of the white-balance gains. As in the reference tools,
  ``r`` and ``b`` are multiplied by ``sensitivity_r`` / ``sensitivity_b`` and interpolated linearly in
  ``T``, clamped at the curve's ends.
* **Inverting the curve** (:meth:`Tuning.ct_from_rb`): the temperature whose perpendicular to the
  curve passes through ``(r, b)`` (so the closest curve point for points near the curve).
* **CCM** (``rpi.ccm`` ``ccms``) and **lens shading** (``rpi.alsc`` ``calibrations_Cr/Cb`` times
  ``luminance_lut``) are interpolated linearly in ``T``, clamped at the ends; each ALSC gain table is
  divided by its minimum so the smallest gain is 1, as libcamera's ALSC does.
* **Lux** (``rpi.lux``): libcamera's formula, reference values scaled by exposure, gain and aperture.

:func:`generate_tuning` / :func:`write_tuning` produce a tuning file running the neural-network AWB,
printed in the compact layout of libcamera's tuning tools (number tables on a few rows).
"""

from __future__ import annotations

import copy
import json
import math
import textwrap
from pathlib import Path

import cv2
import numpy as np

from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_file
from isplab.workflows.awb.constants import TARGETS

__all__ = [
    "CANONICAL_CT",
    "SYSTEM_TUNING_DIRS",
    "TARGETS",
    "Tuning",
    "dumps_tuning",
    "find_tuning",
    "generate_tuning",
    "load_tuning",
    "write_tuning",
]

#: Where libcamera installs Raspberry Pi tuning files (``<dir>/<target>/<sensor>.json``); a local
#: build in /usr/local shadows the distribution's, as in Raspberry Pi's gen_tuning.py.
SYSTEM_TUNING_DIRS = (Path("/usr/local/share/libcamera/ipa/rpi"), Path("/usr/share/libcamera/ipa/rpi"))
#: The colour temperature at which ``rpi.nn.awb`` renders its input statistics.
CANONICAL_CT = 5000.0

_NN_AWB = "rpi.nn.awb"
_DISABLED = "disable."
# Half-width of the central difference giving the curve's direction (the reference tools' 10 K).
_TANGENT_STEP = 10.0
# Stop the ternary search when the bracket is this narrow (kelvin), as the reference does.
_SEARCH_TOLERANCE = 1.0
# Above this squared distance along the curve the perpendicular search failed; fall back to
# averaging the temperatures at which r and b alone are matched (the reference's fallback).
_SEARCH_RESIDUAL = 0.01
# ALSC table sizes by number of entries: PiSP 32x32, VC4 16 wide x 12 high.
_ALSC_SHAPES = {32 * 32: (32, 32), 16 * 12: (12, 16)}
# Numbers per row for flat lists in the compact writer, as libcamera's ctt pretty printer.
_ROW_LENGTHS = {
    "weights": 15, "table": 16, "luminance_lut": 16, "ct_curve": 3, "ccm": 3, "lut_rx": 9, "lut_bx": 9,
    "lut_by": 9, "lut_ry": 9, "gamma_curve": 2, "y_target": 2, "prior": 2, "tonemap": 2,
}
_TABLE_ROW = {"pisp": 32, "bcm2835": 16}  # ALSC tables one grid row per line
_LINE_WIDTH = 120
_INDENT = 4


def _check_target(target: str) -> str:
    if target not in TARGETS:
        raise IsplabError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    return target


def find_tuning(sensor: str, target: str, tuning_dir: str | Path | None = None) -> Path:
    """Path of ``<sensor>.json`` for ``target``.

    Searches ``tuning_dir/<target>/<sensor>.json`` and ``tuning_dir/<sensor>.json`` (when given),
    then :data:`SYSTEM_TUNING_DIRS` ``/<target>/<sensor>.json``.

    Raises:
        IsplabError: no such file; the message lists every path searched.
    """
    _check_target(target)
    candidates = []
    if tuning_dir is not None:
        candidates += [Path(tuning_dir) / target / f"{sensor}.json", Path(tuning_dir) / f"{sensor}.json"]
    candidates += [root / target / f"{sensor}.json" for root in SYSTEM_TUNING_DIRS]
    for path in candidates:
        if path.is_file():
            return path
    searched = ", ".join(str(p) for p in candidates)
    raise IsplabError(
        f"no {target} tuning file for sensor {sensor!r}; searched {searched} (pass --tuning-dir DIR holding "
        f"{target}/{sensor}.json or {sensor}.json)"
    )


def load_tuning(path: str | Path) -> Tuning:
    """Read a tuning file.

    Raises:
        IsplabError: missing file, invalid JSON, or no ``algorithms`` list (the message names the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise IsplabError(f"tuning file not found: {path}") from e
    except json.JSONDecodeError as e:
        raise IsplabError(f"malformed tuning file {path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise IsplabError(f"cannot read tuning file {path}: {e}") from e
    return Tuning(data, path)


class Tuning:
    """A parsed tuning file and the AWB quantities derived from it.

    Args:
        data: the decoded JSON.
        path: where it came from (named in error messages).
    """

    def __init__(self, data: dict, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.data = data
        algorithms = data.get("algorithms") if isinstance(data, dict) else None
        if not isinstance(algorithms, list) or not all(isinstance(a, dict) for a in algorithms):
            raise IsplabError(f"malformed tuning file {self._name}: expected an 'algorithms' list of objects")
        self._curve: np.ndarray | None = None

    @property
    def _name(self) -> str:
        return str(self.path) if self.path is not None else "<tuning>"

    def algorithm(self, name: str) -> dict:
        """Config of the first algorithm whose key ends with ``.<name>`` (e.g. ``awb`` matches
        ``rpi.awb``, ``disable.rpi.awb`` and ``rpi.nn.awb``, as the reference tools look them up).

        Raises:
            IsplabError: no such algorithm in the file.
        """
        for algorithm in self.data["algorithms"]:
            for key, config in algorithm.items():
                if key.endswith(f".{name}") and isinstance(config, dict):
                    return config
        raise IsplabError(f"malformed tuning file {self._name}: no 'rpi.{name}' algorithm")

    def _value(self, algorithm: str, key: str):
        config = self.algorithm(algorithm)
        if key not in config:
            raise IsplabError(f"malformed tuning file {self._name}: 'rpi.{algorithm}' has no '{key}'")
        return config[key]

    # --- colour-temperature curve -------------------------------------------------------------

    @property
    def ct_curve(self) -> np.ndarray:
        """``(N, 3)`` rows ``T, r, b`` with the sensitivities applied, ``T`` increasing."""
        if self._curve is None:
            awb = self.algorithm("awb")
            points = np.asarray(self._value("awb", "ct_curve"), dtype=np.float64)
            if points.ndim != 1 or points.size < 6 or points.size % 3:
                raise IsplabError(
                    f"malformed tuning file {self._name}: 'ct_curve' must hold at least two 'T, r, b' triples, "
                    f"got {points.size} numbers"
                )
            curve = points.reshape(-1, 3).copy()
            if np.any(np.diff(curve[:, 0]) <= 0):
                raise IsplabError(f"malformed tuning file {self._name}: 'ct_curve' temperatures must increase")
            curve[:, 1] *= float(awb.get("sensitivity_r", 1.0))
            curve[:, 2] *= float(awb.get("sensitivity_b", 1.0))
            self._curve = curve
        return self._curve

    def gains_at(self, ct: float) -> tuple[float, float]:
        """``(r, b)`` = R/G and B/G of grey at ``ct`` kelvin (reciprocal of the WB gains)."""
        curve = self.ct_curve
        return float(np.interp(ct, curve[:, 0], curve[:, 1])), float(np.interp(ct, curve[:, 0], curve[:, 2]))

    def _normal(self, ct: float) -> np.ndarray | None:
        """Unit normal to the curve at ``ct`` (``None`` where the curve is flat, past its ends)."""
        r0, b0 = self.gains_at(ct - _TANGENT_STEP)
        r1, b1 = self.gains_at(ct + _TANGENT_STEP)
        normal = np.array([b1 - b0, r0 - r1])
        length = np.hypot(*normal)
        return None if length == 0 else normal / length

    def _along_curve_offset2(self, ct: float, rb: np.ndarray) -> float:
        """Squared component along the curve of ``rb - curve(ct)``: 0 where ``rb`` lies on the normal."""
        normal = self._normal(ct)
        if normal is None:
            return math.inf
        offset = rb - np.array(self.gains_at(ct))
        along = offset - (offset @ normal) * normal
        return float(along @ along)

    def ct_from_rb(self, r: float, b: float) -> float:
        """Colour temperature (K) of a grey whose R/G, B/G are ``(r, b)``: the curve temperature whose
        normal passes through the point, found by ternary search over the curve's range to 1 K.

        When no such temperature exists (the point is far off the curve's ends), the mean of the
        temperatures matching ``r`` alone and ``b`` alone is returned, as the reference does.
        """
        rb = np.array([r, b], dtype=np.float64)
        curve = self.ct_curve
        lo, hi = float(curve[0, 0]), float(curve[-1, 0])
        while hi - lo > _SEARCH_TOLERANCE:
            third = (hi - lo) / 3
            if self._along_curve_offset2(lo + third, rb) > self._along_curve_offset2(hi - third, rb):
                lo += third
            else:
                hi -= third
        ct = (lo + hi) / 2
        if self._along_curve_offset2(ct, rb) <= _SEARCH_RESIDUAL:
            return ct
        # r falls and b rises with temperature: interpolate each against the temperatures.
        ct_r = np.interp(r, curve[::-1, 1], curve[::-1, 0])
        ct_b = np.interp(b, curve[:, 2], curve[:, 0])
        return float((ct_r + ct_b) / 2)

    # --- CCM, lens shading, lux, gamma -----------------------------------------------------------

    def _interpolate(self, ct: float, entries, key: str, algorithm: str) -> np.ndarray:
        """Linear interpolation in ``ct`` between ``{"ct": T, key: [...]}`` entries, clamped at the ends."""
        if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and "ct" in e and key in e for e in entries
        ):
            raise IsplabError(
                f"malformed tuning file {self._name}: 'rpi.{algorithm}' needs a list of {{'ct': ..., '{key}': [...]}}"
            )
        cts = np.array([e["ct"] for e in entries], dtype=np.float64)
        values = np.array([e[key] for e in entries], dtype=np.float64)
        if ct <= cts[0]:
            return values[0]
        if ct >= cts[-1]:
            return values[-1]
        i = int(np.searchsorted(cts, ct, side="right"))  # cts[i - 1] <= ct < cts[i]
        alpha = (ct - cts[i - 1]) / (cts[i] - cts[i - 1])
        return alpha * values[i] + (1 - alpha) * values[i - 1]

    def ccm_at(self, ct: float) -> np.ndarray:
        """``(3, 3)`` colour correction matrix at ``ct`` from ``rpi.ccm`` ``ccms``."""
        ccm = self._interpolate(ct, self._value("ccm", "ccms"), "ccm", "ccm")
        if ccm.size != 9:
            raise IsplabError(f"malformed tuning file {self._name}: each 'ccm' must have 9 numbers, got {ccm.size}")
        return ccm.reshape(3, 3)

    def alsc_at(self, ct: float, grid_hw: tuple[int, int]) -> np.ndarray:
        """``(3, H, W)`` R, G, B lens-shading gains at ``ct``, bilinearly resized to ``grid_hw = (H, W)``.

        Each table is ``Cr`` (R), 1 (G) or ``Cb`` (B) times the luminance table (``luminance_lut``
        with ``luminance_strength`` applied), divided by its minimum. A tuning file without
        ``rpi.alsc`` has no lens shading: all gains are 1.
        """
        height, width = grid_hw
        try:
            alsc = self.algorithm("alsc")
        except IsplabError:
            return np.ones((3, height, width))
        luminance = np.asarray(self._value("alsc", "luminance_lut"), dtype=np.float64)
        strength = float(alsc.get("luminance_strength", 1.0))
        luminance = (luminance - 1.0) * strength + 1.0
        cr = self._interpolate(ct, self._value("alsc", "calibrations_Cr"), "table", "alsc")
        cb = self._interpolate(ct, self._value("alsc", "calibrations_Cb"), "table", "alsc")
        if not cr.size == cb.size == luminance.size or luminance.size not in _ALSC_SHAPES:
            raise IsplabError(
                f"malformed tuning file {self._name}: ALSC tables must all have 1024 (32x32) or 192 (16x12) "
                f"entries, got {cr.size}, {cb.size} and {luminance.size}"
            )
        shape = _ALSC_SHAPES[luminance.size]
        tables = []
        for colour in (cr, np.ones_like(cr), cb):
            table = (colour * luminance).reshape(shape)
            tables.append(cv2.resize(table / table.min(), (width, height), interpolation=cv2.INTER_LINEAR))
        return np.stack(tables)

    def lux(
        self,
        y: float,
        exposure_time: float | None = None,
        analogue_gain: float | None = None,
        aperture: float | None = None,
    ) -> float:
        """Scene lux from the mean luminance ``y`` (16-bit scale) and the exposure (libcamera's ``rpi.lux``).

        ``lux = reference_lux * y / reference_Y * (reference_shutter / shutter) * (reference_gain / gain)
        * (reference_aperture / aperture)^2``. Unknown exposure values (``None``) take the reference
        value, so their ratio is 1 (Raspberry Pi DNGs record no aperture).

        Args:
            exposure_time: seconds (the tuning's reference is in microseconds).
        """
        ref_shutter = float(self._value("lux", "reference_shutter_speed"))
        ref_gain = float(self._value("lux", "reference_gain"))
        ref_aperture = float(self.algorithm("lux").get("reference_aperture", 1.0))
        shutter = ref_shutter if exposure_time is None else exposure_time * 1e6
        gain = ref_gain if analogue_gain is None else analogue_gain
        aperture_ratio = 1.0 if aperture is None else ref_aperture / aperture
        return (
            float(self._value("lux", "reference_lux"))
            * y / float(self._value("lux", "reference_Y"))
            * (ref_shutter / shutter) * (ref_gain / gain) * aperture_ratio**2
        )

    def gamma_lut(self) -> np.ndarray:
        """``(65536,)`` uint16 lookup table of ``rpi.contrast`` ``gamma_curve`` (16-bit in and out)."""
        curve = np.asarray(self._value("contrast", "gamma_curve"), dtype=np.float64)
        if curve.ndim != 1 or curve.size < 4 or curve.size % 2:
            raise IsplabError(f"malformed tuning file {self._name}: 'gamma_curve' must hold 'x, y' pairs")
        return np.interp(np.arange(65536), curve[0::2], curve[1::2], right=65535).astype(np.uint16)


# --- rpi.nn.awb tuning generation ----------------------------------------------------------------


def generate_tuning(
    sensor: str,
    target: str,
    model_path: str | Path,
    *,
    base: str | Path | None = None,
    tuning_dir: str | Path | None = None,
) -> dict:
    """A tuning file running libcamera's neural-network AWB with ``model_path``.

    Starting from ``base`` (or the installed tuning of ``sensor``, see :func:`find_tuning`):
    ``disable.rpi.nn.awb`` is renamed ``rpi.nn.awb`` (or, when the file has neither, a block is
    added after ``rpi.awb`` holding a copy of its CT curve, modes and search settings, which
    ``rpi.nn.awb`` shares); ``rpi.awb`` becomes ``disable.rpi.awb``; ``model`` is set to the
    model's absolute path; ``ccm`` is set to the 5000 K CCM interpolated from ``rpi.ccm`` when it is
    missing or holds a 0 (libcamera then disables the network). Everything else is unchanged and
    in its original order.

    Raises:
        IsplabError: no tuning file found, or it lacks the AWB block or the CCMs.
    """
    _check_target(target)
    path = Path(base) if base is not None else find_tuning(sensor, target, tuning_dir)
    tuning = load_tuning(path)
    data = copy.deepcopy(tuning.data)
    algorithms = data["algorithms"]

    names = [next(iter(a), None) for a in algorithms]
    awb_names = ("rpi.awb", _NN_AWB, _DISABLED + _NN_AWB, _DISABLED + "rpi.awb")
    if not any(name in awb_names for name in names):
        raise IsplabError(f"malformed tuning file {path}: no 'rpi.awb' or 'disable.rpi.nn.awb' algorithm to enable")
    if _DISABLED + _NN_AWB in names:
        i = names.index(_DISABLED + _NN_AWB)
        algorithms[i] = {_NN_AWB: algorithms[i][_DISABLED + _NN_AWB]}
    elif _NN_AWB not in names:
        source = names.index("rpi.awb") if "rpi.awb" in names else names.index(_DISABLED + "rpi.awb")
        algorithms.insert(source + 1, {_NN_AWB: copy.deepcopy(next(iter(algorithms[source].values())))})
    for i, algorithm in enumerate(algorithms):
        if "rpi.awb" in algorithm:
            algorithms[i] = {_DISABLED + "rpi.awb": algorithm["rpi.awb"]}

    nn = next(a[_NN_AWB] for a in algorithms if _NN_AWB in a)
    if "ct_curve" not in nn:
        raise IsplabError(f"malformed tuning file {path}: the AWB block has no 'ct_curve', which rpi.nn.awb needs")
    nn["model"] = str(Path(model_path).resolve())
    ccm = nn.get("ccm")
    if not isinstance(ccm, list) or len(ccm) != 9 or any(v == 0 for v in ccm):
        canonical = tuning.ccm_at(CANONICAL_CT).ravel()
        nn["ccm"] = [v if round(v, 5) == 0 else round(v, 5) for v in canonical.tolist()]
    return data


def dumps_tuning(data: dict) -> str:
    """Tuning JSON in libcamera's compact layout: objects one key per line, flat number lists on
    one line when short, tables (ALSC, CCM, CT curve, gamma...) a fixed number of values per row."""
    rows = dict(_ROW_LENGTHS)
    table_row = _TABLE_ROW.get(data.get("target")) if isinstance(data, dict) else None
    if table_row is not None:
        rows.update(table=table_row, luminance_lut=table_row)
    return _encode(data, 0, None, rows) + "\n"


def _encode(value, level: int, key: str | None, rows: dict[str, int]) -> str:
    pad = " " * (_INDENT * level)
    inner = " " * (_INDENT * (level + 1))
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, dict) and not v:
                lines.append(f"{inner}{json.dumps(k)}: {{ }}")
            elif isinstance(v, dict):  # objects open on their own line
                lines.append(f"{inner}{json.dumps(k)}:\n{inner}{_encode(v, level + 1, k, rows)}")
            else:
                lines.append(f"{inner}{json.dumps(k)}:{_encode(v, level + 1, k, rows)}")
        return "{\n" + ",\n".join(lines) + f"\n{pad}}}"
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple, dict)) for v in value):
            items = [inner + _encode(v, level + 1, None, rows).lstrip(" ") for v in value]
            return " [\n" + ",\n".join(items) + f"\n{pad}]"
        numbers = [json.dumps(v) for v in value]
        flat = ", ".join(numbers)
        if key in rows:
            n = rows[key]
            body = ",\n".join(inner + ", ".join(numbers[i : i + n]) for i in range(0, len(numbers), n))
        elif len(flat) > _LINE_WIDTH - len(pad):
            body = textwrap.fill(
                flat, _LINE_WIDTH, break_long_words=False, initial_indent=inner, subsequent_indent=inner
            )
        else:
            return f" [ {flat} ]"
        return f"\n{pad}[\n{body}\n{pad}]"
    return " " + json.dumps(value)


def write_tuning(data: dict, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``data`` with :func:`dumps_tuning`, atomically (a temporary file renamed into place).

    Raises:
        IsplabError: ``path`` exists and ``overwrite`` is false, or the file cannot be written.
    """
    path = prepare_output_file(path, overwrite=overwrite, what="tuning file")
    text = dumps_tuning(data)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text)
        partial.replace(path)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise IsplabError(f"cannot write tuning file {path}: {e.strerror or e}") from e
    return path

