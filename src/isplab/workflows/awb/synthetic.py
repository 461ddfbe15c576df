"""A synthetic Raspberry Pi-like camera for the AWB workflow: a tuning file and annotated DNGs.

Everything ``make demo`` and the tests need without real captures: the simulated sensor of
:mod:`isplab.data.unprocess` gets a libcamera tuning file (``rpi.awb`` CT curve of its camera
response to Planckian light, ``rpi.ccm``, ``rpi.lux``, ``rpi.black_level``), and scenes become DNGs
named as the seed's annotator names them, ``<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng``,
with the true gains of the scene light. The as-shot neutral is a grey-world estimate, a simple
camera AWB for the model to beat. Dim scenes are lit warmer and bright ones cooler, as indoor and
daylight scenes are, so lux carries information as in real data.

What the camera guarantees (``tests/workflows/awb/test_synthetic.py`` checks each):

* a grey surface's raw ``R/G``, ``B/G`` (after black level) is :func:`illuminant_neutral` of the
  scene light, which is what the tuning's CT curve holds at each of its temperatures;
* the as-shot neutral is exactly the grey world of the mosaic (mean of each plane after black level,
  over G);
* ``lens_shading=True``: the mosaic is darkened by :func:`lens_falloff`, the reciprocal of the gains
  the tuning's ``rpi.alsc`` tables sample, at the scene light (otherwise the tables are flat and the
  lens shades nothing);
* ``grey_card=True``: a neutral card (:data:`GREY_CARD`) is in every scene and the file is named by
  its rectangle, ``<user>,<sensor>,<id>,<x1>,<y1>,<x2>,<y2>.dng``, as the annotator names a capture
  whose grey patch was boxed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from isplab.data.sources import SOURCES, load_source
from isplab.data.unprocess import add_noise, illuminant_neutral, random_xyz_to_camera, unprocess
from isplab.io import RawImage, write_dng
from isplab.isp import bayer
from isplab.isp.color import camera_to_srgb_matrix
from isplab.isp.gamma import linear_to_srgb
from isplab.workflows.awb.dataset import TARGET_SIZES

SENSOR = "isplabsim"
BLACK_LEVEL, WHITE_LEVEL = 256, 4095
CURVE_TEMPERATURES = np.arange(2500.0, 8001.0, 250.0)
#: Calibration temperatures of the synthetic lens-shading tables (``rpi.alsc``).
ALSC_TEMPERATURES = (3000.0, 6500.0)
#: Grey card as fractions of the image ``(x1, y1, x2, y2)``; its sRGB level before unprocessing.
GREY_CARD = (0.125, 0.25, 0.4375, 0.625)
GREY_CARD_SRGB = 0.7
LUX_REFERENCE = {"reference_shutter_speed": 10000, "reference_gain": 1.0, "reference_aperture": 1.0,
                 "reference_lux": 1000, "reference_Y": 12000}


def camera_matrix(seed: int = 0) -> np.ndarray:
    """The simulated sensor's XYZ -> camera matrix (fixed by ``seed``)."""
    return random_xyz_to_camera(np.random.default_rng([seed, 2024]))


def _srgb_gamma_curve(points: int = 33) -> list[int]:
    """``rpi.contrast`` gamma curve (input, output pairs on 0..65535) of the sRGB transfer function."""
    x = np.linspace(0.0, 1.0, points)
    y = linear_to_srgb(torch.from_numpy(x)).numpy()
    return np.round(np.stack([x, y], axis=1) * 65535).astype(int).ravel().tolist()


def _shading_gain(u: np.ndarray, v: np.ndarray, ct: float) -> np.ndarray:
    """``(3, ...)`` R, G, B lens-shading correction gains of the simulated lens at ``ct`` kelvin.

    ``u``, ``v`` are positions in -1..1 across the image (left to right, top to bottom). The gains
    are 1 inside a central disc and grow towards the corners; red and blue differ from green and
    from each other (red tilts left-right, blue top-bottom) so a swapped or transposed table shows.
    """
    w = float(np.clip((ct - ALSC_TEMPERATURES[0]) / (ALSC_TEMPERATURES[1] - ALSC_TEMPERATURES[0]), 0, 1))
    ring = np.maximum(0.0, np.hypot(u, v) - 0.3) ** 2
    luminance = 1 + 0.8 * ring
    cr = 1 + ((1 - w) * 0.30 + w * 0.10) * ring * (1 + 0.4 * u)
    cb = 1 + ((1 - w) * 0.08 + w * 0.25) * ring * (1 + 0.4 * v)
    return np.stack([cr * luminance, luminance, cb * luminance])


def _zone_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``u, v`` (-1..1) of the centres of a ``height x width`` grid of equal zones."""
    u = (np.arange(width) + 0.5) / width * 2 - 1
    v = (np.arange(height) + 0.5) / height * 2 - 1
    return np.meshgrid(u, v)


def _alsc(target: str, lens_shading: bool) -> dict:
    """``rpi.alsc`` tables sampled at the zone centres (PiSP 32x32, VC4 16 wide x 12 high); flat
    (all 1) without ``lens_shading``."""
    height, width = (32, 32) if target == "pisp" else (12, 16)
    u, v = _zone_centres(height, width)
    tables = {}
    for ct in ALSC_TEMPERATURES:
        r, g, b = _shading_gain(u, v, ct) if lens_shading else np.ones((3, height, width))
        tables[ct] = (r / g, b / g, g)  # Cr, Cb, luminance: libcamera's factorisation
    rounded = lambda a: np.round(a, 4).ravel().tolist()  # noqa: E731
    return {
        "luminance_strength": 1.0,
        "calibrations_Cr": [{"ct": int(ct), "table": rounded(cr)} for ct, (cr, _, _) in tables.items()],
        "calibrations_Cb": [{"ct": int(ct), "table": rounded(cb)} for ct, (_, cb, _) in tables.items()],
        # luminance does not depend on the light: one table, the first calibration's
        "luminance_lut": rounded(tables[ALSC_TEMPERATURES[0]][2]),
    }


def synthetic_tuning(target: str, seed: int = 0, *, lens_shading: bool = False) -> dict:
    """A libcamera tuning (version 2.0 layout) for the simulated sensor.

    ``rpi.alsc`` holds the lens's shading (see :func:`write_captures`), flat when ``lens_shading``
    is false.
    """
    xyz_to_camera = camera_matrix(seed)
    curve = []
    for t in CURVE_TEMPERATURES:
        r, _, b = illuminant_neutral(xyz_to_camera, float(t))
        curve += [float(t), round(float(r), 5), round(float(b), 5)]
    ccm = np.round(camera_to_srgb_matrix(torch.from_numpy(xyz_to_camera)).numpy(), 5)
    return {
        "version": 2.0,
        "target": "pisp" if target == "pisp" else "bcm2835",
        "algorithms": [
            {"rpi.black_level": {"black_level": BLACK_LEVEL * 16}},
            {"rpi.lux": dict(LUX_REFERENCE)},
            {"rpi.alsc": _alsc(target, lens_shading)},
            {"rpi.awb": {"ct_curve": curve, "sensitivity_r": 1.0, "sensitivity_b": 1.0,
                         "modes": {"auto": {"lo": 2500, "hi": 8000}}}},
            {"rpi.contrast": {"gamma_curve": _srgb_gamma_curve()}},
            {"rpi.ccm": {"ccms": [{"ct": 2800, "ccm": ccm.ravel().tolist()},
                                  {"ct": 7600, "ccm": ccm.ravel().tolist()}]}},
        ],
    }


def write_tuning_dir(folder: str | Path, seed: int = 0, *, lens_shading: bool = False) -> Path:
    """Write ``<folder>/<target>/isplabsim.json`` for both targets (what ``--tuning-dir`` takes)."""
    folder = Path(folder)
    for target in TARGET_SIZES:
        (folder / target).mkdir(parents=True, exist_ok=True)
        tuning = synthetic_tuning(target, seed, lens_shading=lens_shading)
        (folder / target / f"{SENSOR}.json").write_text(json.dumps(tuning, indent=1))
    return folder


def scene_light(seed: int, index: int) -> tuple[float, float]:
    """``(lux, kelvin)`` of the light of capture ``index`` of :func:`write_captures` with ``seed``."""
    return _scene_light(np.random.default_rng([seed, index, 7]))


def _scene_light(rng: np.random.Generator) -> tuple[float, float]:
    """Scene lux (log-uniform 10..5000) and a colour temperature that tends to follow it."""
    lux = float(np.exp(rng.uniform(np.log(10), np.log(5000))))
    daylight = np.clip((np.log(lux) - np.log(100)) / (np.log(2000) - np.log(100)), 0, 1)
    mired_centre = 1e6 / 3000 + daylight * (1e6 / 6000 - 1e6 / 3000)
    mired = np.clip(rng.normal(mired_centre, 40), 1e6 / 7500, 1e6 / 2700)
    return lux, float(1e6 / mired)


def grey_card_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` raw-pixel rectangle of the grey card in a ``size = (width, height)``
    capture, on even coordinates (whole Bayer tiles)."""
    w, h = size
    x1, y1, x2, y2 = GREY_CARD
    return tuple(int(round(f * n / 2)) * 2 for f, n in ((x1, w), (y1, h), (x2, w), (y2, h)))


def lens_falloff(shape: tuple[int, int], ct: float) -> np.ndarray:
    """``(H, W)`` RGGB mosaic of the fraction of light each pixel keeps through the simulated lens
    at ``ct``: the reciprocal of the ALSC gains, evaluated at each Bayer tile's centre."""
    height, width = shape
    u, v = _zone_centres(height // 2, width // 2)
    r, g, b = 1.0 / _shading_gain(u, v, ct)
    return bayer.unpack(np.stack([r, g, g, b]), "RGGB")


def write_captures(
    folder: str | Path,
    count: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (160, 128),
    user: str = "synth",
    lens_shading: bool = False,
    grey_card: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Write ``count`` annotated DNGs of the simulated sensor into ``folder``.

    Args:
        size: ``(width, height)`` in raw pixels (even).
        lens_shading: the lens vignettes as the tuning's ``rpi.alsc`` says (use the tuning of
            ``write_tuning_dir(..., lens_shading=True)``).
        grey_card: put a grey card in each scene (:func:`grey_card_box`) and name the files by it.

    Returns:
        The DNG paths, named ``<user>,isplabsim,<id>,<red_gain>,<blue_gain>.dng`` (the scene light's
        gains, to 4 decimals) or, with ``grey_card``, ``<user>,isplabsim,<id>,<x1>,<y1>,<x2>,<y2>.dng``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    xyz_to_camera = camera_matrix(0)
    ccm = torch.from_numpy(camera_to_srgb_matrix(torch.from_numpy(xyz_to_camera)).numpy()).float()[None]
    box = grey_card_box(size)
    paths = []
    indices = range(count)
    for index in track(indices, description=f"writing {count} synthetic captures") if progress else indices:
        rng = np.random.default_rng([seed, index, 7])
        lux, temperature = _scene_light(rng)
        neutral = illuminant_neutral(xyz_to_camera, temperature)
        source = load_source(SOURCES[index % len(SOURCES)], size, rng)
        if grey_card:
            x1, y1, x2, y2 = box
            source[y1:y2, x1:x2] = GREY_CARD_SRGB
        srgb = torch.from_numpy(source).permute(2, 0, 1)[None]
        gains = torch.from_numpy(1.0 / neutral).float()[None]
        raw = unprocess(srgb, ccm, gains, torch.tensor([float(rng.uniform(1.0, 1.6))]), "RGGB")
        if lens_shading:
            raw = raw * torch.from_numpy(lens_falloff(raw.shape[-2:], temperature)).float()
        raw = add_noise(raw, torch.tensor([2e-4]), torch.tensor([2e-6]), torch.Generator().manual_seed(index))
        mosaic = (raw[0, 0].double().numpy() * (WHITE_LEVEL - BLACK_LEVEL) + BLACK_LEVEL).round()
        mosaic = mosaic.clip(0, WHITE_LEVEL).astype(np.uint16)
        # Grey world: the camera's own estimate, right on average scenes, wrong on colourful ones.
        planes = bayer.to_half_rgb(mosaic.astype(np.float64) - BLACK_LEVEL, "RGGB").mean(axis=(-1, -2))
        as_shot = planes / planes[1]
        # Auto exposure: shorter for brighter scenes, gain above ISO 100 once 0.1 s is not enough; so
        # the converter's lux (from the rpi.lux references) ranks the scenes as their light does.
        exposure_gain = LUX_REFERENCE["reference_lux"] / lux * 0.25
        exposure_time = float(np.clip(exposure_gain * 0.01, 1e-4, 0.1))
        iso = int(round(np.clip(100 * exposure_gain * 0.01 / exposure_time, 100, 1600)))
        label = ",".join(map(str, box)) if grey_card else f"{1 / neutral[0]:.4f},{1 / neutral[2]:.4f}"
        name = f"{user},{SENSOR},{index},{label}.dng"
        paths.append(write_dng(folder / name, RawImage(
            mosaic=mosaic, cfa_pattern="RGGB", black_level=[BLACK_LEVEL] * 4, white_level=WHITE_LEVEL,
            as_shot_neutral=as_shot, color_matrix=xyz_to_camera, exposure_time=exposure_time, iso=iso,
            make="isplab", model=SENSOR,
        ), overwrite=True))
    return paths
