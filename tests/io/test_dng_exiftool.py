"""DNGs written by ``write_dng`` are valid per ExifTool, an independent DNG/TIFF validator.

ExifTool's ``-validate`` checks TIFF/EXIF/DNG structure (required tags, tag types and counts,
offsets, IFD ordering). It is Debian's ``libimage-exiftool-perl``; without it the test skips
locally but fails in CI (``CI=true``), where it must be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from isplab.io import RawImage, write_dng


def random_raw(pattern: str, seed: int) -> RawImage:
    """A 96x64 frame with different black levels per plane and realistic, perturbed metadata."""
    rng = np.random.default_rng(seed)
    white = int(rng.integers(1023, 65536))
    camera_matrix = np.array([[0.6347, -0.0479, -0.0972], [-0.8297, 1.5954, 0.2480], [-0.1968, 0.2131, 0.7649]])
    return RawImage(
        mosaic=rng.integers(0, white + 1, (64, 96), dtype=np.uint16),
        cfa_pattern=pattern,
        black_level=rng.integers(0, 200, 4).astype(np.float64),
        white_level=white,
        as_shot_neutral=[rng.uniform(0.2, 1.0), 1.0, rng.uniform(0.2, 1.0)],
        color_matrix=camera_matrix + rng.uniform(-0.05, 0.05, (3, 3)),
        exposure_time=float(rng.choice([1 / 4000, 1 / 60, 0.5])),
        iso=int(rng.integers(50, 12800)),
        aperture=float(rng.choice([1.4, 2.8, 5.6])),
        make=f"Maker{seed}",
        model=f"Model {pattern}",
        unique_camera_model=f"Maker{seed} Model {pattern}",
    )


def _exiftool() -> str:
    path = shutil.which("exiftool")
    if path is None:
        message = "exiftool not installed (Debian: apt-get install libimage-exiftool-perl)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}: CI must run this test")
        pytest.skip(message)
    return path


def exiftool_tags(path: Path) -> dict:
    """ExifTool's numeric (``-n``) reading of every tag, with its validation verdict."""
    result = subprocess.run(
        [_exiftool(), "-j", "-n", "-a", "-G1", "-validate", "-warning", "-error", "-all", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (tags,) = json.loads(result.stdout)
    return tags


def numbers(text) -> list[float]:
    return [float(v) for v in str(text).split()]


@pytest.mark.parametrize("pattern, seed", [("RGGB", 1), ("GRBG", 3), ("BGGR", 5)])
def test_exiftool_validates_and_reads_the_written_values(tmp_path, pattern, seed):
    raw = random_raw(pattern, seed=seed)
    path = write_dng(tmp_path / "f.dng", raw)
    tags = exiftool_tags(path)

    # "errors warnings minor-warnings": all zero, and no tag-level warning or error either.
    assert tags["ExifTool:Validate"] == "0 0 0", tags.get("ExifTool:Validate")
    assert not [key for key in tags if key.endswith((":Warning", ":Error"))], tags
    assert tags["File:FileType"] == "DNG"
    assert tags["IFD0:PhotometricInterpretation"] == 32803  # CFA
    assert numbers(tags["IFD0:DNGVersion"]) == [1, 4, 0, 0]
    assert numbers(tags["IFD0:DNGBackwardVersion"]) == [1, 1, 0, 0]
    assert (tags["IFD0:ImageWidth"], tags["IFD0:ImageHeight"]) == (96, 64)
    assert tags["IFD0:BitsPerSample"] == 16 and tags["IFD0:Compression"] == 1
    assert numbers(tags["IFD0:CFARepeatPatternDim"]) == [2, 2]
    colour = {"R": 0, "G": 1, "B": 2}
    assert numbers(tags["IFD0:CFAPattern2"]) == [colour[c] for c in pattern]
    # BlackLevel is in tile order; RawImage keeps R, Gr, Gb, B.
    tile_order = {"RGGB": (0, 1, 2, 3), "GRBG": (1, 0, 3, 2), "BGGR": (3, 2, 1, 0)}[pattern]
    assert numbers(tags["IFD0:BlackLevelRepeatDim"]) == [2, 2]
    assert numbers(tags["IFD0:BlackLevel"]) == [raw.black_level[i] for i in tile_order]
    assert tags["IFD0:WhiteLevel"] == raw.white_level
    np.testing.assert_allclose(numbers(tags["IFD0:ColorMatrix1"]), raw.color_matrix.ravel(), atol=2e-6)
    assert tags["IFD0:CalibrationIlluminant1"] == 21  # D65
    np.testing.assert_allclose(numbers(tags["IFD0:AsShotNeutral"]), raw.as_shot_neutral, rtol=1e-6)
    assert tags["ExifIFD:ISO"] == raw.iso
    assert tags["ExifIFD:ExposureTime"] == pytest.approx(raw.exposure_time, rel=1e-6)
    assert tags["ExifIFD:FNumber"] == pytest.approx(raw.aperture, rel=1e-6)
    assert (tags["IFD0:Make"], tags["IFD0:Model"]) == (raw.make, raw.model)
    assert tags["IFD0:UniqueCameraModel"] == raw.unique_camera_model
    assert tags["IFD0:StripByteCounts"] == raw.mosaic.size * 2


def test_exiftool_flags_a_broken_dng(tmp_path):
    """The check above can fail: a DNG whose pixel strip is cut off is reported by -validate."""
    path = write_dng(tmp_path / "f.dng", random_raw("RGGB", seed=2))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    tags = exiftool_tags(path)
    assert tags["ExifTool:Validate"] != "0 0 0"


def test_exiftool_reads_the_baseline_exposure_and_a_file_without_it_reads_as_zero(tmp_path):
    """Another tool sees the same BaselineExposure; with the tag deleted (by exiftool), read_raw gives 0 EV."""
    import dataclasses

    from isplab.io import read_raw

    raw = dataclasses.replace(random_raw("RGGB", seed=7), baseline_exposure=-0.6780719)
    path = write_dng(tmp_path / "f.dng", raw)
    tags = exiftool_tags(path)
    assert tags["ExifTool:Validate"] == "0 0 0", tags.get("ExifTool:Validate")
    assert tags["IFD0:BaselineExposure"] == pytest.approx(-0.6780719, abs=1e-6)
    assert read_raw(path).baseline_exposure == pytest.approx(-0.6780719, abs=1e-6)
    subprocess.run([_exiftool(), "-overwrite_original", "-BaselineExposure=", str(path)], check=True,
                   capture_output=True, timeout=60)
    assert "IFD0:BaselineExposure" not in exiftool_tags(path)
    stripped = read_raw(path)
    assert stripped.baseline_exposure == 0.0
    np.testing.assert_array_equal(stripped.mosaic, raw.mosaic)
