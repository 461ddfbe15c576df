"""Synthetic raw data by "unprocessing" sRGB images (Brooks et al., CVPR 2019).

An sRGB image is taken back through the inverse of :func:`isplab.isp.pipeline.render`:
inverse tone curve -> inverse sRGB gamma -> inverse colour matrix (linear sRGB -> camera RGB) ->
inverse brightness and white-balance gains (highlight-safe) -> Bayer mosaic. Shot/read noise is
added afterwards in the normalised raw domain. Every random choice is returned in an
:class:`UnprocessParams` so each sample carries its own ground truth.

The camera is either a random convex mix of the four legacy cameras of
:data:`CAMERA_XYZ_TO_CAMERA` (``camera_split=None``, the original behaviour) or drawn from one
split of the real cameras in :mod:`isplab.data.cameras` (``"train"``: a convex mix of two training
cameras; ``"val"``/``"test"``: one held-out camera as it is). The illuminant is a colour
temperature drawn uniformly in mireds; its camera-RGB neutral is ``xyz_to_camera @ XYZ(Planckian
locus at T)``, so the white-balance gains, the ``AsShotNeutral`` written to a DNG and the
ground-truth CCT agree with each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from isplab.data.cameras import camera_split as cameras_of_split
from isplab.data.cameras import xyz_to_camera
from isplab.errors import IsplabError
from isplab.isp import bayer
from isplab.isp.color import apply_color_matrix, camera_to_srgb_matrix
from isplab.isp.gamma import linear_to_srgb, srgb_to_linear
from isplab.isp.temperature import cct_to_xy, xy_to_xyz
from isplab.isp.tone import inverse_smoothstep_tone, smoothstep_tone

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
#: shot-noise variance coefficient at ISO 100; it grows in proportion to ISO (the analogue gain)
BASE_SHOT_NOISE = 1e-4
#: ISO range of :func:`sample_params` with a camera split (log-uniform), Brooks et al.'s shot range
ISO_RANGE = (100.0, 12000.0)
#: exposure error range in stops (log2 of the factor the scene is brightened by before the sensor clips)
EXPOSURE_EV_RANGE = (-1.0, 0.5)


@dataclass
class UnprocessParams:
    """Ground truth of one synthetic raw sample (numpy, float64).

    Attributes:
        xyz_to_camera: ``(3, 3)`` XYZ -> camera RGB (what a DNG stores as ColorMatrix1).
        ccm: ``(3, 3)`` white-balanced camera RGB -> linear sRGB.
        illuminant_cct: scene illuminant colour temperature in kelvin.
        as_shot_neutral: ``(3,)`` camera RGB of a white surface under the illuminant, G = 1.
        wb_gains: ``(3,)`` white-balance gains ``1 / as_shot_neutral``.
        brightness_gain: the global gain the raw was divided by (``render`` multiplies it back),
            exposure error included.
        shot_noise, read_noise: variance model ``var = shot * x + read`` in normalised units.
        camera: the camera (or mix of two) the matrix is from.
        exposure_ev: exposure error in stops (0 in the legacy recipe).
        iso: the ISO the noise levels were calibrated for (``None`` in the legacy recipe).
    """

    xyz_to_camera: np.ndarray
    ccm: np.ndarray
    illuminant_cct: float
    as_shot_neutral: np.ndarray
    wb_gains: np.ndarray
    brightness_gain: float
    shot_noise: float
    read_noise: float
    camera: str = "legacy mix"
    exposure_ev: float = 0.0
    iso: float | None = None

    def to_dict(self) -> dict:
        """JSON-friendly view (arrays as nested lists)."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


def random_xyz_to_camera(rng: np.random.Generator) -> np.ndarray:
    """A random convex combination of :data:`CAMERA_XYZ_TO_CAMERA`, ``(3, 3)``."""
    matrices = np.array(list(CAMERA_XYZ_TO_CAMERA.values()), dtype=np.float64) / 10000.0
    weights = rng.uniform(1e-8, 1.0, size=len(matrices))
    return np.einsum("k,kij->ij", weights / weights.sum(), matrices)


def sample_camera(rng: np.random.Generator, split: str) -> tuple[str, np.ndarray]:
    """A camera of :func:`isplab.data.cameras.camera_split` ``split``: ``(name, xyz_to_camera (3, 3))``.

    ``"train"`` (and ``"all"``) mixes two different cameras of the split with a uniform weight, so
    training sees the real matrices and what lies between them; ``"val"`` and ``"test"`` give one
    real held-out camera unchanged.
    """
    names = cameras_of_split(split)
    if split in ("val", "test"):
        name = names[int(rng.integers(len(names)))]
        return name, xyz_to_camera(name)
    first, second = rng.choice(len(names), size=2, replace=False)
    weight = float(rng.uniform(0.0, 1.0))
    matrix = weight * xyz_to_camera(names[first]) + (1.0 - weight) * xyz_to_camera(names[second])
    return f"{names[first]} x {weight:.2f} + {names[second]} x {1 - weight:.2f}", matrix


def noise_levels_for_iso(iso: float, rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Shot and read noise (variance coefficients) of a sensor at ``iso``, Brooks et al.'s model.

    The shot-noise coefficient is proportional to the gain: ``BASE_SHOT_NOISE * iso / 100``; the read
    noise follows the log-linear relation ``log read = 2.18 log shot + 1.20`` plus, with ``rng``, a
    Gaussian scatter of 0.26 in the log (Brooks et al.'s fit to real sensors).
    """
    if not iso > 0:
        raise IsplabError(f"ISO must be positive, got {iso}")
    log_shot = float(np.log(BASE_SHOT_NOISE * iso / 100.0))
    scatter = rng.normal(0.0, READ_NOISE_STD) if rng is not None else 0.0
    log_read = READ_NOISE_SLOPE * log_shot + READ_NOISE_INTERCEPT + scatter
    return float(np.exp(log_shot)), float(np.exp(log_read))


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
    camera_split: str | None = None,
) -> UnprocessParams:
    """Draw a camera, an illuminant, a brightness gain and noise levels for one sample.

    With ``camera_split=None`` the original recipe (legacy camera mix, Brooks et al.'s noise range,
    no exposure error) and random stream. With a split of :mod:`isplab.data.cameras` the camera is
    a real one of that split (:func:`sample_camera`), the ISO is log-uniform in :data:`ISO_RANGE`
    with noise from :func:`noise_levels_for_iso`, and the exposure is off by ``exposure_ev`` stops,
    uniform in :data:`EXPOSURE_EV_RANGE`: the brightness gain is divided by ``2 ** exposure_ev``, so
    the raw is that much brighter (positive: more highlights clip at the sensor's saturation) and
    ``render`` with the recorded gain still gives the scene back where nothing clipped.
    """
    if camera_split is None:
        name, matrix = "legacy mix", random_xyz_to_camera(rng)
    else:
        name, matrix = sample_camera(rng, camera_split)
    mired = rng.uniform(1e6 / cct_range[1], 1e6 / cct_range[0])
    cct = 1e6 / mired
    neutral = illuminant_neutral(matrix, cct)
    ccm = camera_to_srgb_matrix(torch.from_numpy(matrix)).numpy()
    iso, ev = None, 0.0
    if camera_split is None:
        shot, read = random_noise_levels(rng)  # always drawn so noise=False keeps the same random stream
    else:
        iso = float(np.exp(rng.uniform(np.log(ISO_RANGE[0]), np.log(ISO_RANGE[1]))))
        shot, read = noise_levels_for_iso(iso, rng)
        ev = float(rng.uniform(*EXPOSURE_EV_RANGE))
    if not noise:
        shot, read = 0.0, 0.0
    brightness = float(1.0 / np.clip(rng.normal(0.8, 0.1), 0.5, 1.0)) / 2.0**ev
    return UnprocessParams(
        xyz_to_camera=matrix,
        ccm=ccm,
        illuminant_cct=float(cct),
        as_shot_neutral=neutral,
        wb_gains=1.0 / neutral,
        brightness_gain=brightness,
        shot_noise=shot,
        read_noise=read,
        camera=name,
        exposure_ev=ev,
        iso=iso,
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


def unprocess_rgb(
    srgb: torch.Tensor,
    ccm: torch.Tensor,
    wb_gains: torch.Tensor,
    brightness_gain: torch.Tensor,
    safe_highlights: bool = True,
) -> torch.Tensor:
    """The linear camera RGB ``(B, 3, H, W)`` that :func:`unprocess` mosaics (before clipping).

    Inverse tone curve, inverse gamma, inverse CCM, divided by the brightness gain and (highlight-
    safely) by the white-balance gains. Arguments as for :func:`unprocess`.
    """
    linear = srgb_to_linear(inverse_smoothstep_tone(srgb.clamp(0, 1)))
    camera = apply_color_matrix(linear, torch.linalg.inv(ccm)) / brightness_gain[:, None, None, None]
    if safe_highlights:
        return safe_inverse_gains(camera, wb_gains)
    return camera / wb_gains[:, :, None, None]


def process_rgb(
    camera: torch.Tensor, ccm: torch.Tensor, wb_gains: torch.Tensor, brightness_gain: torch.Tensor
) -> torch.Tensor:
    """:func:`isplab.isp.pipeline.render` of full-colour camera RGB (no mosaic, so no demosaicking).

    White balance and brightness, clip, CCM, clip, sRGB gamma, tone curve: the ideal rendering of a
    raw whose every pixel has all three colours, used as the ground truth of a clipped raw.
    """
    gains = wb_gains * brightness_gain[:, None]
    x = (camera * gains[:, :, None, None]).clamp(0, 1)
    return smoothstep_tone(linear_to_srgb(apply_color_matrix(x, ccm).clamp(0, 1)))


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
    camera = unprocess_rgb(srgb, ccm, wb_gains, brightness_gain, safe_highlights)
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
