"""Write a synthetic raw dataset: DNG files plus a manifest of each file's ground truth.

Every sample is generated from its own random stream ``default_rng([seed, index])``, so a dataset
is deterministic for a seed and sample ``i`` does not depend on how many samples are written.

Cameras (``camera_split``, see :func:`isplab.data.unprocess.sample_params`): ``"auto"`` gives
generated scenes (dead leaves, procedural) the real training cameras, the held-out photographs
the held-out test cameras, and any other mix the original four-camera recipe. With a real-camera
split the raw also has an exposure error and clips at saturation, and the target is the ideal
rendering of that clipped raw (:func:`isplab.data.unprocess.process_rgb`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isplab import __version__
from isplab.data.sources import (
    PROCEDURAL,
    SOURCES,
    check_sources,
    is_heldout_photo,
    load_source,
)
from isplab.data.unprocess import (
    BASE_SHOT_NOISE,  # shot-noise variance coefficient of the simulated sensor at ISO 100
    UnprocessParams,
    add_noise,
    process_rgb,
    sample_params,
    unprocess,
    unprocess_rgb,
)
from isplab.errors import IsplabError
from isplab.io.dng import write_dng
from isplab.io.image import to_uint16, write_image
from isplab.io.paths import prepare_output_dir
from isplab.io.raw import RawImage
from isplab.isp import bayer

MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"


@dataclass
class SensorSpec:
    """The simulated sensor's fixed properties."""

    pattern: str = "RGGB"
    black_level: float = 512.0
    white_level: int = 16383
    make: str = "isplab"
    model: str = "Synthetic Sensor"


@dataclass
class SynthResult:
    """What :func:`synthesize_dataset` wrote."""

    out_dir: Path
    samples: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST_JSON


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"WxH"`` into ``(width, height)``; both must be positive and even (a 2x2 CFA tile)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise IsplabError(f"bad size {text!r}: expected WIDTHxHEIGHT, e.g. 512x384") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise IsplabError(f"bad size {text!r}: width and height must be positive and even")
    return w, h


def resolve_camera_split(sources: Sequence[str], camera_split: str | None = "auto") -> str | None:
    """``"auto"`` -> ``"test"`` for held-out photographs only, ``"train"`` for generated scenes only,
    ``None`` (the original camera mix) otherwise; anything else is returned as given."""
    if camera_split != "auto":
        return camera_split
    if all(is_heldout_photo(name) for name in sources):
        return "test"
    if all(name in PROCEDURAL for name in sources):
        return "train"
    return None


def synthesize_sample(
    index: int,
    seed: int,
    size: tuple[int, int],
    sensor: SensorSpec,
    sources: Sequence[str] = SOURCES,
    noise: bool = True,
    camera_split: str | None = None,
) -> tuple[np.ndarray, np.ndarray, UnprocessParams, str, dict]:
    """Make one sample (``camera_split``: see the module docstring; ``None`` is the original recipe).

    Returns:
        ``(mosaic uint16 (H, W), clean sRGB target float32 (H, W, 3), params, source, exif)``.
    """
    rng = np.random.default_rng([seed, index])
    source = sources[index % len(sources)]
    target = load_source(source, size, rng)
    params = sample_params(rng, noise=noise, camera_split=camera_split)

    as_tensor = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float32)[None]  # noqa: E731
    srgb = torch.from_numpy(target).permute(2, 0, 1)[None]
    ccm, gains, brightness = as_tensor(params.ccm), as_tensor(params.wb_gains), as_tensor(params.brightness_gain)
    if camera_split is None:
        raw = unprocess(srgb, ccm, gains, brightness, sensor.pattern)
    else:  # the sensor clips; the target is what an ideal ISP makes of the clipped raw
        camera = unprocess_rgb(srgb, ccm, gains, brightness).clamp(0, 1)
        raw = bayer.mosaic(camera, sensor.pattern).unsqueeze(1)
        target = process_rgb(camera, ccm, gains, brightness)[0].permute(1, 2, 0).contiguous().numpy()
    noise_seed = int(rng.integers(2**62))  # drawn even without noise: the same stream either way
    if noise:
        generator = torch.Generator().manual_seed(noise_seed)
        raw = add_noise(raw, as_tensor(params.shot_noise), as_tensor(params.read_noise), generator)
    scale = sensor.white_level - sensor.black_level
    digital = (raw[0, 0].double().numpy() * scale + sensor.black_level).round()
    mosaic = digital.clip(0, sensor.white_level).astype(np.uint16)
    iso = params.iso if params.iso is not None else max(100, round(100 * params.shot_noise / BASE_SHOT_NOISE))
    exif = {
        "iso": float(round(iso)) if noise else 100.0,
        "exposure_time": float(1.0 / rng.choice([2000, 1000, 500, 250, 125, 60, 30, 15])),
        "aperture": float(rng.choice([1.8, 2.0, 2.8, 4.0, 5.6])),
    }
    return mosaic, target, params, source, exif


def synthesize_raw(
    index: int,
    seed: int,
    size: tuple[int, int],
    sensor: SensorSpec,
    sources: Sequence[str] = SOURCES,
    noise: bool = True,
    path: str | Path | None = None,
    camera_split: str | None = None,
) -> tuple[RawImage, np.ndarray, UnprocessParams, str]:
    """:func:`synthesize_sample` as the :class:`~isplab.io.RawImage` a DNG of it holds.

    Returns:
        ``(raw, clean sRGB target float32 (H, W, 3), params, source)``; ``raw.path`` is ``path``.
    """
    mosaic, target, params, source, exif = synthesize_sample(index, seed, size, sensor, sources, noise, camera_split)
    raw = RawImage(
        path=Path(path) if path is not None else None,
        mosaic=mosaic,
        cfa_pattern=sensor.pattern,
        black_level=np.full(4, sensor.black_level),
        white_level=sensor.white_level,
        as_shot_neutral=params.as_shot_neutral,
        color_matrix=params.xyz_to_camera,
        exposure_time=exif["exposure_time"],
        iso=exif["iso"],
        aperture=exif["aperture"],
        make=sensor.make,
        model=sensor.model,
        unique_camera_model=f"{sensor.make} {sensor.model}",
        baseline_exposure=float(np.log2(params.brightness_gain)),
    )
    return raw, target, params, source


def synthesize_dataset(
    out_dir: str | Path,
    count: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (512, 384),
    sensor: SensorSpec | None = None,
    sources: Sequence[str] = SOURCES,
    noise: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    camera_split: str | None = "auto",
) -> SynthResult:
    """Write ``count`` synthetic DNGs, their clean sRGB targets and a manifest to ``out_dir``.

    Files: ``synth_00000.dng`` (the raw, its exposure as DNG BaselineExposure =
    ``log2(brightness_gain)`` EV, so a renderer needs no manifest), ``synth_00000_target.png`` (16-bit clean sRGB ground
    truth), ``manifest.json`` (dataset settings + one record per sample: black/white level, CFA
    pattern, as-shot neutral, colour matrix, CCM, illuminant CCT, gains, noise levels, EXIF) and
    ``manifest.csv`` (the same records flattened). A sample that fails is reported in the
    manifest's ``failures`` and the others are still written.

    Raises:
        IsplabError: before anything is written: a bad count, CFA pattern or source name, an
            ``out_dir`` that holds a dataset (without ``overwrite``; with it, the previous
            dataset's files are replaced, other files are left alone), or that cannot be written.
    """
    if count < 1:
        raise IsplabError(f"--count must be at least 1, got {count}")
    sensor = sensor or SensorSpec()
    sensor.pattern = bayer.check_pattern(sensor.pattern)
    sources = check_sources(sources)  # every argument is checked before anything is written
    camera_split = resolve_camera_split(sources, camera_split)
    if camera_split is not None:
        from isplab.data.cameras import camera_split as check_split

        check_split(camera_split)
    out_dir = Path(out_dir)
    previous = _dataset_files(out_dir)
    prepare_output_dir(out_dir, overwrite=overwrite, names=previous, what="dataset folder")
    for stale in previous:  # --overwrite replaces the previous dataset, never merges into it
        (out_dir / stale).unlink(missing_ok=True)

    result = SynthResult(out_dir)
    indices = range(count)
    if progress:
        from rich.progress import track

        indices = track(indices, description=f"synthesising {count} DNGs")
    for index in indices:
        stem = f"synth_{index:05d}"
        try:
            dng_path = out_dir / f"{stem}.dng"
            target_path = out_dir / f"{stem}_target.png"
            raw, target, params, source = synthesize_raw(index, seed, size, sensor, sources, noise, path=dng_path,
                                                         camera_split=camera_split)
            write_dng(dng_path, raw, overwrite=overwrite)
            write_image(target_path, to_uint16(target), overwrite=overwrite)
        except Exception as error:  # a batch job reports a failure and goes on
            result.failures.append({"index": index, "file": f"{stem}.dng", "error": f"{type(error).__name__}: {error}"})
            continue
        result.samples.append(
            {
                "file": dng_path.name,
                "target": target_path.name,
                "index": index,
                "source": source,
                "width": size[0],
                "height": size[1],
                "cfa_pattern": sensor.pattern,
                "black_level": [sensor.black_level] * 4,
                "white_level": sensor.white_level,
                **params.to_dict(),
                "iso": raw.iso,
                "exposure_time": raw.exposure_time,
                "aperture": raw.aperture,
                "baseline_exposure": raw.baseline_exposure,
            }
        )
    _write_manifest(result, seed=seed, size=size, sensor=sensor, noise=noise, count=count, sources=list(sources),
                    camera_split=camera_split)
    return result


def _dataset_files(out_dir: Path) -> list[str]:
    """The files of a synthetic dataset already in ``out_dir``: its manifest, the samples it lists,
    and any ``synth_*`` sample files (those of a run that stopped before writing its manifest)."""
    if not out_dir.is_dir():
        return []
    names = {path.name for path in out_dir.glob("synth_[0-9]*") if path.is_file()}
    names |= {name for name in (MANIFEST_JSON, MANIFEST_CSV) if (out_dir / name).is_file()}
    try:
        manifest = json.loads((out_dir / MANIFEST_JSON).read_text())
        names |= {sample[key] for sample in manifest.get("samples", []) for key in ("file", "target")}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # no readable manifest: the names above are all there is to replace
    return sorted(name for name in names if Path(name).name == name and (out_dir / name).is_file())


def _write_manifest(result: SynthResult, **settings) -> None:
    sensor = settings.pop("sensor")
    settings["sensor"] = vars(sensor)
    document = {
        "isplab_version": __version__,
        "settings": settings,
        "conventions": {
            "black_level": "per plane, in R, Gr, Gb, B order, raw DN",
            "xyz_to_camera": "DNG ColorMatrix1: maps CIE XYZ (D65) to camera RGB",
            "ccm": "maps white-balanced camera RGB to linear sRGB",
            "as_shot_neutral": "camera RGB of white under the illuminant, G = 1; wb_gains = 1 / as_shot_neutral",
            "brightness_gain": "the raw was divided by it; multiply it back with the white-balance gains",
            "baseline_exposure": "log2(brightness_gain) in EV, also in each DNG as BaselineExposure (tag 50730)",
            "noise": "variance = shot_noise * x + read_noise, x in [0, 1] normalised raw",
        },
        "samples": result.samples,
        "failures": result.failures,
    }
    result.manifest.write_text(json.dumps(document, indent=2))
    rows = [_flatten(sample) for sample in result.samples]
    if rows:
        with open(result.out_dir / MANIFEST_CSV, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _flatten(record: dict) -> dict:
    flat = {}
    for key, value in record.items():
        array = np.asarray(value)
        if array.ndim == 0:
            flat[key] = value
        else:
            flat.update({f"{key}_{i}": v for i, v in enumerate(array.ravel().tolist())})
    return flat


def load_manifest(path: str | Path) -> dict:
    """Read a dataset's ``manifest.json`` (a directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_JSON
    if not path.is_file():
        raise IsplabError(f"{path}: no synthetic-dataset manifest here (expected {MANIFEST_JSON})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise IsplabError(f"{path}: not a valid manifest ({error})") from None
