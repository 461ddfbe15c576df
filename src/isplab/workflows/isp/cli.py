"""``isplab isp ...``: learned smartphone ISP, RAW Bayer to RGB (Mobile AI 2021 challenge).

The seed's scripts map to: ``train_model.py`` -> ``train`` (``--resume`` continues), ``test_model.py``
-> ``test``, full-resolution inference -> ``run``, latency -> ``bench``, TFLite/ONNX -> ``export``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from isplab.errors import IsplabError

app = typer.Typer(help="Learned smartphone ISP: RAW Bayer to RGB (train, test, run, bench, export).", no_args_is_help=True)
console = Console()


def _size(text: str) -> tuple[int, int]:
    """``HxW`` (the challenge writes sizes as 1088x1920: height first)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise IsplabError(f"bad size {text!r}: expected HEIGHTxWIDTH such as 1088x1920") from None
    if h <= 0 or w <= 0 or h % 2 or w % 2:
        raise IsplabError(f"bad size {text!r}: height and width must be positive and even")
    return h, w


@app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="Dataset root: MAI (train/mediatek_raw + fujifilm), Zurich, or a DNG folder."),
    model_dir: Path = typer.Option(Path("models"), "--model-dir", help="Checkpoints, logs and model.pt go here."),
    arch: str = typer.Option("punet", "--arch", help="punet, lfnet or nafnet."),
    num_maps_base: int = typer.Option(16, "--num-maps-base", help="Base channel count (e.g. 8, 16, 32)."),
    patch: int = typer.Option(256, "--patch", help="Raw patch size (input patch/2 x patch/2 x 4, output patch x patch x 3)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Patches per step."),
    lr: float = typer.Option(5e-5, "--lr", help="Adam learning rate."),
    iters: int = typer.Option(100_000, "--iters", help="Training iterations."),
    eval_every: int = typer.Option(1000, "--eval-every", help="Validate every this many iterations."),
    train_size: int = typer.Option(5000, "--train-size", help="Random patches drawn per epoch (re-sampled each epoch)."),
    mse: float = typer.Option(20.0, "--mse", help="Weight of the MSE term."),
    l1: float = typer.Option(0.0, "--l1", help="Weight of the L1 term."),
    ssim: float = typer.Option(20.0, "--ssim", help="Weight of the (1 - SSIM) term."),
    vgg: float = typer.Option(0.0, "--vgg", help="Weight of the VGG-19 relu5_4 content term (needs weights)."),
    vgg_weights: Path | None = typer.Option(None, "--vgg-weights", help="Local VGG-19 weights file (torchvision state dict)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from MODEL_DIR's last checkpoint."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    devices: str = typer.Option("auto", "--devices", help="Devices per node (e.g. 4), for DDP."),
    strategy: str = typer.Option("auto", "--strategy", help="auto or ddp (several GPUs/nodes)."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Machines (torchrun/SLURM set the rest)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a RAW-to-RGB network on patches (the seed's train_model.py)."""
    from isplab.workflows.isp.train import ISPTrainConfig, train_isp

    config = ISPTrainConfig(
        arch=arch, num_maps_base=num_maps_base, patch=patch, batch_size=batch_size, lr=lr, iters=iters,
        eval_every=eval_every, patches_per_epoch=train_size, mse=mse, l1=l1, ssim=ssim, vgg=vgg,
        vgg_weights=vgg_weights, seed=seed, device=device, devices=devices, strategy=strategy, num_nodes=num_nodes,
    )
    best = train_isp(data, model_dir, config, resume=resume, progress=progress)
    console.print(f"best checkpoint: {best}; model: {model_dir / 'model.pt'}")


@app.command("test")
def test(
    data: Path = typer.Option(..., "--data", help="Dataset root."),
    model: Path = typer.Option(..., "--model", help="Model (.pt from isplab isp train)."),
    split: str = typer.Option("test", "--split", help="Which split to score (test, val, train)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write side-by-side images and a report here."),
    max_images: int | None = typer.Option(None, "--max-images", help="Score only the first N images."),
) -> None:
    """PSNR (challenge batch-pooled and per-image mean), SSIM and MS-SSIM on a split."""
    from isplab.models.isp import load_isp_model
    from isplab.workflows.isp.data import open_pairs
    from isplab.workflows.isp.evaluate import test_isp

    result = test_isp(load_isp_model(model), open_pairs(data, split), out_dir=out, max_images=max_images)
    console.print(result.summary())


@app.command("run")
def run(
    raws: list[Path] = typer.Argument(..., help="Raw files (DNG, NEF, ... or 16-bit PNG raws with --packing challenge)."),
    model: Path = typer.Option(..., "--model", help="Model (.pt)."),
    out: Path = typer.Option(..., "--output", "-o", help="Output folder (<stem>.png per input)."),
    tile: int = typer.Option(512, "--tile", help="Tile size in packed pixels (memory bound)."),
    overlap: int = typer.Option(32, "--overlap", help="Overlap between tiles, blended smoothly."),
    packing: str = typer.Option("dng", "--packing", help="dng (black/white level, R Gr Gb B) or challenge (MAI PNG raws)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Full-resolution inference on raw files of any size, in overlapping tiles."""
    from isplab.engine.trainer import resolve_accelerator
    from isplab.models.isp import load_isp_model
    from isplab.workflows.isp.infer import process_files

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
    size: str = typer.Option("1088x1920", "--size", help="Output frame HEIGHTxWIDTH (input is half size, 4 planes)."),
    arch: list[str] = typer.Option(["punet", "lfnet", "nafnet"], "--arch", help="Architectures (repeatable)."),
    num_maps_base: int = typer.Option(16, "--num-maps-base"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    runs: int = typer.Option(5, "--runs", help="Timed runs per backend (median reported)."),
    backend: list[str] = typer.Option(["eager", "compile", "onnxruntime"], "--backend", help="Backends (repeatable)."),
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
    model: Path = typer.Option(..., "--model", help="Model (.pt)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (dynamic + fixed 1x544x960x4) or tflite (fixed)."),
    out: Path | None = typer.Option(None, "--output", "-o", help="Output folder (default: next to the model)."),
    quantize: str | None = typer.Option(None, "--quantize", help="fp16 or int8."),
) -> None:
    """Export with preprocessing inside: a dynamic-size model and the challenge's fixed 1x544x960x4 one."""
    from isplab.models.isp import load_isp_model
    from isplab.workflows.isp.export import export_isp

    paths = export_isp(load_isp_model(model), out or model.parent, format=fmt, quantize=quantize)
    for path in paths:
        console.print(f"wrote {path}")
