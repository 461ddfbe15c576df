"""File I/O: camera raw reading, DNG writing and ordinary image files."""

from __future__ import annotations

from isplab.io.dng import write_dng
from isplab.io.image import read_image, to_float, to_uint8, to_uint16, write_image
from isplab.io.raw import RawImage, read_raw

__all__ = [
    "RawImage",
    "read_raw",
    "write_dng",
    "read_image",
    "write_image",
    "to_float",
    "to_uint8",
    "to_uint16",
]
