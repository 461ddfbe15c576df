"""Camera raw files: the :class:`RawImage` record and :func:`read_raw`.

Any Bayer raw that LibRaw (through rawpy) decodes is supported: DNG, CR2/CR3, NEF, ARW, ORF,
RW2, ... Pixel data and sensor levels come from LibRaw; EXIF fields come from exifread where the
file has them (exact rationals), else from LibRaw's own parser (which also covers formats exifread
cannot read, such as CR3).

Conventions:

* ``mosaic`` is the visible (active) sensor area, ``(H, W)`` uint16, trimmed to even H and W so
  that it packs into 2x2 Bayer planes; ``cfa_pattern`` names the 2x2 tile at its top-left.
* Per-plane quantities (``black_level``) are in the canonical plane order **R, Gr, Gb, B** of
  :mod:`isplab.isp.bayer`, whatever the sensor's pattern.
* ``color_matrix`` is a DNG ``ColorMatrix``: it maps CIE XYZ (D65-referred) to camera RGB,
  ``camera_rgb = color_matrix @ xyz``. Its inverse maps camera RGB to XYZ.
* ``as_shot_neutral`` is the camera-RGB value of a neutral (grey) surface under the scene's light,
  normalised so G = 1; the white-balance gains are its reciprocal (:attr:`RawImage.wb_gains`).
* ``baseline_exposure`` is the DNG ``BaselineExposure`` in EV: a rendering multiplies the
  white-balanced linear values by ``2 ** baseline_exposure`` (:attr:`RawImage.exposure_gain`);
  0.0 when the file has no such tag (every non-DNG raw).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import exifread
import numpy as np
import rawpy

from isplab.errors import IsplabError, RawReadError
from isplab.isp.bayer import PLANES, check_pattern, plane_offsets

# TIFF/EXIF/DNG tag ids read through exifread (exifread names DNG tags inconsistently across
# versions, so tags are looked up by id).
_MAKE = 271
_MODEL = 272
_EXPOSURE_TIME = 33434
_F_NUMBER = 33437
_ISO = 34855
_UNIQUE_CAMERA_MODEL = 50708
_BASELINE_EXPOSURE = 50730  # DNG BaselineExposure, SRATIONAL, EV
_COLOR_MATRICES = ((50721, 50778), (50722, 50779))  # (ColorMatrixN, CalibrationIlluminantN)

_D65 = 21
# Illuminants LibRaw accepts as "daylight-like" when a DNG has no D65 matrix (EXIF LightSource
# codes: Daylight, Flash, D55, D75, D50).
_DAYLIGHT_LIKE = (1, 4, 20, 22, 23)


@dataclass(frozen=True, kw_only=True, eq=False)
class RawImage:
    """A Bayer raw frame with the metadata needed to process it.

    Construct it with keywords; values are validated and normalised on construction (use
    :func:`dataclasses.replace` to derive a modified copy). Instances compare by identity
    (``eq=False``) because their fields are arrays.

    Attributes:
        mosaic: ``(H, W)`` uint16 Bayer mosaic of the visible area, H and W even.
        cfa_pattern: ``'RGGB'``, ``'BGGR'``, ``'GRBG'`` or ``'GBRG'`` (tile at the top-left).
        black_level: ``(4,)`` float64 black level per plane, in R, Gr, Gb, B order.
        white_level: saturation level in raw units.
        as_shot_neutral: ``(3,)`` float64 camera-RGB neutral (DNG AsShotNeutral), G = 1.
        color_matrix: ``(3, 3)`` float64 XYZ -> camera RGB (DNG ColorMatrix, D65), or ``None``
            when the file carries none and LibRaw does not know the camera.
        exposure_time: seconds, or ``None`` when unknown.
        iso: ISO speed, or ``None`` when unknown.
        aperture: f-number, or ``None`` when unknown.
        make: camera maker ('' when unknown).
        model: camera model ('' when unknown).
        unique_camera_model: DNG UniqueCameraModel, or ``None``.
        baseline_exposure: DNG BaselineExposure in EV (0.0 when absent); see the module docstring.
        path: the file the frame was read from, or ``None`` for synthetic frames.
    """

    mosaic: np.ndarray
    cfa_pattern: str
    black_level: np.ndarray
    white_level: int
    as_shot_neutral: np.ndarray
    color_matrix: np.ndarray | None
    exposure_time: float | None = None
    iso: int | None = None
    aperture: float | None = None
    make: str = ""
    model: str = ""
    unique_camera_model: str | None = None
    baseline_exposure: float = 0.0
    path: Path | None = None

    def __post_init__(self) -> None:
        mosaic = np.asarray(self.mosaic)
        if mosaic.ndim != 2 or mosaic.dtype != np.uint16:
            raise IsplabError(
                f"RawImage.mosaic must be a 2-D uint16 array, got shape {mosaic.shape} dtype {mosaic.dtype}"
            )
        if mosaic.shape[0] % 2 or mosaic.shape[1] % 2:
            h, w = mosaic.shape
            raise IsplabError(f"RawImage.mosaic must have even height and width, got {h}x{w}")
        black = _float_vector(self.black_level, 4, "black_level (R, Gr, Gb, B)")
        white = int(self.white_level)
        if white != self.white_level or not 0 < white <= np.iinfo(np.uint16).max:
            raise IsplabError(f"RawImage.white_level must be an integer in 1..65535, got {self.white_level!r}")
        if np.any(black < 0) or np.any(black >= white):
            raise IsplabError(f"RawImage.black_level must lie in [0, white_level={white}), got {black.tolist()}")
        neutral = _float_vector(self.as_shot_neutral, 3, "as_shot_neutral")
        if np.any(neutral <= 0):
            raise IsplabError(f"RawImage.as_shot_neutral must be positive, got {neutral.tolist()}")
        matrix = self.color_matrix
        if matrix is not None:
            matrix = np.array(matrix, dtype=np.float64)
            if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
                raise IsplabError(f"RawImage.color_matrix must be a finite 3x3 matrix, got shape {matrix.shape}")
        for name in ("exposure_time", "aperture"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise IsplabError(f"RawImage.{name} must be positive or None, got {value!r}")
        if self.iso is not None and (int(self.iso) != self.iso or self.iso <= 0):
            raise IsplabError(f"RawImage.iso must be a positive integer or None, got {self.iso!r}")
        if not np.isfinite(self.baseline_exposure):
            raise IsplabError(f"RawImage.baseline_exposure must be a finite number of EV, got {self.baseline_exposure!r}")

        set_ = object.__setattr__  # frozen dataclass: normalise fields in place once
        set_(self, "mosaic", mosaic)
        set_(self, "cfa_pattern", check_pattern(self.cfa_pattern))
        set_(self, "black_level", black)
        set_(self, "white_level", white)
        set_(self, "as_shot_neutral", neutral / neutral[1])
        set_(self, "color_matrix", matrix)
        set_(self, "iso", None if self.iso is None else int(self.iso))
        set_(self, "baseline_exposure", float(self.baseline_exposure))
        set_(self, "path", None if self.path is None else Path(self.path))

    @property
    def wb_gains(self) -> np.ndarray:
        """``(3,)`` as-shot white-balance gains (R, G, B) = 1 / as_shot_neutral, G = 1."""
        return 1.0 / self.as_shot_neutral

    @property
    def exposure_gain(self) -> float:
        """``2 ** baseline_exposure``: the factor a rendering brightens the linear values by."""
        return float(2.0**self.baseline_exposure)

    @property
    def analogue_gain(self) -> float | None:
        """Sensor gain relative to ISO 100 (``iso / 100``), or ``None`` when ISO is unknown."""
        return None if self.iso is None else self.iso / 100.0


def read_raw(path: str | Path) -> RawImage:
    """Read a Bayer camera raw file.

    Args:
        path: any raw format LibRaw decodes (DNG, CR2, CR3, NEF, ARW, ...).

    Returns:
        The visible-area mosaic and its metadata (see :class:`RawImage`).

    Raises:
        RawReadError: the file is missing, truncated, not a raw file, or not a Bayer raw
            (X-Trans, monochrome, linear/demosaiced DNG, non-RGB CFA).
    """
    path = Path(path)
    if path.is_dir():
        raise RawReadError(f"{path} is a folder: expected a camera raw file such as .dng")
    if not path.is_file():
        raise RawReadError(f"raw file not found: {path} (expected an existing camera raw file such as .dng)")
    try:
        with rawpy.imread(str(path)) as raw:
            pattern, colour_index = _bayer_layout(raw, path)
            mosaic = raw.raw_image_visible
            h, w = mosaic.shape
            # Copy: the array is a view into LibRaw's buffer, freed when the file is closed.
            mosaic = np.array(mosaic[: h - h % 2, : w - w % 2], dtype=np.uint16)
            per_channel = raw.black_level_per_channel  # indexed by LibRaw colour index
            black = np.array([per_channel[colour_index[p]] for p in PLANES], dtype=np.float64)
            white = raw.white_level
            neutral = _neutral_from_multipliers(raw.camera_whitebalance, raw.daylight_whitebalance)
            libraw_matrix = np.array(raw.rgb_xyz_matrix[:3], dtype=np.float64)
            other = raw.other
    except rawpy.LibRawFileUnsupportedError as e:
        raise RawReadError(
            f"{path} is not a raw file LibRaw can read (expected a camera raw such as DNG, CR2, NEF, ARW)"
        ) from e
    except rawpy.LibRawError as e:
        raise RawReadError(
            f"cannot read raw file {path}: {_libraw_message(e)} (the file may be truncated or corrupt)"
        ) from e

    tags = _exif_tags(path)
    matrix = _dng_color_matrix(tags)
    if matrix is None and np.any(libraw_matrix):
        matrix = libraw_matrix  # LibRaw's camera table (Adobe's D65 ColorMatrix for the model)
    iso = _first_positive(_tag_number(tags, _ISO), other.iso_speed)
    return RawImage(
        path=path,
        mosaic=mosaic,
        cfa_pattern=pattern,
        black_level=black,
        white_level=white,
        as_shot_neutral=neutral,
        color_matrix=matrix,
        exposure_time=_first_positive(_tag_number(tags, _EXPOSURE_TIME), other.shutter_speed),
        iso=None if iso is None else round(iso),
        aperture=_first_positive(_tag_number(tags, _F_NUMBER), other.aperture),
        make=_tag_text(tags, _MAKE) or "",
        model=_tag_text(tags, _MODEL) or "",
        unique_camera_model=_tag_text(tags, _UNIQUE_CAMERA_MODEL),
        baseline_exposure=_tag_number(tags, _BASELINE_EXPOSURE) or 0.0,
    )


def _bayer_layout(raw: rawpy.RawPy, path: Path) -> tuple[str, dict[str, int]]:
    """The CFA pattern at the visible area's top-left and LibRaw's colour index of each plane."""
    layout = raw.raw_pattern  # colour indices relative to the visible area; None if not flat
    desc = raw.color_desc.decode("ascii", "replace")
    if layout is None:
        kind = "linear (demosaiced) or multi-sample raw data"
    elif layout.shape == (6, 6):
        kind = "an X-Trans sensor"
    elif layout.shape != (2, 2):
        kind = f"a {layout.shape[0]}x{layout.shape[1]} colour filter array"
    elif raw.num_colors != 3 or desc[:3] != "RGB":
        kind = f"a {desc!r} colour filter array"
    else:
        kind = None
    if kind is None:
        pattern = "".join(desc[i] for i in layout.ravel())
        try:
            pattern = check_pattern(pattern)
        except IsplabError:
            kind = f"CFA pattern {pattern!r}"
    if kind is not None:
        raise RawReadError(f"{path} holds {kind}; expected a Bayer raw with an RGGB, BGGR, GRBG or GBRG pattern")
    return pattern, {p: int(layout[pos]) for p, pos in plane_offsets(pattern).items()}


def _neutral_from_multipliers(as_shot: list[float], daylight: list[float]) -> np.ndarray:
    """AsShotNeutral (G = 1) from LibRaw's R, G, B, G2 multipliers.

    Files without an as-shot white balance report zeros; LibRaw's daylight multipliers are the
    usual fallback, then no white balance at all.
    """
    for multipliers in (as_shot, daylight):
        rgb = np.asarray(multipliers[:3], dtype=np.float64)
        if np.all(rgb > 0):
            return rgb[1] / rgb
    return np.ones(3)


def _exif_tags(path: Path) -> dict[int, object]:
    """TIFF/EXIF tags of IFD0 and the EXIF IFD by tag id (IFD0 wins); empty if none can be read."""
    try:
        with open(path, "rb") as f:
            found = exifread.process_file(f, details=False, extract_thumbnail=False)
    except Exception:  # EXIF is optional metadata: LibRaw has already accepted the file
        return {}
    tags: dict[int, object] = {}
    for ifd in ("Image", "EXIF"):
        for name, tag in found.items():
            if name.split(" ", 1)[0] == ifd and hasattr(tag, "tag"):
                tags.setdefault(tag.tag, tag)
    return tags


def _tag_number(tags: dict[int, object], tag_id: int) -> float | None:
    tag = tags.get(tag_id)
    if tag is None or isinstance(tag.values, (str, bytes)) or not tag.values:
        return None
    return float(Fraction(tag.values[0]))


def _tag_text(tags: dict[int, object], tag_id: int) -> str | None:
    tag = tags.get(tag_id)
    if tag is None:
        return None
    text = tag.values.decode("latin-1") if isinstance(tag.values, bytes) else str(tag.values)
    return text.strip("\x00 ") or None


def _dng_color_matrix(tags: dict[int, object]) -> np.ndarray | None:
    """The DNG ColorMatrix LibRaw would pick: D65, else a daylight-like one, else the last given."""
    matrices = {}
    for matrix_tag, illuminant_tag in _COLOR_MATRICES:
        tag = tags.get(matrix_tag)
        if tag is not None and len(tag.values) == 9:
            illuminant = tags.get(illuminant_tag)
            code = int(illuminant.values[0]) if illuminant is not None else 0
            matrices[code] = np.array([float(Fraction(v)) for v in tag.values]).reshape(3, 3)
    if not matrices:
        return None
    for code in (_D65, *_DAYLIGHT_LIKE):
        if code in matrices:
            return matrices[code]
    return list(matrices.values())[-1]


def _first_positive(*values: float | None) -> float | None:
    return next((float(v) for v in values if v is not None and v > 0), None)


def _float_vector(value, size: int, name: str) -> np.ndarray:
    vector = np.array(value, dtype=np.float64).reshape(-1)
    if vector.shape != (size,) or not np.all(np.isfinite(vector)):
        raise IsplabError(f"RawImage.{name} must be {size} finite numbers, got {value!r}")
    return vector


def _libraw_message(error: Exception) -> str:
    message = error.args[0] if error.args else ""
    return message.decode(errors="replace") if isinstance(message, bytes) else str(message) or type(error).__name__
