"""The on-disk format of a proxy dataset (``isplab proxy generate``), and its loader.

``docs/proxy.md`` is the reference; in short::

    DATASET/
      dataset.json                      what was asked for (block, parameter ranges, images and
                                        their train/val split, backend, darktable version, ...)
      images/synth_00000.dng            synthetic input raws (absent with --images)
      inputs/<image>.tif  <image>.json  the block-off render of each image + its record
      outputs/<id>.tif    <id>.json     the block-on render of sample <id> + its record
      xmp/<image>.xmp, xmp/<id>.xmp     the darktable sidecars used (darktable backend)
      manifest.json, manifest.csv       every sample of a run (manifest-shard-I-of-N.* per shard)

Images are float32 TIFFs ``(H, W, 3)``, linear Rec.709, unclipped. A sample's record (its JSON,
and a row of the manifest) holds its parameters, image, split, backend, darktable version and
render time. A sample is complete when its record exists: the record is written after the TIFF.

A **packed** dataset (``isplab proxy pack``, :mod:`.pack`) holds the same ``dataset.json`` (with a
``packed`` entry: dtype and an index from each image's relative path to its shard and key) and
one ``manifest.json``/``manifest.csv``, and the images as float16 arrays in compressed ``.npz``
shards under ``pack/`` instead of ``inputs/`` and ``outputs/``. :func:`load_dataset` and
:meth:`ProxyDataset.read` read both kinds alike; the DNGs and XMPs are not packed.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isplab.errors import IsplabError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DATASET_JSON",
    "ENTRIES",
    "sample_id",
    "manifest_names",
    "write_json",
    "write_manifest",
    "ProxyDataset",
    "load_dataset",
    "read_tiff",
]

FORMAT = "isplab-proxy-dataset"
FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
#: Everything a dataset consists of in its folder (what --overwrite replaces).
ENTRIES = ("dataset.json", "images", "inputs", "outputs", "xmp", ".work", "pack")


def sample_id(index: int) -> str:
    """The file stem of sample ``index``: six digits (``000042``)."""
    return f"{index:06d}"


def manifest_names(shard: tuple[int, int]) -> tuple[str, str]:
    """``(json, csv)`` names of the manifest written by shard ``(I, N)``."""
    i, n = shard
    stem = "manifest" if n == 1 else f"manifest-shard-{i}-of-{n}"
    return f"{stem}.json", f"{stem}.csv"


def write_json(path: Path, document) -> Path:
    """Write JSON atomically (temporary file renamed into place), so a reader never sees half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, path)
    return path


def write_manifest(folder: Path, shard: tuple[int, int], document: dict, param_names: list[str]) -> tuple[Path, Path]:
    """Write a manifest part: ``document`` as JSON and its samples as CSV rows (one column per
    parameter, ``param.<name>``)."""
    json_name, csv_name = manifest_names(shard)
    write_json(folder / json_name, document)
    columns = ["id", "index", "image", "split", "input", "output", "xmp"]
    columns += [f"param.{n}" for n in param_names] + ["backend", "darktable_version", "render_seconds", "width", "height"]
    tmp = folder / f".{csv_name}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for s in document["samples"]:
            row = [s["id"], s["index"], s["image"], s["split"], s["input"], s["output"], s.get("xmp") or ""]
            row += [s["params"][n] for n in param_names]
            row += [s["backend"], s.get("darktable_version") or "", s["render_seconds"], s["width"], s["height"]]
            writer.writerow(row)
    os.replace(tmp, folder / csv_name)
    return folder / json_name, folder / csv_name


@dataclass
class ProxyDataset:
    """A loaded dataset: its settings and every complete sample, sorted by index."""

    root: Path
    info: dict
    samples: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    @property
    def block(self) -> str:
        return self.info["block"]

    @property
    def varied(self) -> list[str]:
        """The parameters sampled over a range (the proxy's inputs)."""
        return [p["name"] for p in self.info["params"] if p["varied"]]

    def split(self, name: str) -> list[dict]:
        """The samples of the ``train`` or ``val`` images."""
        return [s for s in self.samples if s["split"] == name]

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def packed(self) -> dict | None:
        """The pack index (``dtype``, ``files``) of a packed dataset, else ``None``."""
        return self.info.get("packed")

    def read(self, relative: str) -> torch.Tensor:
        """The image ``relative`` (a sample's ``input`` or ``output``) as float32 ``(3, H, W)``,
        from its TIFF or, in a packed dataset, from its shard.

        Raises:
            IsplabError: a file that cannot be read or has another shape than ``(H, W, 3)``.
        """
        if self.packed is None:
            return read_tiff(self.path(relative))
        entry = self.packed["files"].get(relative)
        if entry is None:
            raise IsplabError(f"packed dataset {self.root} has no image {relative} in its index (dataset.json 'packed')")
        shard = self.root / entry["shard"]
        try:
            with np.load(shard) as archive:
                array = archive[entry["key"]]
        except (OSError, KeyError, ValueError) as error:
            raise IsplabError(f"cannot read {entry['key']} from {shard}: {error} (expected a proxy dataset pack shard)") from None
        return _as_chw(array, f"{shard}:{entry['key']}")


def _as_chw(array: np.ndarray, name: str) -> torch.Tensor:
    if array.ndim != 3 or array.shape[2] != 3:
        raise IsplabError(f"{name} has shape {array.shape}: expected (H, W, 3) as proxy datasets hold")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1).contiguous()


def read_tiff(path: Path) -> torch.Tensor:
    """A float TIFF ``(H, W, 3)`` as float32 ``(3, H, W)``.

    Raises:
        IsplabError: unreadable, or another shape.
    """
    import tifffile

    try:
        array = tifffile.imread(path)
    except Exception as error:
        raise IsplabError(f"cannot read {path}: {error} (expected a float32 TIFF of a proxy dataset)") from None
    return _as_chw(array, str(path))


def load_dataset(folder: str | Path, *, check_files: bool = True) -> ProxyDataset:
    """Read a dataset: ``dataset.json`` and every manifest part (all shards), deduplicated by id.

    Raises:
        IsplabError: no dataset there, a file of another kind, or (``check_files``) a sample whose
            input or output file is missing.
    """
    root = Path(folder)
    meta = root / DATASET_JSON
    if not meta.is_file():
        raise IsplabError(f"{root} is not a proxy dataset: {DATASET_JSON} not found (make one with isplab proxy generate)")
    try:
        info = json.loads(meta.read_text())
    except ValueError as error:
        raise IsplabError(f"cannot parse {meta}: {error} (expected an isplab proxy dataset.json)") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise IsplabError(f"{meta} is not an isplab proxy dataset description (format {FORMAT!r} expected)")
    if info.get("format_version") != FORMAT_VERSION:
        raise IsplabError(f"{meta} has format_version {info.get('format_version')}: this isplab reads {FORMAT_VERSION}")
    samples: dict[str, dict] = {}
    failures: dict[str, dict] = {}
    for part in sorted(root.glob("manifest*.json")):
        try:
            document = json.loads(part.read_text())
            for record in document["samples"]:
                samples[record["id"]] = record
            for record in document.get("failures", []):
                failures[record["id"]] = record
        except (ValueError, KeyError, TypeError) as error:
            raise IsplabError(f"cannot read manifest {part}: {error!r} (expected an isplab proxy manifest)") from None
    for key in samples:
        failures.pop(key, None)  # a later run completed it
    packed = info.get("packed")
    if check_files and packed is not None:
        _check_packed(root, packed, samples.values())
    elif check_files:
        for record in samples.values():
            for key in ("input", "output"):
                if not (root / record[key]).is_file():
                    raise IsplabError(
                        f"dataset {root}: the manifest lists {record[key]} (sample {record['id']}) but the file does not exist"
                    )
    ordered = sorted(samples.values(), key=lambda r: r["index"])
    return ProxyDataset(root, info, ordered, sorted(failures.values(), key=lambda r: r["index"]))


def _check_packed(root: Path, packed: dict, records) -> None:
    """Every sample's images are in the pack index with the sample's size, and every shard exists."""
    files = packed.get("files") if isinstance(packed, dict) else None
    if not isinstance(files, dict):
        raise IsplabError(f"{root / DATASET_JSON} has a 'packed' entry without a 'files' index: expected a packed proxy dataset")
    for record in records:
        for key in ("input", "output"):
            entry = files.get(record[key])
            if entry is None:
                raise IsplabError(
                    f"dataset {root}: the manifest lists {record[key]} (sample {record['id']}) but the pack does not hold it"
                )
            expected = [int(record["height"]), int(record["width"]), 3]
            if list(entry.get("shape", [])) != expected:
                raise IsplabError(
                    f"dataset {root}: {record[key]} (sample {record['id']}) is packed as {entry.get('shape')} but the manifest "
                    f"says {expected}: expected the same size"
                )
    for shard in sorted({e["shard"] for e in files.values()}):
        if not (root / shard).is_file():
            raise IsplabError(f"dataset {root}: pack shard {shard} does not exist")
