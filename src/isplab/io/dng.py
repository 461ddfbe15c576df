"""Write a :class:`~isplab.io.raw.RawImage` as an uncompressed CFA DNG.

The file is a little-endian IFD0 (plus its Exif IFD) with the mosaic in one uncompressed 16-bit strip (strips,
unlike pidng's default single tile, are valid TIFF for any image size and are what LibRaw reads
bit-exactly). Tags are encoded with pidng's TIFF writer. Metadata written:

* layout: CFARepeatPatternDim 2x2, CFAPattern, CFAPlaneColor RGB, CFALayout rectangular;
* levels: BlackLevelRepeatDim 2x2 with the black level of each tile position, WhiteLevel;
* colour: ColorMatrix1 with CalibrationIlluminant1 D65 (when the frame has a matrix),
  AsShotNeutral;
* exposure: BaselineExposure (tag 50730, SRATIONAL, EV) from ``raw.baseline_exposure`` (always
  written, 0 included);
* capture: ExposureTime, FNumber, ISOSpeedRatings (in the Exif IFD), Make, Model,
  UniqueCameraModel; DNGVersion 1.4, DNGBackwardVersion 1.1.

Reading the file back with :func:`isplab.io.read_raw` (or rawpy) returns the same mosaic bit for
bit, and the same metadata to the precision of TIFF rationals (about 1e-6 relative).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from pidng.defs import CalibrationIlluminant, DNGVersion, PhotometricInterpretation
from pidng.dng import DNG, Tag, Type, dngIFD, dngTag

from isplab.errors import IsplabError
from isplab.io.raw import RawImage
from isplab.isp.bayer import tile_to_planes

_CFA_COLOURS = {"R": 0, "G": 1, "B": 2}  # TIFF/EP CFAPattern colour codes
_INT32_MAX = 2**31 - 1
_MAX_DENOMINATOR = 10**6
_ASCII_TAGS = ((Tag.Make, "make"), (Tag.Model, "model"))
_TIFF_HEADER_SIZE = 8
# pidng's own EXIF_IFD tag (type IFD) cannot be encoded, so the pointer is written as a LONG.
_EXIF_IFD_POINTER = (34665, Type.Long)
_MIN_SIDE = 22  # LibRaw (dcraw) rejects smaller images as "not RAW"


def write_dng(path: str | Path, raw: RawImage, *, overwrite: bool = False) -> Path:
    """Write ``raw`` to ``path`` as a CFA DNG.

    Args:
        path: destination file (conventionally ``.dng``); its folder must exist.
        raw: the frame, at least 22x22 pixels (LibRaw's minimum). Its black levels must be
            whole numbers (DNG readers such as LibRaw keep integer black levels only).
        overwrite: replace an existing file instead of refusing.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        IsplabError: the file exists and ``overwrite`` is false, a value cannot be stored in a
            DNG, or the file cannot be written.
    """
    path = Path(path)
    if not isinstance(raw, RawImage):
        raise IsplabError(f"write_dng({path}) expects a RawImage, got {type(raw).__name__}")
    buffer = _encode(raw, path)
    try:
        with open(path, "wb" if overwrite else "xb") as f:  # "x": refuse atomically if it exists
            f.write(buffer)
    except FileExistsError as e:
        raise IsplabError(f"{path} already exists; pass overwrite=True to replace it") from e
    except OSError as e:
        raise IsplabError(f"cannot write DNG {path}: {e.strerror or e}") from e
    return path


def _encode(raw: RawImage, path: Path) -> bytearray:
    height, width = raw.mosaic.shape
    if min(height, width) < _MIN_SIDE:
        raise IsplabError(
            f"cannot write {path}: a {height}x{width} mosaic is smaller than {_MIN_SIDE}x{_MIN_SIDE}, "
            "the smallest image LibRaw/rawpy will read back"
        )
    black = raw.black_level
    if not np.array_equal(black, np.round(black)):
        raise IsplabError(f"cannot write {path}: black levels must be whole numbers for DNG, got {black.tolist()}")
    pixels = raw.mosaic.astype("<u2", copy=False).tobytes()  # TIFF header below is little-endian

    ifd = dngIFD()
    strip_offsets = dngTag(Tag.StripOffsets, [0])  # filled in once the layout is known
    tags = [
        strip_offsets,
        dngTag(Tag.NewSubfileType, [0]),
        dngTag(Tag.ImageWidth, [width]),
        dngTag(Tag.ImageLength, [height]),
        dngTag(Tag.BitsPerSample, [16]),
        dngTag(Tag.Compression, [1]),
        dngTag(Tag.PhotometricInterpretation, [PhotometricInterpretation.Color_Filter_Array]),
        dngTag(Tag.Orientation, [1]),
        dngTag(Tag.SamplesPerPixel, [1]),
        dngTag(Tag.RowsPerStrip, [height]),
        dngTag(Tag.StripByteCounts, [len(pixels)]),
        dngTag(Tag.PlanarConfiguration, [1]),
        dngTag(Tag.Software, "isplab"),
        dngTag(Tag.DNGVersion, DNGVersion.V1_4),
        dngTag(Tag.DNGBackwardVersion, DNGVersion.V1_1),
        dngTag(Tag.UniqueCameraModel, _ascii(_unique_model(raw), path, "unique_camera_model")),
        dngTag(Tag.CFARepeatPatternDim, [2, 2]),
        dngTag(Tag.CFAPattern, [_CFA_COLOURS[c] for c in raw.cfa_pattern]),
        dngTag(Tag.CFAPlaneColor, [0, 1, 2]),
        dngTag(Tag.CFALayout, [1]),
        dngTag(Tag.BlackLevelRepeatDim, [2, 2]),
        dngTag(Tag.BlackLevel, [int(black[i]) for i in tile_to_planes(raw.cfa_pattern)]),
        dngTag(Tag.WhiteLevel, [raw.white_level]),
        dngTag(Tag.AsShotNeutral, [_rational(v, path, "as_shot_neutral") for v in raw.as_shot_neutral]),
        dngTag(Tag.BaselineExposure, [_rational(raw.baseline_exposure, path, "baseline_exposure", signed=True)]),
    ]
    if raw.color_matrix is not None:
        matrix = [_rational(v, path, "color_matrix", signed=True) for v in raw.color_matrix.ravel()]
        tags += [
            dngTag(Tag.ColorMatrix1, matrix),
            dngTag(Tag.CalibrationIlluminant1, [CalibrationIlluminant.D65]),
        ]
    # Capture settings live in an Exif IFD, where EXIF readers (LibRaw's included) look for them.
    exif = dngIFD()
    exif.tags = [dngTag(Tag.ExifVersion, list(b"0230"))]
    if raw.exposure_time is not None:
        exif.tags.append(dngTag(Tag.ExposureTime, [_rational(raw.exposure_time, path, "exposure_time")]))
    if raw.aperture is not None:
        exif.tags.append(dngTag(Tag.FNumber, [_rational(raw.aperture, path, "aperture")]))
    if raw.iso is not None:
        if raw.iso > 65535:
            raise IsplabError(f"cannot write {path}: ISO {raw.iso} exceeds the EXIF maximum 65535")
        exif.tags.append(dngTag(Tag.PhotographicSensitivity, [raw.iso]))
    exif_pointer = dngTag(_EXIF_IFD_POINTER, [0])  # filled in once the layout is known
    tags.append(exif_pointer)
    for tag, field in _ASCII_TAGS:
        text = getattr(raw, field)
        if text:
            tags.append(dngTag(tag, _ascii(text, path, field)))
    ifd.tags = tags

    dng = DNG()
    dng.IFDs += [ifd, exif]  # laid out back to back after the header; only IFD0 is chained
    dng.ImageDataStrips.append(pixels)
    size = dng.dataLen()  # also assigns the strip's offset
    strip_offsets.setValue([dng.StripOffsets[0]])
    exif_pointer.setValue([_TIFF_HEADER_SIZE + ifd.dataLen()])
    buffer = bytearray(size)
    dng.setBuffer(buffer)
    dng.write()
    return buffer


def _rational(value: float, path: Path, name: str, *, signed: bool = False) -> tuple[int, int]:
    """Nearest fraction whose numerator and denominator fit a TIFF (S)RATIONAL."""
    value = float(value)
    limit = _INT32_MAX if signed else 2 * _INT32_MAX + 1
    if not np.isfinite(value) or abs(value) > limit or (value < 0 and not signed):
        raise IsplabError(f"cannot write {path}: {name} value {value!r} does not fit a DNG rational")
    max_denominator = max(1, min(_MAX_DENOMINATOR, int(limit // max(abs(value), 1.0))))
    fraction = Fraction(value).limit_denominator(max_denominator)
    return fraction.numerator, fraction.denominator


def _unique_model(raw: RawImage) -> str:
    """DNG requires UniqueCameraModel: fall back to "make model", then to "isplab"."""
    return raw.unique_camera_model or f"{raw.make} {raw.model}".strip() or "isplab"


def _ascii(text: str, path: Path, name: str) -> str:
    if not text.isascii():
        raise IsplabError(f"cannot write {path}: {name} {text!r} must be ASCII for a DNG tag")
    return text
