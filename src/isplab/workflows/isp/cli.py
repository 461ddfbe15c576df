"""``isplab isp ...``: learned smartphone ISP, RAW Bayer to RGB (Mobile AI 2021 challenge).

The seed's scripts map to: ``train_model.py`` -> ``train`` (``--resume`` continues), ``test_model.py``
-> ``test``, full-resolution inference -> ``run``, latency -> ``bench``, TFLite/ONNX -> ``export``.
Command shapes follow ``docs/conventions.md``: ``train DATASET MODEL_DIR``, ``test DATASET --model M``,
``run RAW... --model M -o OUT``, ``export MODEL``. The old spellings ``--data``/``--model-dir`` and
``--quantize fp16`` are accepted as hidden aliases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from isplab.cli_options import (
    Device,
    Devices,
    NumNodes,
    Overwrite,
    Progress,
    Quantize,
    Resume,
    Seed,
    Strategy,
    exit_interrupted,
    parse_quantize,
    trainer_options,
)
from isplab.errors import IsplabError

app = typer.Typer(help="Learned smartphone ISP: RAW Bayer to RGB (train, test, run, bench, export).", no_args_is_help=True)
console = Console()

Model = Annotated[Path, typer.Option("--model", "-m", help="Trained model (model.pt from isplab isp train).")]
#: hidden alias of the DATASET positional (old spelling)
DataAlias = Annotated[Path | None, typer.Option("--data", hidden=True)]


def _size(text: str) -> tuple[int, int]:
    """``HxW`` (the challenge writes sizes as 1088x1920: height first)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise IsplabError(f"bad size {text!r}: expected HEIGHTxWIDTH such as 1088x1920") from None
    if h <= 0 or w <= 0 or h % 2 or w % 2:
        raise IsplabError(f"bad size {text!r}: height and width must be positive and even")
    return h, w


def _dataset(positional: Path | None, alias: Path | None) -> Path:
    if positional is not None and alias is not None and positional != alias:
        raise IsplabError(f"two datasets given ({positional} and --data {alias}): expected one DATASET")
    dataset = positional or alias
    if dataset is None:
        raise IsplabError("missing DATASET: expected the dataset folder as the first argument")
    return dataset


@app.command("train")
def train(
    dataset: Annotated[Path | None, typer.Argument(metavar="DATASET", help="Dataset root: MAI (train/mediatek_raw + fujifilm), Zurich, or DNG folders train/ and val/ (e.g. from isplab data synth: generated scenes, training cameras).", show_default=False)] = None,
    model_dir: Annotated[Path | None, typer.Argument(metavar="MODEL_DIR", help="Run folder: model.pt, config.json, log.txt, checkpoints/ and logs/ go here.", show_default=False)] = None,
    arch: Annotated[str, typer.Option("--arch", help="punet, lfnet or nafnet.")] = "punet",
    num_maps_base: Annotated[int, typer.Option("--num-maps-base", help="Base channel count (e.g. 8, 16, 32).")] = 16,
    patch: Annotated[int, typer.Option("--patch", help="Raw patch size (input patch/2 x patch/2 x 4, output patch x patch x 3).")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patches per step and per device.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 5e-5,
    iters: Annotated[int, typer.Option("--iters", help="Training iterations (the total, also when resuming).")] = 100_000,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Validate, log and checkpoint every this many iterations.")] = 1000,
    train_size: Annotated[int, typer.Option("--train-size", help="Random patches per epoch (re-drawn each epoch).")] = 5000,
    mse: Annotated[float, typer.Option("--mse", help="Weight of the MSE term.")] = 20.0,
    l1: Annotated[float, typer.Option("--l1", help="Weight of the L1 term.")] = 0.0,
    ssim: Annotated[float, typer.Option("--ssim", help="Weight of the (1 - SSIM) term.")] = 20.0,
    vgg: Annotated[float, typer.Option("--vgg", help="Weight of the VGG-19 relu5_4 content term (needs weights; the challenge recipe uses 1).")] = 0.0,
    vgg_weights: Annotated[Path | None, typer.Option("--vgg-weights", help="Local VGG-19 weights file (torchvision state dict); default: torch's hub cache.", show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", help="Dataloader worker processes per device.")] = 0,
    metadata: Annotated[bool, typer.Option("--metadata/--blind", help="Metadata-aware model: apply each raw's as-shot white balance, colour matrix and exposure (DNG BaselineExposure) before the network (DNG datasets only; MAI/Zurich PNG raws carry none). Blind: the network learns colour too.")] = False,
    cache_mb: Annotated[float, typer.Option("--cache-mb", help="Keep up to this many MB of decoded training raws in memory (0: decode on every patch).")] = 1024.0,
    precision: Annotated[str, typer.Option("--precision", help="32-true, or bf16-mixed (bf16 autocast on GPUs that support it), 16-mixed.")] = "32-true",
    channels_last: Annotated[bool, typer.Option("--channels-last/--no-channels-last", help="NHWC memory format for the network and batches.")] = False,
    exposure: Annotated[bool, typer.Option("--exposure/--no-exposure", help="Blind models: brighten each raw by its own exposure (DNG BaselineExposure) before the network, and nothing else (DNG datasets only). Metadata-aware models always do.")] = False,
    prior: Annotated[str, typer.Option("--prior", help="classical: the model is a classical render (demosaic, gamma, tone; blind models also grey-world, auto-exposure, an average camera matrix) plus the network's correction, and starts equal to that render (DNG datasets, RGGB). none: the network alone.")] = "none",
    resume: Resume = False,
    overwrite: Overwrite = False,
    seed: Seed = 0,
    device: Device = "auto",
    devices: Devices = "auto",
    strategy: Strategy = "auto",
    num_nodes: NumNodes = 1,
    progress: Progress = True,
    data: DataAlias = None,
    model_dir_alias: Annotated[Path | None, typer.Option("--model-dir", hidden=True)] = None,
) -> None:
    """Train a RAW-to-RGB network on patches (the seed's train_model.py)."""
    from isplab.workflows.isp.train import ISPTrainConfig, train_isp
    from isplab.engine import TrainingInterrupted

    if data is not None and model_dir is None and dataset is not None and dataset != data:
        dataset, model_dir = None, dataset  # `--data D M`: the one positional is the model folder
    data_root = _dataset(dataset, data)
    if model_dir is not None and model_dir_alias is not None and model_dir != model_dir_alias:
        raise IsplabError(f"two model folders given ({model_dir} and --model-dir {model_dir_alias}): expected one MODEL_DIR")
    model_dir = model_dir or model_dir_alias
    if model_dir is None:
        if data is None:
            raise IsplabError("missing MODEL_DIR: expected the run folder as the second argument")
        model_dir = Path("models")  # the old --data/--model-dir spelling's default
    options = trainer_options(device, devices, strategy, num_nodes)
    config = ISPTrainConfig(
        arch=arch, num_maps_base=num_maps_base, patch=patch, batch_size=batch_size, lr=lr, iters=iters,
        eval_every=eval_every, patches_per_epoch=train_size, mse=mse, l1=l1, ssim=ssim, vgg=vgg,
        vgg_weights=vgg_weights, seed=seed, workers=workers, metadata=metadata, exposure=exposure, cache_mb=cache_mb,
        precision=None if precision == "32-true" else precision, channels_last=channels_last, prior=prior,
        **options.as_kwargs(),
    )
    try:
        best = train_isp(data_root, model_dir, config, resume=resume, overwrite=overwrite, progress=progress)
    except TrainingInterrupted as stop:
        exit_interrupted(stop)
    console.print(f"best checkpoint: {best}; model: {model_dir / 'model.pt'}")


@app.command("test")
def test(
    dataset: Annotated[Path | None, typer.Argument(metavar="DATASET", help="Dataset root (as for train).", show_default=False)] = None,
    model: Model = ...,
    split: Annotated[str, typer.Option("--split", help="Which split to score (test, val, train).")] = "test",
    out: Annotated[Path | None, typer.Option("--output", "-o", help="Write side-by-side images and report.html here.", show_default=False)] = None,
    max_images: Annotated[int | None, typer.Option("--max-images", help="Score only the first N images (default: all).", show_default=False)] = None,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also score the classical baselines (oracle metadata, grey-world, LibRaw, grey-world with auto exposure) on the same raws; DNG folders only.")] = True,
    device: Device = "auto",
    overwrite: Overwrite = False,
    data: DataAlias = None,
    out_alias: Annotated[Path | None, typer.Option("--out", hidden=True)] = None,
) -> None:
    """PSNR (challenge batch-pooled and per-image mean), SSIM, MS-SSIM and ΔE2000 on a split, the worst images, and the baselines.

    The held-out set of real photographs (held-out cameras): `isplab data synth HELDOUT --source heldout -n 16`, then `isplab isp test HELDOUT -m MODEL`.
    """
    from isplab.engine.trainer import resolve_accelerator
    from isplab.models.isp import load_isp_model
    from isplab.workflows.isp.data import open_pairs
    from isplab.workflows.isp.evaluate import BASELINES, test_isp
    from isplab.workflows.isp.infer import source_for

    if out is not None and out_alias is not None and out != out_alias:
        raise IsplabError(f"two output folders given ({out} and --out {out_alias}): expected one --output")
    out = out or out_alias
    source = open_pairs(_dataset(dataset, data), split)
    accelerator = resolve_accelerator(device)
    chosen = BASELINES if baselines and source.packing == "dng" else ()
    network = load_isp_model(model)
    source = source_for(network, source)  # a metadata-aware model gets its colour-corrected input
    result = test_isp(network, source, out_dir=out, max_images=max_images, device=accelerator,
                      overwrite=overwrite, baselines=chosen)
    console.print(result.summary())


@app.command("run")
def run(
    raws: Annotated[list[Path], typer.Argument(metavar="RAW", help="Raw files (DNG, NEF, ... or 16-bit PNG raws with --packing challenge).")],
    model: Model = ...,
    out: Annotated[Path, typer.Option("--output", "-o", help="Output folder (<stem>.png per input).")] = ...,
    tile: Annotated[int, typer.Option("--tile", help="Tile size in packed pixels (memory bound).")] = 512,
    overlap: Annotated[int, typer.Option("--overlap", help="Overlap between tiles, blended smoothly.")] = 32,
    packing: Annotated[str, typer.Option("--packing", help="dng (black/white level, R Gr Gb B) or challenge (MAI PNG raws).")] = "dng",
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Full-resolution inference on raw files of any size, in overlapping tiles."""
    from isplab.engine.trainer import resolve_accelerator
    from isplab.models.isp import load_isp_model
    from isplab.workflows.isp.infer import check_outputs, process_files

    check_outputs(raws, out, overwrite=overwrite)  # before loading anything
    result = process_files(raws, load_isp_model(model), out, tile=tile, overlap=overlap, packing=packing,
                           device=resolve_accelerator(device), overwrite=overwrite)
    for path in result.written:
        console.print(f"wrote {path}")
    for path, message in result.failed:
        console.print(f"[red]failed[/] {path}: {message}", highlight=False)
    if result.failed:
        raise typer.Exit(1)


@app.command("bench")
def bench(
    size: Annotated[str, typer.Option("--size", help="Output frame HEIGHTxWIDTH (input is half size, 4 planes).")] = "1088x1920",
    arch: Annotated[list[str], typer.Option("--arch", help="Architectures (repeatable).")] = ["punet", "lfnet", "nafnet"],  # noqa: B006
    num_maps_base: Annotated[int, typer.Option("--num-maps-base", help="Base channel count.")] = 16,
    device: Device = "cpu",
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per backend (median reported).")] = 5,
    backend: Annotated[list[str], typer.Option("--backend", help="Backends (repeatable).")] = ["eager", "compile", "onnxruntime"],  # noqa: B006
) -> None:
    """Latency of one frame for PyTorch eager, torch.compile and ONNX Runtime."""
    from isplab.engine.trainer import resolve_accelerator
    from isplab.workflows.isp.bench import latency_table

    rows = latency_table(arch, size=_size(size), device=resolve_accelerator(device), runs=runs,
                         backends=tuple(backend), num_maps_base=num_maps_base)
    table = Table(title=f"latency, {size} output, {device}")
    columns = list(rows[0].keys()) if rows else []
    for column in columns:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)


@app.command("export")
def export(
    model: Annotated[Path | None, typer.Argument(metavar="MODEL", help="Model (model.pt from isplab isp train).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder (default: the model's folder).", show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx (dynamic + fixed 1x544x960x4) or tflite (fixed).")] = "onnx",
    quantize: Quantize = None,
    overwrite: Overwrite = False,
    model_alias: Annotated[Path | None, typer.Option("--model", hidden=True)] = None,
) -> None:
    """Export with preprocessing inside: a dynamic-size model and the challenge's fixed 1x544x960x4 one."""
    from isplab.models.isp import load_isp_model
    from isplab.workflows.isp.export import export_isp, export_paths

    if model is not None and model_alias is not None and model != model_alias:
        raise IsplabError(f"two models given ({model} and --model {model_alias}): expected one MODEL")
    model = model or model_alias
    if model is None:
        raise IsplabError("missing MODEL: expected the model file (model.pt) as the argument")
    precision = parse_quantize(quantize)
    out_dir = out or model.parent
    network = load_isp_model(model)
    export_paths(network, out_dir, format=fmt, quantize=precision, overwrite=overwrite)  # refuse before exporting
    for path in export_isp(network, out_dir, format=fmt, quantize=precision, overwrite=overwrite):
        console.print(f"wrote {path}")
