"""``isplab proxy pack``: a proxy dataset as float16 ``.npz`` shards, to carry it to another machine.

A dataset of ``isplab proxy generate`` keeps each image as a float32 TIFF (plus DNGs, XMPs and
one JSON record per sample). Packing writes only what training and evaluation read:

    PACKED/
      dataset.json                 the source's, plus ``packed``: dtype and an index
                                   {relative image path: {shard, key, shape}}
      manifest.json, manifest.csv  every complete sample (all shards of the source merged)
      pack/shard-00000.npz ...     the images, float16, compressed, ``shard_size`` per shard

:func:`isplab.workflows.proxy.dataset.load_dataset` and ``proxy train``/``test`` read a packed
dataset like the original (the sample records keep their relative ``input``/``output`` paths,
which the index resolves). float16 keeps 11 significant bits (relative error at most 2^-11) and
values up to 65504; packing refuses an image with larger or non-finite values. The DNGs and XMPs
stay behind: ``proxy regress`` with render-back and ``generate`` need the original folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir, remove_outputs
from isplab.workflows.proxy.dataset import DATASET_JSON, load_dataset, write_json, write_manifest

__all__ = ["PACK_DIR", "PACK_DTYPE", "PackResult", "pack_dataset", "packed_summary"]

PACK_DIR = "pack"
PACK_DTYPE = "float16"
FLOAT16_MAX = float(np.finfo(np.float16).max)
OUTPUTS = (DATASET_JSON, "manifest.json", "manifest.csv", PACK_DIR)


@dataclass
class PackResult:
    folder: Path
    samples: int
    images: int
    shards: int
    bytes: int


def pack_dataset(source: str | Path, output: str | Path, *, shard_size: int = 64, overwrite: bool = False) -> PackResult:
    """Pack the dataset in ``source`` into ``output`` (see the module docstring).

    Raises:
        IsplabError: ``source`` is not a complete dataset (or is already packed), ``output`` holds
            outputs without ``overwrite`` or is ``source`` itself, ``shard_size < 1``, or an image
            does not fit float16.
    """
    if shard_size < 1:
        raise IsplabError(f"--shard-size must be at least 1, got {shard_size}")
    source, output = Path(source), Path(output)
    data = load_dataset(source)
    if data.packed is not None:
        raise IsplabError(f"{source} is already a packed dataset: expected a dataset folder of isplab proxy generate")
    if not data.samples:
        raise IsplabError(f"dataset {source} has no complete samples: nothing to pack")
    if output.resolve() == source.resolve():
        raise IsplabError(f"{output} is the dataset being packed: expected another folder")
    prepare_output_dir(output, overwrite=overwrite, names=OUTPUTS, what="packed dataset folder")
    if overwrite:
        remove_outputs(output, OUTPUTS)
    names: list[str] = []
    for s in data.samples:
        for key in ("input", "output"):
            if s[key] not in names:
                names.append(s[key])
    (output / PACK_DIR).mkdir()
    files: dict[str, dict] = {}
    shards = [names[i : i + shard_size] for i in range(0, len(names), shard_size)]
    for number, chunk in enumerate(shards):
        shard = f"{PACK_DIR}/shard-{number:05d}.npz"
        arrays = {}
        for k, relative in enumerate(chunk):
            image = data.read(relative).permute(1, 2, 0).numpy()
            if not np.isfinite(image).all() or np.abs(image).max() > FLOAT16_MAX:
                raise IsplabError(f"{source / relative} holds values that float16 cannot store (non-finite or beyond {FLOAT16_MAX:g})")
            key = f"a{k:05d}"
            arrays[key] = image.astype(np.float16)
            files[relative] = {"shard": shard, "key": key, "shape": list(image.shape)}
        np.savez_compressed(output / shard, **arrays)
    info = dict(data.info)
    info["packed"] = {"dtype": PACK_DTYPE, "source": str(source.resolve()), "files": files}
    document = {
        "format": info["format"],
        "format_version": info["format_version"],
        "block": data.block,
        "shard": [1, 1],
        "samples_in_shard": len(data.samples),
        "complete": True,
        "samples": data.samples,
        "failures": data.failures,
        "packed_from": str(source.resolve()),
    }
    write_manifest(output, (1, 1), document, [p["name"] for p in data.info["params"]])
    write_json(output / DATASET_JSON, info)  # last: a folder without it is not a dataset yet
    size = sum(p.stat().st_size for p in (output / PACK_DIR).iterdir()) + sum((output / n).stat().st_size for n in OUTPUTS[:3])
    return PackResult(output, len(data.samples), len(names), len(shards), size)


def packed_summary(result: PackResult) -> str:
    """One line saying what was packed where."""
    return (f"packed {result.samples} samples ({result.images} images, float16) into {result.shards} shard(s) "
            f"in {result.folder}: {result.bytes / 2**20:.1f} MiB")  # fmt: skip

