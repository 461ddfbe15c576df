"""Synthetic raw data by "unprocessing" sRGB images (Brooks et al., CVPR 2019).

An sRGB image is taken back through the inverse of :func:`isplab.isp.pipeline.render`:
inverse tone curve -> inverse sRGB gamma -> inverse colour matrix (linear sRGB -> camera RGB) ->
inverse brightness and white-balance gains (highlight-safe) -> Bayer mosaic. Shot/read noise is
added afterwards in the normalised raw domain. Every random choice is returned in an
:class:`UnprocessParams` so each sample carries its own ground truth.

The camera is a random convex mix of real cameras' DNG ``ColorMatrix`` (XYZ -> camera, D65
calibration). The illuminant is a colour temperature drawn uniformly in mireds; its camera-RGB
neutral is ``xyz_to_camera @ XYZ(Planckian locus at T)``, so the white-balance gains, the
``AsShotNeutral`` written to a DNG and the ground-truth CCT agree with each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from isplab.isp import bayer
from isplab.isp.color import apply_color_matrix, camera_to_srgb_matrix
from isplab.isp.gamma import srgb_to_linear
from isplab.isp.temperature import cct_to_xy, xy_to_xyz
from isplab.isp.tone import inverse_smoothstep_tone

# DNG ColorMatrix2 (XYZ -> camera, D65) of a few cameras, as published in Adobe's DNG converter
# and LibRaw's colour tables (values / 10000).
CAMERA_XYZ_TO_CAMERA = {
    "Canon EOS 5D Mark II": [[4716, 603, -830], [-7798, 15474, 2480], [-1496, 1937, 6651]],
    "Canon EOS 5D Mark III": [[6722, -635, -963], [-4287, 12460, 2028], [-908, 2162, 5668]],
    "Nikon D700": [[8139, -2171, -663], [-8747, 16541, 2295], [-1925, 2008, 8093]],
    "Sony ILCE-7": [[5271, -712, -347], [-6153, 13653, 2763], [-1601, 2366, 7242]],
}

# Brooks et al.'s noise model: log shot-noise level uniform, read noise log-linearly correlated.
SHOT_NOISE_RANGE = (1e-4, 1.2e-2)
READ_NOISE_SLOPE, READ_NOISE_INTERCEPT, READ_NOISE_STD = 2.18, 1.20, 0.26


@dataclass
class UnprocessParams:
    """Ground truth of one synthetic raw sample (numpy, float64).

    Attributes:
        xyz_to_camera: ``(3, 3)`` XYZ -> camera RGB (what a DNG stores as ColorMatrix1).
        ccm: ``(3, 3)`` white-balanced camera RGB -> linear sRGB.
        illuminant_cct: scene illuminant colour temperature in kelvin.
        as_shot_neutral: ``(3,)`` camera RGB of a white surface under the illuminant, G = 1.
        wb_gains: ``(3,)`` white-balance gains ``1 / as_shot_neutral``.
        brightness_gain: the global gain the raw was divided by (``render`` multiplies it back).
        shot_noise, read_noise: variance model ``var = shot * x + read`` in normalised units.
    """

    xyz_to_camera: np.ndarray
    ccm: np.ndarray
    illuminant_cct: float
    as_shot_neutral: np.ndarray
    wb_gains: np.ndarray
    brightness_gain: float
    shot_noise: float
    read_noise: float

    def to_dict(self) -> dict:
        """JSON-friendly view (arrays as nested lists)."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


def random_xyz_to_camera(rng: np.random.Generator) -> np.ndarray:
    """A random convex combination of :data:`CAMERA_XYZ_TO_CAMERA`, ``(3, 3)``."""
    matrices = np.array(list(CAMERA_XYZ_TO_CAMERA.values()), dtype=np.float64) / 10000.0
    weights = rng.uniform(1e-8, 1.0, size=len(matrices))
    return np.einsum("k,kij->ij", weights / weights.sum(), matrices)


def illuminant_neutral(xyz_to_camera: np.ndarray, cct: float) -> np.ndarray:
    """Camera RGB of a white surface under a Planckian illuminant of ``cct`` K, normalised to G = 1."""
    xy = cct_to_xy(torch.tensor([cct], dtype=torch.float64))
    xyz = xy_to_xyz(xy)[0].numpy()
    neutral = xyz_to_camera @ xyz
    return neutral / neutral[1]


def random_noise_levels(rng: np.random.Generator) -> tuple[float, float]:
    """Shot and read noise levels (variance coefficients) as in Brooks et al. 2019."""
    log_shot = rng.uniform(np.log(SHOT_NOISE_RANGE[0]), np.log(SHOT_NOISE_RANGE[1]))
    log_read = READ_NOISE_SLOPE * log_shot + READ_NOISE_INTERCEPT + rng.normal(0.0, READ_NOISE_STD)
    return float(np.exp(log_shot)), float(np.exp(log_read))


def sample_params(
    rng: np.random.Generator,
    cct_range: tuple[float, float] = (2500.0, 7500.0),
    noise: bool = True,
) -> UnprocessParams:
    """Draw a camera, an illuminant, a brightness gain and noise levels for one sample."""
    xyz_to_camera = random_xyz_to_camera(rng)
    mired = rng.uniform(1e6 / cct_range[1], 1e6 / cct_range[0])
    cct = 1e6 / mired
    neutral = illuminant_neutral(xyz_to_camera, cct)
    ccm = camera_to_srgb_matrix(torch.from_numpy(xyz_to_camera)).numpy()
    shot, read = random_noise_levels(rng)  # always drawn so noise=False keeps the same random stream
    if not noise:
        shot, read = 0.0, 0.0
    return UnprocessParams(
        xyz_to_camera=xyz_to_camera,
        ccm=ccm,
        illuminant_cct=float(cct),
        as_shot_neutral=neutral,
        wb_gains=1.0 / neutral,
        brightness_gain=float(1.0 / np.clip(rng.normal(0.8, 0.1), 0.5, 1.0)),
        shot_noise=shot,
        read_noise=read,
    )


def safe_inverse_gains(rgb: torch.Tensor, gains: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """Divide by white-balance gains, easing the division off for highlights.

    Dividing a near-white pixel by gains > 1 would leave it below saturation in the raw, so the
    rendered image could never clip there as a real camera's would. Above ``threshold`` the
    inverse gain is blended towards 1 (Brooks et al.'s highlight-preserving inversion).

    Args:
        rgb: ``(B, 3, H, W)`` linear camera RGB.
        gains: ``(B, 3)`` white-balance gains.
    """
    grey = rgb.mean(dim=1, keepdim=True)
    mask = ((grey - threshold).clamp(min=0) / (1 - threshold)) ** 2
    inverse = (1.0 / gains)[:, :, None, None]
    return rgb * torch.maximum(mask + (1 - mask) * inverse, inverse)


def unprocess(
    srgb: torch.Tensor,
    ccm: torch.Tensor,
    wb_gains: torch.Tensor,
    brightness_gain: torch.Tensor,
    pattern: str,
    safe_highlights: bool = True,
) -> torch.Tensor:
    """Invert :func:`isplab.isp.pipeline.render` to a normalised linear raw mosaic.

    Args:
        srgb: ``(B, 3, H, W)`` sRGB in [0, 1], H and W even.
        ccm: ``(B, 3, 3)`` camera -> linear sRGB matrices.
        wb_gains: ``(B, 3)`` white-balance gains.
        brightness_gain: ``(B,)`` global gains.
        pattern: CFA pattern of the output mosaic.
        safe_highlights: ease the inverse gains off for highlights (see :func:`safe_inverse_gains`).

    Returns:
        ``(B, 1, H, W)`` mosaic in [0, 1] (0 = black level, 1 = white level).
    """
    linear = srgb_to_linear(inverse_smoothstep_tone(srgb.clamp(0, 1)))
    camera = apply_color_matrix(linear, torch.linalg.inv(ccm)) / brightness_gain[:, None, None, None]
    if safe_highlights:
        camera = safe_inverse_gains(camera, wb_gains)
    else:
        camera = camera / wb_gains[:, :, None, None]
    return bayer.mosaic(camera.clamp(0, 1), pattern).unsqueeze(1)


def add_noise(
    raw: torch.Tensor,
    shot_noise: torch.Tensor,
    read_noise: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add heteroscedastic Gaussian noise, variance ``shot * x + read``.

    Args:
        raw: ``(B, 1, H, W)`` normalised mosaic.
        shot_noise, read_noise: ``(B,)`` variance coefficients.
    """
    variance = raw.clamp(min=0) * shot_noise[:, None, None, None] + read_noise[:, None, None, None]
    noise = torch.randn(raw.shape, generator=generator, dtype=raw.dtype, device=raw.device)
    return raw + noise * variance.sqrt()
