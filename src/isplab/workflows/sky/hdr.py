"""Sky images in, network inputs out: reading HDR/LDR files and the seed's log encoding of HDR.

:func:`read_sky_image` reads any of

=====================  ====================================  ======
extension              library                               kind
=====================  ====================================  ======
.exr                   OpenEXR (``isplab.io.image``)         HDR
.hdr (Radiance RGBE)   OpenCV                                HDR
.tif/.tiff float       tifffile                              HDR
.tif/.tiff 8/16-bit    tifffile                              LDR
.npy float / integer   numpy                                 HDR / LDR
.png, .jpg, .jpeg      OpenCV                                LDR
=====================  ====================================  ======

as ``(H, W, 3)`` float32 RGB (grey is repeated, alpha dropped). LDR integer images are scaled to
[0, 1] (divided by 255 or 65535). HDR values must be finite and non-negative; a file with NaN,
Inf or negative values is refused with one line naming it.

HDR images are fed to the network through the seed's log transform (:func:`log_encode`, exact
inverse :func:`log_decode`) with the parameters of :class:`LogEncoding`::

    x' = x * input_mul + log_epsilon
    y  = (f(x') + output_bias) * output_scale
    f(x') = log(x')                                   (log_split_around1 false)
    f(x') = log(x') if x' < 1 else x'^(1/log_pow) - 1   (log_split_around1 true)

LDR images go in as they are, in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from isplab.errors import IsplabError
from isplab.io.image import read_image

HDR_SUFFIXES = (".exr", ".hdr")
IMAGE_SUFFIXES = (".exr", ".hdr", ".tif", ".tiff", ".npy", ".png", ".jpg", ".jpeg")
_INT_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass(frozen=True)
class LogEncoding:
    """The seed's ``transform_cfg`` (defaults are the seed's values)."""

    input_mul: float = 1.0
    log_epsilon: float = 1e-3
    log_split_around1: bool = False
    log_pow: float = 7.5
    output_bias: float = 2.5
    output_scale: float = 1 / 2.2 / 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> LogEncoding:
        try:
            return cls(**(values or {}))
        except TypeError as e:
            raise IsplabError(f"bad HDR encoding parameters {values!r}: {e}") from None


def log_encode(x: np.ndarray, enc: LogEncoding = LogEncoding()) -> np.ndarray:
    """Linear HDR (>= 0) -> network input, the seed's ``log_transform``; float32 out."""
    x = np.asarray(x, dtype=np.float64)
    if enc.input_mul != 1.0:
        x = x * enc.input_mul
    x = x + enc.log_epsilon
    if enc.log_split_around1:
        below = x < 1.0
        y = np.empty_like(x)
        y[below] = np.log(x[below])
        y[~below] = np.power(x[~below], 1.0 / enc.log_pow) - 1.0
    else:
        y = np.log(x)
    return ((y + enc.output_bias) * enc.output_scale).astype(np.float32)


def log_decode(y: np.ndarray, enc: LogEncoding = LogEncoding()) -> np.ndarray:
    """Exact inverse of :func:`log_encode` (the seed's ``invert_log_transform``); float64 out."""
    y = np.asarray(y, dtype=np.float64) / enc.output_scale - enc.output_bias
    if enc.log_split_around1:
        below = y < 0.0
        x = np.empty_like(y)
        x[below] = np.exp(y[below])
        x[~below] = np.power(y[~below] + 1.0, enc.log_pow)
    else:
        x = np.exp(y)
    x = x - enc.log_epsilon
    if enc.input_mul != 1.0:
        x = x / enc.input_mul
    return x


@dataclass
class SkyImage:
    """An image as read: ``pixels`` ``(H, W, 3)`` float32 RGB; ``hdr`` true for linear HDR data."""

    pixels: np.ndarray
    hdr: bool
    path: Path


def read_sky_image(path: str | Path) -> SkyImage:
    """Read an image file for sky segmentation (see the module table).

    Raises:
        IsplabError: missing or unreadable file, unknown extension, an unsupported shape or
            dtype, or an HDR image with NaN, Inf or negative values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise IsplabError(f"cannot read {path}: unknown image extension {suffix!r}, expected one of {', '.join(IMAGE_SUFFIXES)}")
    if not path.is_file():
        raise IsplabError(f"image file not found: {path}")
    if suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise IsplabError(f"cannot read {path}: not a numpy .npy array ({e})") from None
    elif suffix == ".hdr":
        data = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
        if data is None:
            raise IsplabError(f"cannot read {path}: not a Radiance RGBE (.hdr) image")
        data = data[..., ::-1]
    else:
        data = read_image(path)  # EXR, TIFF, PNG, JPEG; IsplabError naming the file when unreadable
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[2] in (2, 4):
        data = data[..., : data.shape[2] - 1]  # drop alpha
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, axis=2)
    if data.ndim != 3 or data.shape[2] != 3:
        raise IsplabError(f"cannot use {path}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {data.shape}")
    if data.dtype in _INT_MAX:
        return SkyImage(np.ascontiguousarray(data, dtype=np.float32) / np.float32(_INT_MAX[data.dtype]), False, path)
    if not np.issubdtype(data.dtype, np.floating):
        raise IsplabError(f"cannot use {path}: expected uint8, uint16 or float pixels, got {data.dtype}")
    pixels = np.ascontiguousarray(data, dtype=np.float32)
    check_hdr(pixels, path)
    return SkyImage(pixels, True, path)


def check_hdr(pixels: np.ndarray, path: str | Path) -> None:
    """Refuse NaN, Inf or negative values in an HDR image, naming the file and the count."""
    bad_nan = int(np.isnan(pixels).sum())
    bad_inf = int(np.isinf(pixels).sum())
    bad_neg = int((pixels < 0).sum())
    if bad_nan or bad_inf or bad_neg:
        found = ", ".join(f"{n} {what}" for n, what in ((bad_nan, "NaN"), (bad_inf, "Inf"), (bad_neg, "negative")) if n)
        raise IsplabError(f"{path}: HDR image has {found} values; expected finite values >= 0")


def log_encode_torch(x, enc: LogEncoding = LogEncoding()):
    """:func:`log_encode` on a torch tensor, in its own dtype and on its own device (prediction
    encodes tiles where the network runs); equals :func:`log_encode` within float32 rounding."""
    import torch

    if enc.input_mul != 1.0:
        x = x * enc.input_mul
    x = x + enc.log_epsilon
    if enc.log_split_around1:
        y = torch.where(x < 1.0, torch.log(x), torch.pow(x, 1.0 / enc.log_pow) - 1.0)
    else:
        y = torch.log(x)
    return (y + enc.output_bias) * enc.output_scale


def network_input(pixels: np.ndarray, hdr: bool, enc: LogEncoding = LogEncoding()) -> np.ndarray:
    """``(H, W, 3)`` pixels -> the network's ``(H, W, 3)`` float32 input: log-encoded HDR or LDR in [0, 1]."""
    return log_encode(pixels, enc) if hdr else np.asarray(pixels, dtype=np.float32)


def tone_map(pixels: np.ndarray, hdr: bool) -> np.ndarray:
    """A displayable ``(H, W, 3)`` uint8 sRGB-ish preview: HDR is scaled so its median is 0.18,
    Reinhard-compressed ``x / (1 + x)`` and gamma 1/2.2; LDR is clipped to [0, 1]."""
    x = np.asarray(pixels, dtype=np.float32)
    if hdr:
        median = float(np.median(x[::max(1, x.shape[0] // 256), ::max(1, x.shape[1] // 256)]))
        x = x * (0.18 / max(median, 1e-6))
        x = np.power(x / (1.0 + x), 1 / 2.2)
    return np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
