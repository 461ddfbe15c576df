"""Colour-space matrices: linear sRGB <-> CIE XYZ (D65) and camera colour correction.

The sRGB matrices are IEC 61966-2-1's published 4-decimal RGB->XYZ matrix and its exact inverse
(which rounds to the standard's published XYZ->RGB matrix), so converting there and back is exact.
Camera matrices follow dcraw/LibRaw: ``xyz_to_camera`` is a DNG ``ColorMatrix`` /
LibRaw ``rgb_xyz_matrix`` (XYZ -> camera RGB, D65).
"""

from __future__ import annotations

import torch

from isplab.errors import IsplabError
from isplab.isp._params import as_float_tensor, check_image, per_sample

#: Linear sRGB -> CIE XYZ (D65, Y of white = 1), IEC 61966-2-1. float64; do not modify in place.
LINEAR_SRGB_TO_XYZ = torch.tensor(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=torch.float64
)
#: CIE XYZ (D65) -> linear sRGB, the exact inverse of :data:`LINEAR_SRGB_TO_XYZ`.
XYZ_TO_LINEAR_SRGB = torch.linalg.inv(LINEAR_SRGB_TO_XYZ)


def apply_color_matrix(rgb: torch.Tensor, m) -> torch.Tensor:
    """Apply a 3x3 colour matrix to every pixel: ``out[c] = sum_k m[c, k] * rgb[k]``.

    Args:
        rgb: ``(B, 3, H, W)``.
        m: ``(3, 3)`` or ``(B, 3, 3)``, rows = output channels.

    Returns:
        ``(B, 3, H, W)``.
    """
    check_image(rgb, 3, "rgb")
    matrix = per_sample(m, rgb, (3, 3), "color matrix")
    return torch.einsum("bck,bkhw->bchw", matrix.expand(rgb.shape[0], 3, 3), rgb)


def _as_matrix(xyz_to_camera) -> torch.Tensor:
    matrix = as_float_tensor(xyz_to_camera)
    if matrix.ndim not in (2, 3) or matrix.shape[-2:] != (3, 3):
        raise IsplabError(f"xyz_to_camera must have shape (3, 3) or (B, 3, 3), got {tuple(matrix.shape)}")
    return matrix


def camera_to_srgb_matrix(xyz_to_camera) -> torch.Tensor:
    """Camera RGB -> linear sRGB matrix, computed as dcraw/LibRaw do (``rgb_cam``).

    ``cam_rgb = xyz_to_camera @ LINEAR_SRGB_TO_XYZ`` with each row scaled to sum to 1 (so that
    white-balanced camera white (1, 1, 1) maps to sRGB white), then inverted. Apply it to camera RGB
    *after* white balance.

    Args:
        xyz_to_camera: ``(3, 3)`` or ``(B, 3, 3)`` XYZ -> camera matrix (array or tensor).

    Returns:
        Same shape; a float tensor keeps its dtype, anything else becomes float64. Differentiable.
    """
    matrix = _as_matrix(xyz_to_camera)
    cam_rgb = matrix @ LINEAR_SRGB_TO_XYZ.to(matrix)
    cam_rgb = cam_rgb / cam_rgb.sum(dim=-1, keepdim=True)
    return torch.linalg.inv(cam_rgb)


def camera_to_xyz_matrix(xyz_to_camera) -> torch.Tensor:
    """White-balanced camera RGB -> XYZ (D65): ``LINEAR_SRGB_TO_XYZ @ camera_to_srgb_matrix(...)``.

    Uses the same row normalisation as :func:`camera_to_srgb_matrix`, so camera white (1, 1, 1)
    maps to the D65 white point.
    """
    to_srgb = camera_to_srgb_matrix(xyz_to_camera)
    return LINEAR_SRGB_TO_XYZ.to(to_srgb) @ to_srgb
