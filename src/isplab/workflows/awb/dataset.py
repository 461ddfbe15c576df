"""AWB statistics datasets: file-name parsing, loading, grouped folds and the duplicates file.

A dataset is a folder of 16-bit RGB PNGs of AWB zone statistics (after black level, lens
shading, the 5000 K gains and CCM), named ``<user>,<sensor>,<id>,<true_temp>,<lux>,<camera_temp>.png``
as the reference converter writes them. A *scene* is ``<user>,<id>``: the same scene shot by
several sensors must stay in one fold when cross-validating, or the held-out error is optimistic.

The duplicates file lists how many times images are repeated in training, one
``<prefix> <count>`` per line (``#`` starts a comment); a sample takes the count of the longest
prefix of its file name, 1 when none matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isplab.errors import IsplabError
from isplab.io import read_image
from isplab.workflows.awb.constants import TARGET_SIZES, TEMPERATURE_RANGE

__all__ = [
    "NAME_PATTERN", "TARGET_SIZES", "TEMPERATURE_RANGE", "AWBDataset", "AWBSample", "grouped_kfold",
    "load_dataset", "mired_error", "parse_stats_name", "read_duplicates", "repeat_counts", "write_duplicates",
]
NAME_PATTERN = "<user>,<sensor>,<id>,<true_temp>,<lux>,<camera_temp>.png"


@dataclass(frozen=True)
class AWBSample:
    """One statistics image's identity and labels, from its file name."""

    path: Path
    user: str
    sensor: str
    id: str
    true_temp: float
    lux: float
    camera_temp: float

    @property
    def scene(self) -> str:
        """``<user>,<id>``: the photographed scene, shared by all sensors that shot it."""
        return f"{self.user},{self.id}"

    @property
    def prefix(self) -> str:
        """``<user>,<sensor>,<id>``: the image's key in a duplicates file."""
        return f"{self.user},{self.sensor},{self.id}"


@dataclass
class AWBDataset:
    """Statistics images and labels of one target.

    Attributes:
        samples: ``N`` parsed file names.
        images: ``(N, H, W, 3)`` float32 zone means in ``[0, 1]`` (PNG / 65535).
        lux, true_temp, camera_temp: ``(N,)`` float32.
        target: ``"pisp"`` or ``"vc4"``.
    """

    samples: list[AWBSample]
    images: np.ndarray
    lux: np.ndarray
    true_temp: np.ndarray
    camera_temp: np.ndarray
    target: str

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Sequence[int] | np.ndarray) -> AWBDataset:
        """The samples at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return AWBDataset(
            samples=[self.samples[i] for i in indices],
            images=self.images[indices],
            lux=self.lux[indices],
            true_temp=self.true_temp[indices],
            camera_temp=self.camera_temp[indices],
            target=self.target,
        )


def parse_stats_name(path: str | Path) -> AWBSample:
    """Parse ``<user>,<sensor>,<id>,<true_temp>,<lux>,<camera_temp>.png``.

    Raises:
        IsplabError: the name does not have six comma-separated fields with numeric labels.
    """
    path = Path(path)
    fields = path.stem.split(",")
    try:
        if len(fields) != 6 or not all(fields[:3]):
            raise ValueError
        true_temp, lux, camera_temp = (float(f) for f in fields[3:])
    except ValueError:
        raise IsplabError(f"cannot parse AWB statistics file name '{path.name}': expected {NAME_PATTERN}") from None
    return AWBSample(path, fields[0], fields[1], fields[2], true_temp, lux, camera_temp)


def load_dataset(folder: str | Path, target: str | None = None) -> AWBDataset:
    """Load every ``*.png`` under ``folder`` (recursively, sorted by path).

    Args:
        folder: dataset folder.
        target: ``"pisp"`` or ``"vc4"``; ``None`` infers it from the first image's size.

    Raises:
        IsplabError: missing or empty folder, unknown target, a misnamed file, or an image that
            is not 3-channel of the target's zone-grid size.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IsplabError(f"dataset folder '{folder}' does not exist")
    paths = sorted(folder.rglob("*.png"))
    if not paths:
        raise IsplabError(f"dataset folder '{folder}' contains no .png statistics images")
    if target is not None and target not in TARGET_SIZES:
        raise IsplabError(f"unknown target {target!r}: expected one of {', '.join(TARGET_SIZES)}")
    samples = [parse_stats_name(p) for p in paths]
    images = []
    for path in paths:
        image = read_image(path)
        if target is None:
            target = _target_of_shape(image.shape, path)
        height, width = TARGET_SIZES[target]
        if image.shape != (height, width, 3):
            raise IsplabError(
                f"image '{path}' has shape {image.shape}, expected {width} wide x {height} high x 3 "
                f"for target {target!r}"
            )
        images.append(image.astype(np.float32) / 65535.0)

    def column(name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in samples], dtype=np.float32)

    return AWBDataset(
        samples=samples,
        images=np.stack(images),
        lux=column("lux"),
        true_temp=column("true_temp"),
        camera_temp=column("camera_temp"),
        target=target,
    )


def _target_of_shape(shape: tuple[int, ...], path: Path) -> str:
    for target, (height, width) in TARGET_SIZES.items():
        if shape == (height, width, 3):
            return target
    sizes = ", ".join(f"{t} {w}x{h}" for t, (h, w) in TARGET_SIZES.items())
    raise IsplabError(f"image '{path}' has shape {shape}: not the zone grid of any target ({sizes}, RGB)")


def grouped_kfold(samples: Sequence[AWBSample], k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, test) index splits with every scene's images in a single test fold.

    Scenes are shuffled with ``seed`` then dealt, largest first, to the currently smallest fold,
    so folds have about ``N / k`` images each.

    Raises:
        IsplabError: ``k < 2`` or more folds than scenes.
    """
    scenes: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        scenes.setdefault(sample.scene, []).append(i)
    if k < 2 or k > len(scenes):
        raise IsplabError(f"cannot make {k} folds from {len(scenes)} scenes: need 2 <= k <= number of scenes")
    groups = list(scenes.values())
    order = np.random.default_rng(seed).permutation(len(groups))
    # A stable sort keeps the shuffled order among scenes of equal size.
    order = sorted(order, key=lambda g: -len(groups[g]))
    folds: list[list[int]] = [[] for _ in range(k)]
    for g in order:
        min(folds, key=len).extend(groups[g])
    every = np.arange(len(samples))
    splits = []
    for fold in folds:
        test = np.sort(np.array(fold, dtype=np.int64))
        splits.append((np.setdiff1d(every, test), test))
    return splits


def read_duplicates(path: str | Path) -> dict[str, int]:
    """Parse a duplicates file into ``{prefix: count}``.

    Raises:
        IsplabError: missing file, or a line that is not ``<prefix> <positive integer>``.
    """
    path = Path(path)
    if not path.is_file():
        raise IsplabError(f"duplicates file '{path}' does not exist")
    counts: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.rsplit(maxsplit=1)
        try:
            if len(fields) != 2:
                raise ValueError
            count = int(fields[1])
            if count < 1:
                raise ValueError
        except ValueError:
            raise IsplabError(
                f"{path}:{number}: expected '<user>,<sensor>,<id> <count>' with a positive integer count, "
                f"got {line!r}"
            ) from None
        counts[fields[0]] = count
    return counts


def write_duplicates(path: str | Path, counts: Mapping[str, int]) -> Path:
    """Write ``{prefix: count}`` as a duplicates file, one ``<prefix> <count>`` per line, sorted."""
    path = Path(path)
    lines = ["# <user>,<sensor>,<id> prefix and how many times its images are used in training"]
    lines += [f"{prefix} {int(count)}" for prefix, count in sorted(counts.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def repeat_counts(samples: Sequence[AWBSample], duplicates: Mapping[str, int]) -> np.ndarray:
    """``(N,)`` int64 training repeats: the count of the longest prefix of each file name, else 1."""
    by_length = sorted(duplicates.items(), key=lambda item: -len(item[0]))
    counts = np.ones(len(samples), dtype=np.int64)
    for i, sample in enumerate(samples):
        for prefix, count in by_length:
            if sample.path.name.startswith(prefix):
                counts[i] = count
                break
    return counts


def mired_error(pred_k, true_k) -> np.ndarray:
    """``|1e6 / pred - 1e6 / clip(true, 2800, 7600)|`` in mireds, as the reference tools measure."""
    true = np.clip(np.asarray(true_k, dtype=np.float64), *TEMPERATURE_RANGE)
    return np.abs(1e6 / np.asarray(pred_k, dtype=np.float64) - 1e6 / true)
