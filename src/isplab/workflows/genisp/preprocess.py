"""GenISP's input: a raw frame as a float camera-XYZ image, resized keeping its aspect ratio.

:func:`raw_to_xyz` does, in this order:

1. pack the mosaic into R, Gr, Gb, B planes by the **file's own** CFA pattern
   (:func:`isplab.isp.bayer.pack`);
2. subtract each plane's black level and divide by ``white_level - black_level`` (the sensor's
   white level, never the image's maximum), so 0 is black and 1 is saturation; values are not
   clipped (read noise below black stays negative, so dark regions keep an unbiased mean);
3. average the two greens: camera RGB ``(R, (Gr + Gb) / 2, B)`` at half resolution;
4. camera RGB -> CIE XYZ with the **inverse** of the file's colour matrix. A DNG ``ColorMatrix`` /
   rawpy ``rgb_xyz_matrix`` maps XYZ to camera RGB (:class:`isplab.io.raw.RawImage`), so
   ``xyz = inv(color_matrix) @ camera_rgb``. (Not :func:`isplab.isp.color.camera_to_xyz_matrix`:
   that one expects *white-balanced* camera RGB; GenISP's own ConvWB does the white balance.)

Everything stays float32 (no 8-bit step anywhere). :func:`resize_keep_aspect` follows
keras-retinanet's ``resize_image`` (shorter side to ``short`` unless the longer side would exceed
``long``), area-averaging when shrinking and bilinear when enlarging.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from isplab.errors import IsplabError
from isplab.io.raw import RawImage, read_raw
from isplab.isp import bayer

SHORT_SIDE = 800
LONG_SIDE = 1333

__all__ = ["LONG_SIDE", "SHORT_SIDE", "camera_to_xyz", "load_raw_xyz", "load_raw_xyz_sized", "raw_to_xyz", "resize_keep_aspect", "resize_scale"]


def camera_to_xyz(raw: RawImage) -> np.ndarray:
    """``(3, 3)`` float64 camera RGB -> XYZ: the inverse of ``raw.color_matrix``.

    Raises:
        IsplabError: the raw has no colour matrix, or a singular one (naming the file).
    """
    name = raw.path if raw.path is not None else "the raw frame"
    if raw.color_matrix is None:
        raise IsplabError(
            f"{name} has no colour matrix (no DNG ColorMatrix and LibRaw does not know the camera): "
            "GenISP needs the camera -> XYZ transform; expected a raw with a colour matrix"
        )
    matrix = np.asarray(raw.color_matrix, dtype=np.float64)
    if abs(np.linalg.det(matrix)) < 1e-12:
        raise IsplabError(f"{name} has a singular colour matrix {matrix.tolist()}: expected an invertible XYZ -> camera matrix")
    return np.linalg.inv(matrix)


def _packed_rgb(raw: RawImage) -> np.ndarray:
    """``(H/2, W/2, 3)`` float32 normalised camera RGB (steps 1-3)."""
    planes = bayer.pack(raw.mosaic, raw.cfa_pattern).astype(np.float32)  # (4, h, w) R, Gr, Gb, B
    black = raw.black_level.astype(np.float32)[:, None, None]
    planes = (planes - black) / (np.float32(raw.white_level) - black)
    r, gr, gb, b = planes
    return np.stack([r, (gr + gb) * np.float32(0.5), b], axis=-1)


def _apply_matrix(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return (rgb @ matrix.T.astype(np.float32)).astype(np.float32, copy=False)


def raw_to_xyz(raw: RawImage) -> np.ndarray:
    """A raw frame as GenISP's input at half resolution (see the module docstring).

    Returns:
        ``(H/2, W/2, 3)`` float32 CIE XYZ, 0 = black, camera saturation around 1.

    Raises:
        IsplabError: the raw has no (or a singular) colour matrix.
    """
    to_xyz = camera_to_xyz(raw)  # checked first: refuse before any work
    return _apply_matrix(_packed_rgb(raw), to_xyz)


def resize_scale(height: int, width: int, short: int = SHORT_SIDE, long: int = LONG_SIDE) -> float:
    """keras-retinanet's scale: ``short / min(h, w)``, or ``long / max(h, w)`` when that is smaller."""
    if short < 1 or long < short:
        raise IsplabError(f"bad resize sides short={short}, long={long}: expected 1 <= short <= long")
    scale = short / min(height, width)
    if max(height, width) * scale > long:
        scale = long / max(height, width)
    return scale


def resize_keep_aspect(img: np.ndarray, short: int = SHORT_SIDE, long: int = LONG_SIDE) -> tuple[np.ndarray, float]:
    """Resize ``(H, W, C)`` float so the shorter side is ``short`` and the longer at most ``long``.

    Returns:
        ``(resized float32 image, scale)`` where ``scale`` is the factor applied
        (:func:`resize_scale`); the output size is ``round(H * scale) x round(W * scale)``.
    """
    img = np.asarray(img)
    if img.ndim != 3:
        raise IsplabError(f"resize_keep_aspect expects an (H, W, C) image, got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise IsplabError(f"resize_keep_aspect expects a float image (GenISP keeps float data), got {img.dtype}")
    h, w = img.shape[:2]
    scale = resize_scale(h, w, short, long)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    img = img.astype(np.float32, copy=False)
    if (out_h, out_w) == (h, w):
        return img.copy(), scale
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.resize(img, (out_w, out_h), interpolation=interpolation)
    if out.ndim == 2:  # OpenCV drops a single channel
        out = out[..., None]
    return out.astype(np.float32, copy=False), scale


def load_raw_xyz(path: str | Path, short: int = SHORT_SIDE, long: int = LONG_SIDE) -> tuple[np.ndarray, float]:
    """Read a raw file (any format rawpy reads, and DNG) as GenISP's resized XYZ input.

    Returns:
        ``(image, scale)``: ``(h, w, 3)`` float32 XYZ, and the output pixels per **sensor** pixel
        (half the resize factor, since packing halves the size): a box in the mosaic's pixel
        coordinates times ``scale`` is the box in the returned image.

    Raises:
        IsplabError: unreadable file or no colour matrix (naming the file).
    """
    image, scale, _ = load_raw_xyz_sized(path, short, long)
    return image, scale


def load_raw_xyz_sized(
    path: str | Path, short: int = SHORT_SIDE, long: int = LONG_SIDE
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """:func:`load_raw_xyz` plus the mosaic's ``(height, width)`` in sensor pixels."""
    raw = read_raw(path)
    to_xyz = camera_to_xyz(raw)
    rgb, scale = resize_keep_aspect(_packed_rgb(raw), short, long)  # resize first: linear, cheaper
    return _apply_matrix(rgb, to_xyz), scale / 2.0, (int(raw.mosaic.shape[0]), int(raw.mosaic.shape[1]))
