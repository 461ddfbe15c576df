"""``isplab proxy generate``: (input, output, parameters) triples of one block, rendered in parallel.

The sample list is a pure function of the command (block, parameter ranges, ``-n``, seed, images,
size, backend): sample ``i`` has the ``i``-th row of a Latin hypercube over the varied
parameters and image ``i mod M``. That makes the work

* **resumable**: a sample whose record exists is skipped, so re-running the same command
  completes a partial dataset (a different command into a non-empty folder is refused without
  ``--overwrite``);
* **shardable with no coordination**: ``--shard I/N`` takes the samples with ``i mod N = I - 1``;
  every shard writes its own files and its own manifest part, and writes shared files
  (``dataset.json``, synthetic DNGs, the block-off renders) atomically, identically.

Images are split into train and validation **by image**, recorded in ``dataset.json`` and in
every sample record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from isplab import __version__
from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir, remove_outputs
from isplab.workflows.proxy.render_worker import _run_task, _worker_init
from isplab.workflows.proxy.blocks import Block, ParamSpec, get_block, parse_param_specs
from isplab.workflows.proxy.dataset import (
    DATASET_JSON,
    ENTRIES,
    FORMAT,
    FORMAT_VERSION,
    sample_id,
    write_json,
    write_manifest,
)

__all__ = ["GenerateOptions", "GenerateResult", "latin_hypercube", "parse_shard", "generate", "BACKENDS"]

BACKENDS = ("darktable", "builtin")
SYNTH_SIZE = (512, 384)  # synthetic DNGs when --size is not given


@dataclass
class GenerateOptions:
    """Everything ``isplab proxy generate`` takes."""

    block: str
    output: Path
    count: int
    params: list[str] | None = None
    images: Path | None = None
    backend: str = "darktable"
    workers: int | None = None
    shard: tuple[int, int] = (1, 1)
    size: tuple[int, int] | None = None
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    synth_images: int = 8
    val_fraction: float = 0.25
    darktable_cli: str | None = None


@dataclass
class GenerateResult:
    """What a run did."""

    output: Path
    rendered: list[dict] = field(default_factory=list)  # samples completed by this run
    skipped: int = 0  # samples already complete
    failures: list[dict] = field(default_factory=list)
    manifest: Path | None = None
    darktable_version: str | None = None
    layout_checked: bool = False


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` (1 <= I <= N) -> ``(I, N)``; ``None`` -> ``(1, 1)``.

    Raises:
        IsplabError: another form.
    """
    if text is None:
        return 1, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise IsplabError(f"bad --shard {text!r}: expected I/N with 1 <= I <= N, e.g. 3/8")
    return int(match[1]), int(match[2])


def latin_hypercube(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, d)`` points in [0, 1): each column has exactly one point in each of the ``n`` strata
    ``[k/n, (k+1)/n)``, the strata paired across columns at random."""
    u = rng.random((n, d))
    strata = np.stack([rng.permutation(n) for _ in range(d)], axis=1) if d else np.zeros((n, 0))
    return (strata + u) / n


# --------------------------------------------------------------------------------------------
# the plan: images, split, samples


@dataclass
class _Image:
    id: str
    path: Path  # absolute
    file: str  # as recorded: relative to the dataset for synthetic images, else absolute
    split: str
    sha256: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _user_images(folder: Path) -> list[tuple[str, Path]]:
    from isplab.io.raw import read_raw

    if not folder.is_dir():
        raise IsplabError(f"--images {folder} does not exist or is not a folder: expected a folder of .dng files")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dng")
    if not files:
        raise IsplabError(f"--images {folder} holds no .dng files")
    for path in files:
        read_raw(path)  # a corrupt or non-Bayer file is refused here, naming it, before any work
    return [(p.stem, p.resolve()) for p in files]


def _split(ids: list[str], fraction: float, seed: int) -> dict[str, str]:
    order = np.random.default_rng([seed, 1]).permutation(len(ids))
    n_val = 0
    if len(ids) >= 2 and fraction > 0:
        n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    val = {ids[k] for k in order[:n_val]}
    return {i: ("val" if i in val else "train") for i in ids}


def _samples(block: Block, specs: dict[str, ParamSpec], count: int, seed: int, images: list[_Image]) -> list[dict]:
    varied = [p.name for p in block.params if specs[p.name].varied]
    unit = latin_hypercube(count, len(varied), np.random.default_rng([seed, 0]))
    samples = []
    for i in range(count):
        values = {}
        normalized = {}
        for p in block.params:
            spec = specs[p.name]
            if spec.varied:
                u = float(unit[i, varied.index(p.name)])
                value = spec.low + u * (spec.high - spec.low)
                normalized[p.name] = u
            else:
                value = spec.low
            values[p.name] = float(np.float32(value))  # what the float32 struct field holds
        image = images[i % len(images)]
        samples.append({"index": i, "id": sample_id(i), "image": image.id, "params": values, "unit": normalized})
    return samples


# --------------------------------------------------------------------------------------------


def _settings(opts: GenerateOptions, block: Block, specs: dict[str, ParamSpec], images: list[_Image], dt_version: str | None) -> dict:
    """What makes two runs the same dataset (compared on resume)."""
    source = (
        {"kind": "synthetic", "count": len(images), "seed": opts.seed}
        if opts.images is None
        else {"kind": "folder", "files": [{"id": im.id, "sha256": im.sha256} for im in images]}
    )
    return {
        "block": block.name,
        "ranges": {n: [s.low, s.high] for n, s in specs.items()},
        "count": opts.count,
        "seed": opts.seed,
        "backend": opts.backend,
        "darktable_version": dt_version,
        "size": list(opts.size) if opts.size else None,
        "images": source,
        "val_fraction": opts.val_fraction,
    }


def _describe(opts, block, specs, images, settings, darktable) -> dict:
    params = []
    for p in block.params:
        spec = specs[p.name]
        params.append({**p.as_dict(), "varied": spec.varied, "range": [spec.low, spec.high]})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "isplab_version": __version__,
        "block": block.name,
        "operation": block.operation,
        "modversion": block.modversion,
        "struct_bytes": block.struct_bytes,
        "space": block.space,
        "before_demosaic": block.before_demosaic,
        "params": params,
        "varied": [p["name"] for p in params if p["varied"]],
        "fixed_fields": block.as_dict()["fixed_fields"],
        "count": opts.count,
        "seed": opts.seed,
        "backend": opts.backend,
        "darktable": None if darktable is None else {"version": darktable.version, "cli": darktable.cli},
        "size": list(opts.size) if opts.size else None,
        "val_fraction": opts.val_fraction,
        "images": [{"id": im.id, "file": im.file, "split": im.split, "sha256": im.sha256} for im in images],
        "image_format": {
            "file": "TIFF, float32, (H, W, 3), uncompressed",
            "colour": "linear Rec.709 primaries (D65), unclipped (values may be < 0 or > 1)",
            "input": "inputs/<image>.tif: the block off",
            "output": "outputs/<id>.tif: the block on with the sample's params",
        },
        "base_pipeline": _base_pipeline(block, opts.backend),
        "settings": settings,
    }


def _base_pipeline(block: Block, backend: str) -> str:
    wb = "no white balance" if block.name == "temperature" else "the raw's as-shot white balance"
    if backend == "darktable":
        return (
            f"darktable-cli: rawprepare, temperature ({wb}, written in the XMP), highlights off, demosaic (default), "
            "colorin (default), colorout LIN_REC709, float32 TIFF; no exposure/filmic (workflow none, auto presets off)"
        )
    return f"isplab: black/white levels, {wb} on the mosaic, bilinear demosaic, DNG colour matrix to linear Rec.709"


def _prepare_folder(out: Path, settings: dict, overwrite: bool) -> bool:
    """Check OUTPUT_DIR; returns whether an identical dataset is being resumed.

    An empty or new folder starts a dataset. A folder holding this same dataset resumes it
    (or, with ``overwrite``, replaces it). Anything else is refused without ``overwrite``;
    with it, the previous dataset's entries are deleted and other files left alone.
    """
    existing = None
    meta = out / DATASET_JSON
    if meta.is_file():
        try:
            described = json.loads(meta.read_text())
            existing = described.get("settings")
        except (ValueError, AttributeError):
            described, existing = None, None
        if isinstance(described, dict) and described.get("packed") is not None and not overwrite:
            raise IsplabError(f"{out} holds a packed dataset (isplab proxy pack): generate into the original folder, or pass --overwrite")
    same = existing == settings
    if same and not overwrite:
        prepare_output_dir(out, resume=True, what="dataset folder")
        return True
    # Transient files of another shard starting at the same moment (write probes, files being
    # renamed into place) are not a previous dataset.
    names = None
    if out.is_dir():
        names = [p.name for p in out.iterdir() if not (p.name.startswith(".isplab-write-check-") or p.name.endswith(".tmp"))]
    prepare_output_dir(out, overwrite=overwrite, names=names, what="dataset folder")
    if overwrite:
        remove_outputs(out, ENTRIES)
        for part in [*out.glob("manifest*.json"), *out.glob("manifest*.csv")]:
            part.unlink()
    return False


def _synthesize(images: list[_Image], opts: GenerateOptions) -> None:
    """Write the synthetic DNGs that are missing (atomically: shards may race)."""
    missing = [im for im in images if not im.path.is_file()]
    if not missing:
        return
    from isplab.data.synth import SensorSpec, synthesize_raw
    from isplab.io.dng import write_dng

    sensor = SensorSpec()
    size = opts.size or SYNTH_SIZE
    for im in missing:
        index = int(im.id.split("_")[-1])
        raw = synthesize_raw(index, opts.seed, size, sensor)[0]
        tmp = im.path.with_name(f".{im.path.stem}.{socket.gethostname()}-{os.getpid()}.tmp.dng")
        write_dng(tmp, raw, overwrite=True)
        os.replace(tmp, im.path)


def _wb_gains(path: Path) -> list[float]:
    from isplab.io.raw import read_raw

    return [float(g) for g in read_raw(path).wb_gains]


def generate(opts: GenerateOptions) -> GenerateResult:
    """Generate (or complete) this shard's part of a proxy dataset. See the module docstring.

    Raises:
        IsplabError: before any rendering: an unknown block or parameter, a range outside
            darktable's, a bad ``-n``/``--workers``/``--shard``/``--size``, darktable missing or
            unsupported, an unreadable input DNG, or an output folder holding something else
            (without ``--overwrite``).
    """
    block = get_block(opts.block)
    specs = parse_param_specs(block, opts.params)
    if opts.count < 1:
        raise IsplabError(f"-n must be at least 1, got {opts.count}")
    if opts.backend not in BACKENDS:
        raise IsplabError(f"unknown --backend {opts.backend!r}: expected one of {', '.join(BACKENDS)}")
    if opts.backend == "builtin" and not block.builtin:
        raise IsplabError(f"block {block.name} has no builtin op: generate it with --backend darktable")
    if opts.workers is not None and opts.workers < 1:
        raise IsplabError(f"--workers must be at least 1, got {opts.workers}")
    if opts.synth_images < 1:
        raise IsplabError(f"--synth-images must be at least 1, got {opts.synth_images}")
    if not 0 <= opts.val_fraction < 1:
        raise IsplabError(f"--val-fraction must be in [0, 1), got {opts.val_fraction}")
    shard_i, shard_n = opts.shard
    out = Path(opts.output)

    darktable = None
    result = GenerateResult(out)
    if opts.backend == "darktable":
        from isplab.workflows.proxy.darktable import check_layouts, find_darktable

        darktable = find_darktable(opts.darktable_cli)
        result.layout_checked = check_layouts(darktable, [block] + ([] if block.name == "temperature" else [get_block("temperature")]))
        result.darktable_version = darktable.version

    if opts.images is not None:
        found = _user_images(Path(opts.images))
        names = [name for name, _ in found]
        split = _split(names, opts.val_fraction, opts.seed)
        images = [_Image(name, path, str(path), split[name], _sha256(path)) for name, path in found]
    else:
        m = min(opts.synth_images, opts.count)
        names = [f"synth_{j:05d}" for j in range(m)]
        split = _split(names, opts.val_fraction, opts.seed)
        images = [_Image(name, (out / "images" / f"{name}.dng").resolve(), f"images/{name}.dng", split[name]) for name in names]

    settings = _settings(opts, block, specs, images, result.darktable_version)
    _prepare_folder(out, settings, opts.overwrite)
    if not (out / DATASET_JSON).is_file():  # first, so that a shard starting later sees whose folder it is
        write_json(out / DATASET_JSON, _describe(opts, block, specs, images, settings, darktable))
    for sub in ("images", "inputs", "outputs") + (("xmp",) if darktable else ()):
        (out / sub).mkdir(exist_ok=True)

    samples = _samples(block, specs, opts.count, opts.seed, images)
    mine = [s for s in samples if s["index"] % shard_n == shard_i - 1]
    pending = [s for s in mine if not ((out / "outputs" / f"{s['id']}.json").is_file() and (out / "outputs" / f"{s['id']}.tif").is_file())]
    result.skipped = len(mine) - len(pending)
    by_id = {im.id: im for im in images}
    needed = [by_id[i] for i in dict.fromkeys(s["image"] for s in pending)]
    if opts.images is None:
        _synthesize(needed, opts)

    workers = opts.workers or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // workers)
    workdir = out / ".work" / f"{socket.gethostname()}-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    common = {
        "block": block.name,
        "backend": opts.backend,
        "size": list(opts.size) if (opts.size and opts.images is not None) else None,
        "workdir": str(workdir),
        "darktable": None if darktable is None else {"cli": darktable.cli, "version": darktable.version, "plugin_dir": darktable.plugin_dir},
    }
    wb = {im.id: _wb_gains(im.path) for im in needed} if darktable else {}
    tasks = []
    for im in needed:
        if not (out / "inputs" / f"{im.id}.json").is_file():
            tasks.append({**common, "kind": "input", "image": im.id, "dng": str(im.path), "values": None,
                          "wb_gains": wb.get(im.id), "output": str(out / "inputs" / f"{im.id}.tif"),
                          "xmp": str(out / "xmp" / f"{im.id}.xmp")})  # fmt: skip
    for s in pending:
        im = by_id[s["image"]]
        tasks.append({**common, "kind": "sample", "sample": s, "image": im.id, "dng": str(im.path), "values": s["params"],
                      "wb_gains": wb.get(im.id), "output": str(out / "outputs" / f"{s['id']}.tif"),
                      "xmp": str(out / "xmp" / f"{s['id']}.xmp")})  # fmt: skip

    failed_inputs: dict[str, str] = {}
    try:
        _execute(tasks, workers, threads, opts, result, failed_inputs, images=by_id, darktable=darktable, out=out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            (out / ".work").rmdir()
        except OSError:
            pass  # another shard is still working there
        result.manifest = _write_part(out, block, samples, mine, result, opts.shard, darktable)
    return result


def _execute(tasks, workers, threads, opts, result, failed_inputs, *, images, darktable, out) -> None:
    inputs = [t for t in tasks if t["kind"] == "input"]
    samples = [t for t in tasks if t["kind"] == "sample"]

    def finish(task: dict, outcome: dict) -> None:
        if task["kind"] == "input":
            if outcome["ok"]:
                record = {"image": task["image"], "input": f"inputs/{task['image']}.tif", "render_seconds": round(outcome["seconds"], 4),
                          "xmp": f"xmp/{task['image']}.xmp" if darktable else None}  # fmt: skip
                write_json(out / "inputs" / f"{task['image']}.json", record)
            else:
                failed_inputs[task["image"]] = outcome["error"]
            return
        s = task["sample"]
        if not outcome["ok"]:
            result.failures.append({"id": s["id"], "index": s["index"], "image": s["image"], "params": s["params"], "error": outcome["error"]})
            return
        record = _record(s, images[s["image"]], outcome["seconds"], opts, darktable, out)
        write_json(out / "outputs" / f"{s['id']}.json", record)
        result.rendered.append(record)

    progress = None
    if opts.progress and tasks:
        from rich.progress import Progress

        progress = Progress(transient=False)
        progress.start()
        bar = progress.add_task(f"rendering {opts.block} ({opts.backend})", total=len(tasks))
    try:
        if workers == 1 or len(tasks) <= 1:
            import torch

            caller_threads = torch.get_num_threads()  # rendering here must not change the caller's setting
            _worker_init(tasks[0]["workdir"] if tasks else ".", threads, opts.backend)
            try:
                for phase in (inputs, samples):
                    for task in phase:
                        if task["kind"] == "sample" and task["image"] in failed_inputs:
                            finish(task, {"ok": False, "error": f"input render failed: {failed_inputs[task['image']]}", "seconds": 0.0})
                        else:
                            finish(task, _run_task(task))
                        if progress:
                            progress.advance(bar)
            finally:
                torch.set_num_threads(caller_threads)
            return
        context = get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(tasks[0]["workdir"], threads, opts.backend)) as pool:  # fmt: skip
            for phase in (inputs, samples):
                running = {}
                for task in phase:
                    if task["kind"] == "sample" and task["image"] in failed_inputs:
                        finish(task, {"ok": False, "error": f"input render failed: {failed_inputs[task['image']]}", "seconds": 0.0})
                        if progress:
                            progress.advance(bar)
                        continue
                    running[pool.submit(_run_task, task)] = task
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        finish(running.pop(future), future.result())
                        if progress:
                            progress.advance(bar)
    finally:
        if progress:
            progress.stop()


def _record(s: dict, image: _Image, seconds: float, opts: GenerateOptions, darktable, out: Path) -> dict:
    import tifffile

    with tifffile.TiffFile(out / "outputs" / f"{s['id']}.tif") as tif:
        h, w = tif.pages[0].shape[:2]
    return {
        "id": s["id"],
        "index": s["index"],
        "image": s["image"],
        "split": image.split,
        "input": f"inputs/{s['image']}.tif",
        "output": f"outputs/{s['id']}.tif",
        "xmp": f"xmp/{s['id']}.xmp" if darktable else None,
        "params": s["params"],
        "unit": s["unit"],
        "backend": opts.backend,
        "darktable_version": darktable.version if darktable else None,
        "render_seconds": round(seconds, 4),
        "width": int(w),
        "height": int(h),
    }


def _write_part(out: Path, block: Block, samples: list[dict], mine: list[dict], result: GenerateResult, shard, darktable) -> Path:
    records = []
    for s in mine:
        path = out / "outputs" / f"{s['id']}.json"
        if path.is_file() and (out / "outputs" / f"{s['id']}.tif").is_file():
            try:
                records.append(json.loads(path.read_text()))
            except ValueError:
                pass  # unreadable: treated as not done, re-rendered next run
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "block": block.name,
        "shard": list(shard),
        "samples_in_shard": len(mine),
        "complete": len(records) == len(mine),
        "samples": records,
        "failures": result.failures,
        "written_by": {"isplab": __version__, "host": socket.gethostname(), "python": sys.version.split()[0]},
    }
    json_path, _ = write_manifest(out, tuple(shard), document, list(block.param_names))
    return json_path
