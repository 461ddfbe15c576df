"""A synthetic Raspberry Pi-like camera for the AWB workflow: a tuning file and annotated DNGs.

Everything ``make demo`` and the tests need without real captures: the simulated sensor of
:mod:`isplab.data.unprocess` gets a libcamera tuning file (``rpi.awb`` CT curve of its camera
response to Planckian light, ``rpi.ccm``, ``rpi.lux``, ``rpi.black_level``), and scenes become DNGs
named as the seed's annotator names them, ``<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng``,
with the true gains of the scene light. The as-shot neutral is a grey-world estimate, a simple
camera AWB for the model to beat. Dim scenes are lit warmer and bright ones cooler, as indoor and
daylight scenes are, so lux carries information as in real data.
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


def synthetic_tuning(target: str, seed: int = 0) -> dict:
    """A libcamera tuning (version 2.0 layout) for the simulated sensor."""
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
            {"rpi.awb": {"ct_curve": curve, "sensitivity_r": 1.0, "sensitivity_b": 1.0,
                         "modes": {"auto": {"lo": 2500, "hi": 8000}}}},
            {"rpi.contrast": {"gamma_curve": _srgb_gamma_curve()}},
            {"rpi.ccm": {"ccms": [{"ct": 2800, "ccm": ccm.ravel().tolist()},
                                  {"ct": 7600, "ccm": ccm.ravel().tolist()}]}},
        ],
    }


def write_tuning_dir(folder: str | Path, seed: int = 0) -> Path:
    """Write ``<folder>/<target>/isplabsim.json`` for both targets (what ``--tuning-dir`` takes)."""
    folder = Path(folder)
    for target in TARGET_SIZES:
        (folder / target).mkdir(parents=True, exist_ok=True)
        (folder / target / f"{SENSOR}.json").write_text(json.dumps(synthetic_tuning(target, seed), indent=1))
    return folder


def _scene_light(rng: np.random.Generator) -> tuple[float, float]:
    """Scene lux (log-uniform 10..5000) and a colour temperature that tends to follow it."""
    lux = float(np.exp(rng.uniform(np.log(10), np.log(5000))))
    daylight = np.clip((np.log(lux) - np.log(100)) / (np.log(2000) - np.log(100)), 0, 1)
    mired_centre = 1e6 / 3000 + daylight * (1e6 / 6000 - 1e6 / 3000)
    mired = np.clip(rng.normal(mired_centre, 40), 1e6 / 7500, 1e6 / 2700)
    return lux, float(1e6 / mired)


def write_captures(
    folder: str | Path,
    count: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (160, 128),
    user: str = "synth",
    progress: bool = True,
) -> list[Path]:
    """Write ``count`` annotated DNGs of the simulated sensor into ``folder``.

    Returns:
        The DNG paths, named ``<user>,isplabsim,<id>,<red_gain>,<blue_gain>.dng``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    xyz_to_camera = camera_matrix(0)
    ccm = torch.from_numpy(camera_to_srgb_matrix(torch.from_numpy(xyz_to_camera)).numpy()).float()[None]
    paths = []
    indices = range(count)
    for index in track(indices, description=f"writing {count} synthetic captures") if progress else indices:
        rng = np.random.default_rng([seed, index, 7])
        lux, temperature = _scene_light(rng)
        neutral = illuminant_neutral(xyz_to_camera, temperature)
        srgb = torch.from_numpy(load_source(SOURCES[index % len(SOURCES)], size, rng)).permute(2, 0, 1)[None]
        gains = torch.from_numpy(1.0 / neutral).float()[None]
        raw = unprocess(srgb, ccm, gains, torch.tensor([float(rng.uniform(1.0, 1.6))]), "RGGB")
        raw = add_noise(raw, torch.tensor([2e-4]), torch.tensor([2e-6]), torch.Generator().manual_seed(index))
        mosaic = (raw[0, 0].double().numpy() * (WHITE_LEVEL - BLACK_LEVEL) + BLACK_LEVEL).round()
        mosaic = mosaic.clip(0, WHITE_LEVEL).astype(np.uint16)
        # Grey world: the camera's own estimate, right on average scenes, wrong on colourful ones.
        planes = bayer.to_half_rgb(mosaic.astype(np.float64) - BLACK_LEVEL, "RGGB").mean(axis=(-1, -2))
        as_shot = planes / planes[1]
        # Exposure chosen so the converter's lux (rpi.lux references) lands near the scene's.
        exposure_gain = LUX_REFERENCE["reference_lux"] / lux * 0.25
        exposure_time = float(np.clip(exposure_gain * 0.01, 1e-4, 0.1))
        iso = int(round(np.clip(100 * exposure_gain * 0.01 / exposure_time, 100, 1600)))
        name = f"{user},{SENSOR},{index},{1 / neutral[0]:.4f},{1 / neutral[2]:.4f}.dng"
        paths.append(write_dng(folder / name, RawImage(
            mosaic=mosaic, cfa_pattern="RGGB", black_level=[BLACK_LEVEL] * 4, white_level=WHITE_LEVEL,
            as_shot_neutral=as_shot, color_matrix=xyz_to_camera, exposure_time=exposure_time, iso=iso,
            make="isplab", model=SENSOR,
        ), overwrite=True))
    return paths
