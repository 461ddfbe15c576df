"""Differentiable ISP operations on batched ``(B, C, H, W)`` torch tensors (any device, float32/64).

One concept per module: :mod:`~isplab.isp.bayer` (CFA layout), :mod:`~isplab.isp.levels`,
:mod:`~isplab.isp.white_balance`, :mod:`~isplab.isp.demosaic`, :mod:`~isplab.isp.color`,
:mod:`~isplab.isp.gamma`, :mod:`~isplab.isp.tone`, :mod:`~isplab.isp.resize`,
:mod:`~isplab.isp.temperature` and :mod:`~isplab.isp.pipeline` (a classical pipeline built from them).
"""

from isplab.isp.bayer import (
    PATTERNS,
    PLANES,
    channel_index,
    check_pattern,
    mosaic,
    pack,
    plane_offsets,
    tile_to_planes,
    to_half_rgb,
    unpack,
)
from isplab.isp.color import (
    LINEAR_SRGB_TO_XYZ,
    XYZ_TO_LINEAR_SRGB,
    apply_color_matrix,
    camera_to_srgb_matrix,
    camera_to_xyz_matrix,
)
from isplab.isp.demosaic import demosaic, demosaic_bilinear, demosaic_malvar
from isplab.isp.gamma import linear_to_srgb, srgb_to_linear
from isplab.isp.levels import denormalize_mosaic, denormalize_planes, normalize_mosaic, normalize_planes
from isplab.isp.pipeline import ClassicalISP, render
from isplab.isp.resize import fit_size, resize, resize_keep_aspect
from isplab.isp.temperature import (
    cct_to_mired,
    cct_to_xy,
    mired_difference,
    mired_to_cct,
    xy_to_cct,
    xy_to_xyz,
)
from isplab.isp.tone import apply_exposure, apply_tone_curve, inverse_smoothstep_tone, smoothstep_tone
from isplab.isp.white_balance import apply_wb, apply_wb_mosaic, apply_wb_planes, gains_from_neutral

__all__ = [
    "LINEAR_SRGB_TO_XYZ",
    "PATTERNS",
    "PLANES",
    "XYZ_TO_LINEAR_SRGB",
    "ClassicalISP",
    "apply_color_matrix",
    "apply_exposure",
    "apply_tone_curve",
    "apply_wb",
    "apply_wb_mosaic",
    "apply_wb_planes",
    "camera_to_srgb_matrix",
    "camera_to_xyz_matrix",
    "cct_to_mired",
    "cct_to_xy",
    "channel_index",
    "check_pattern",
    "demosaic",
    "demosaic_bilinear",
    "demosaic_malvar",
    "denormalize_mosaic",
    "denormalize_planes",
    "fit_size",
    "gains_from_neutral",
    "inverse_smoothstep_tone",
    "linear_to_srgb",
    "mired_difference",
    "mired_to_cct",
    "mosaic",
    "normalize_mosaic",
    "normalize_planes",
    "pack",
    "plane_offsets",
    "render",
    "resize",
    "resize_keep_aspect",
    "smoothstep_tone",
    "srgb_to_linear",
    "tile_to_planes",
    "to_half_rgb",
    "unpack",
    "xy_to_cct",
    "xy_to_xyz",
]
