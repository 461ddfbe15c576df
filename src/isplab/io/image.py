"""Read and write ordinary images (PNG, JPEG, TIFF, OpenEXR) as numpy arrays.

Arrays are ``(H, W)`` (grey) or ``(H, W, C)`` with channels in **RGB(A)** order, in the file's
own dtype. The format follows the file extension:

=========  ===========================  ==========================
extension  written dtypes               library
=========  ===========================  ==========================
.png       uint8, uint16                OpenCV
.jpg/.jpeg uint8 (no alpha)             OpenCV
.tif/.tiff uint8, uint16, float32       tifffile
.exr       float32                      OpenEXR (half files read as float32)
=========  ===========================  ==========================

Reading also accepts anything else OpenCV decodes (BMP, WebP, ...). :func:`to_float`,
:func:`to_uint8` and :func:`to_uint16` convert between integer and ``[0, 1]`` float encodings.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import OpenEXR
import tifffile

from isplab.errors import IsplabError

_WRITE_DTYPES = {
    ".png": (np.uint8, np.uint16),
    ".jpg": (np.uint8,),
    ".jpeg": (np.uint8,),
    ".tif": (np.uint8, np.uint16, np.float32),
    ".tiff": (np.uint8, np.uint16, np.float32),
    ".exr": (np.float32,),
}
# OpenEXR groups R, G, B (and A) channels into one array named "RGB" / "RGBA"; grey is "Y".
_EXR_LAYOUTS = {4: "RGBA", 3: "RGB", 1: "Y"}
_INT_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array, RGB(A) channel order, dtype as stored (uint8,
        uint16 or float32; half-float EXR is widened to float32).

    Raises:
        IsplabError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    if path.is_dir():
        raise IsplabError(f"{path} is a folder: expected an image file")
    if not path.is_file():
        raise IsplabError(f"image file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        if suffix == ".exr":
            return _read_exr(path)
        image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except (OSError, ValueError, RuntimeError, tifffile.TiffFileError, cv2.error) as e:
        raise IsplabError(f"cannot read image {path}: {e}") from e
    if image is None:
        raise IsplabError(f"cannot decode image {path}: not a PNG, JPEG or other format OpenCV reads")
    return _swap_red_blue(image)


def write_image(path: str | Path, image: np.ndarray, *, overwrite: bool = False, jpeg_quality: int = 95) -> Path:
    """Write ``image`` to ``path``, the format chosen by the extension (see the module table).

    Args:
        path: destination; its folder must exist.
        image: ``(H, W)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA numpy array.
        overwrite: replace an existing file instead of refusing (as :func:`~isplab.io.write_dng`).
        jpeg_quality: 0..100, JPEG only.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        IsplabError: the file exists and ``overwrite`` is false, unknown extension, unsupported
            shape or dtype for the format, or a write failure.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise IsplabError(f"{path} already exists; pass overwrite=True to replace it")
    suffix = path.suffix.lower()
    if suffix not in _WRITE_DTYPES:
        expected = ", ".join(_WRITE_DTYPES)
        raise IsplabError(f"cannot write {path}: unknown image extension {suffix!r}, expected one of {expected}")
    image = np.asarray(image)
    allowed = _WRITE_DTYPES[suffix]
    if image.dtype not in allowed:
        names = ", ".join(np.dtype(d).name for d in allowed)
        raise IsplabError(f"cannot write {path}: {suffix} takes {names} images, got {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[-1]
    if image.ndim not in (2, 3) or channels not in (1, 3, 4) or (suffix in (".jpg", ".jpeg") and channels == 4):
        raise IsplabError(
            f"cannot write {path}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}"
        )
    if image.ndim == 3 and channels == 1:
        image = image[..., 0]
    try:
        if suffix in (".tif", ".tiff"):
            tifffile.imwrite(path, image, photometric="minisblack" if image.ndim == 2 else "rgb")
        elif suffix == ".exr":
            layout = _EXR_LAYOUTS[1 if image.ndim == 2 else channels]
            header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
            with OpenEXR.File(header, {layout: np.ascontiguousarray(image)}) as exr:
                exr.write(str(path))
        else:
            params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if suffix in (".jpg", ".jpeg") else []
            ok, encoded = cv2.imencode(suffix, _swap_red_blue(image), params)
            if not ok:
                raise IsplabError(f"cannot encode {path} as {suffix}")
            encoded.tofile(path)  # imencode + tofile also handles non-ASCII paths, unlike imwrite
    except (OSError, RuntimeError, cv2.error) as e:
        raise IsplabError(f"cannot write image {path}: {e}") from e
    return path


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in ``[0, 1]`` (divided by 255 or 65535).

    Float input is returned as float32 unchanged (not clipped, so HDR values survive).
    """
    image = np.asarray(image)
    if image.dtype in _INT_MAX:
        return image.astype(np.float32) / np.float32(_INT_MAX[image.dtype])
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    raise IsplabError(f"to_float expects a uint8, uint16 or float image, got {image.dtype}")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Any supported image -> uint8: ``round(clip(to_float(x), 0, 1) * 255)``."""
    return _quantise(image, np.uint8)


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Any supported image -> uint16: ``round(clip(to_float(x), 0, 1) * 65535)``."""
    return _quantise(image, np.uint16)


def _quantise(image: np.ndarray, dtype) -> np.ndarray:
    scale = _INT_MAX[np.dtype(dtype)]
    # float64 so that x*65535 rounds correctly for every float32 input
    scaled = np.clip(to_float(image).astype(np.float64), 0.0, 1.0) * scale
    return np.rint(scaled).astype(dtype)


def _swap_red_blue(image: np.ndarray) -> np.ndarray:
    """BGR(A) <-> RGB(A); grey images pass through. OpenCV stores colour images as BGR."""
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return np.ascontiguousarray(image[..., [2, 1, 0, *range(3, image.shape[-1])]])
    return image


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        image = page.asarray()
        if image.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
            image = np.moveaxis(image, 0, -1)  # planar files store (C, H, W)
    return image


def _read_exr(path: Path) -> np.ndarray:
    with OpenEXR.File(str(path)) as exr:
        channels = exr.channels()
        name = next((n for n in _EXR_LAYOUTS.values() if n in channels), None)
        if name is None and len(channels) == 1:
            name = next(iter(channels))
        if name is None:
            raise IsplabError(
                f"cannot read {path}: expected RGB(A) or single-channel EXR, found channels {sorted(channels)}"
            )
        pixels = channels[name].pixels
    return pixels.astype(np.float32) if pixels.dtype == np.float16 else pixels
