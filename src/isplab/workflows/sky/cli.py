"""``isplab sky ...``: sky segmentation of HDR and LDR images (synth, train, test, predict, export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from isplab.cli_options import Device, Devices, NumNodes, Overwrite, Progress, Quantize, Resume, Seed, Strategy, Workers, exit_interrupted, trainer_options
from isplab.errors import IsplabError

app = typer.Typer(help="Sky segmentation of HDR panoramas and LDR images (synth, train, test, predict, export).", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)

Model = Annotated[Path, typer.Option("--model", "-m", help="Trained model (model.pt from isplab sky train).")]


# Tiling and refinement options shared by predict and test.
Tile = Annotated[int, typer.Option("--tile", help="Tile side (0: whole image at once).", show_default=True)]
Overlap = Annotated[int, typer.Option("--overlap", help="Pixels shared by neighbouring tiles.", show_default=True)]
Margin = Annotated[int, typer.Option("--margin", help="Pixels of each inner tile edge ignored in the blend.", show_default=True)]
TileBatch = Annotated[int, typer.Option("--tile-batch", help="Tiles per forward pass (more can be faster on a GPU, and needs more memory).", show_default=True)]
# the defaults of isplab.workflows.sky.predict.TileOptions (a test checks they agree)
TILE, OVERLAP, MARGIN, TILE_BATCH = 2048, 896, 384, 1
Refine = Annotated[bool, typer.Option("--refine", help="Refine the soft mask with a guided filter guided by the image.")]
RefineRadius = Annotated[int, typer.Option("--refine-radius", help="Guided filter radius in pixels.", show_default=True)]
RefineEps = Annotated[float, typer.Option("--refine-eps", help="Guided filter epsilon (squared guide units).", show_default=True)]


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Dataset folder to create: images/*.exr and result.json (COCO)."),
    count: int = typer.Option(8, "--count", "-n", help="Number of panoramas.", show_default=True),
    size: str = typer.Option("512x256", "--size", help="Image size WIDTHxHEIGHT.", show_default=True),
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Procedural HDR sky panoramas (sun, clouds, terrain, buildings, trees) with COCO polygon labels."""
    from isplab.workflows.sky.synth import parse_size, synthesize

    result = synthesize(out, count, size=parse_size(size), seed=seed, overwrite=overwrite)
    console.print(f"wrote {len(result.images)} EXR images and {result.annotations}", highlight=False)


@app.command("train")
def train(
    dataset: Path = typer.Argument(..., help="Dataset: a folder with result.json (COCO) or images/ + masks/, or a COCO .json file."),
    model_dir: Path = typer.Argument(..., help="Run folder to create (model.pt, checkpoints/, logs/, config.json, log.txt)."),
    encoder: str = typer.Option("resnet34", "--encoder", help="segmentation_models_pytorch encoder name.", show_default=True),
    encoder_depth: int = typer.Option(5, "--encoder-depth", help="Encoder stages (1-5).", show_default=True),
    encoder_weights: Path | None = typer.Option(None, "--encoder-weights", help="Local encoder state dict (.pth); default: random init."),
    loss: str = typer.Option("jaccard", "--loss", help="Region loss added to BCE: jaccard or dice.", show_default=True),
    patch: int = typer.Option(256, "--patch", help="Patch side in pixels.", show_default=True),
    batch_size: int = typer.Option(8, "--batch-size", help="Patches per step.", show_default=True),
    epochs: int = typer.Option(20, "--epochs", help="Epochs (total, when resuming).", show_default=True),
    patches_per_epoch: int = typer.Option(512, "--patches-per-epoch", help="Random patches per epoch.", show_default=True),
    val_fraction: float = typer.Option(0.25, "--val-fraction", help="Images (not patches) held out for validation.", show_default=True),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (cosine schedule).", show_default=True),
    seed: Seed = 0,
    device: Device = "auto",
    devices: Devices = "auto",
    strategy: Strategy = "auto",
    num_nodes: NumNodes = 1,
    workers: Workers = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Train a U-Net on random patches; split by image; best checkpoint by validation IoU."""
    from isplab.workflows.sky.train import SkyTrainConfig, train_sky

    options = trainer_options(device, devices, strategy, num_nodes)
    config = SkyTrainConfig(
        encoder=encoder,
        encoder_depth=encoder_depth,
        encoder_weights=str(encoder_weights) if encoder_weights else None,
        loss=loss,
        patch=patch,
        batch_size=batch_size,
        epochs=epochs,
        patches_per_epoch=patches_per_epoch,
        val_fraction=val_fraction,
        lr=lr,
        seed=seed,
        workers=workers or 0,
        **options.as_kwargs(),
    )
    from isplab.engine import TrainingInterrupted

    try:
        path = train_sky(dataset, model_dir, config, resume=resume, overwrite=overwrite, progress=progress)
    except TrainingInterrupted as stop:
        exit_interrupted(stop)
    console.print(f"model: {path}", highlight=False)


@app.command("predict")
def predict(
    images: list[Path] = typer.Argument(..., help="Images: EXR, HDR, TIFF, NPY, PNG, JPEG."),
    model: Model = ...,
    output: Path = typer.Option(..., "--output", "-o", help="Folder for <stem>_mask.png, <stem>_alpha.png|exr, <stem>_overlay.png (and <stem>_replaced.exr)."),
    alpha: str = typer.Option("png", "--alpha", help="Soft alpha file: png (16-bit) or exr (float32, channel Y).", show_default=True),
    replace_sky: Path | None = typer.Option(None, "--replace-sky", help="Sky panorama (any input format) to put in place of the sky: writes <stem>_replaced.exr = alpha * panorama + (1 - alpha) * image, the panorama resized to the image."),
    match_exposure: bool = typer.Option(False, "--match-exposure", help="With --replace-sky: scale the panorama so its median luminance over the predicted sky equals the image's there."),
    tile: Tile = TILE,
    overlap: Overlap = OVERLAP,
    margin: Margin = MARGIN,
    tile_batch: TileBatch = TILE_BATCH,
    refine: Refine = False,
    refine_radius: RefineRadius = 4,
    refine_eps: RefineEps = 1e-3,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Binary mask, soft alpha and an overlay per image (optionally the image with its sky replaced), at any size (overlapping tiles)."""
    if match_exposure and replace_sky is None:
        raise IsplabError("--match-exposure needs --replace-sky PANORAMA")
    from isplab.workflows.sky.predict import OutputOptions, RefineOptions, TileOptions, predict_files

    def report(path: Path, error: str | None) -> None:
        if error:
            console.print(f"[red]failed[/] {escape(error)}", highlight=False)
        else:
            console.print(f"done {path}", highlight=False)

    result = predict_files(
        images, model, output, TileOptions(tile, overlap, margin, tile_batch), overwrite=overwrite, device=device,
        refine=RefineOptions(refine_radius, refine_eps) if refine else None,
        outputs=OutputOptions(alpha=alpha, replace_sky=replace_sky, match_exposure=match_exposure), on_file=report,
    )
    if result.failures:
        raise typer.Exit(1)


@app.command("test")
def test(
    dataset: Path = typer.Argument(..., help="Labelled images (COCO folder/JSON or images/ + masks/)."),
    model: Model = ...,
    output: Path = typer.Option(..., "--output", "-o", help="Report folder: metrics.json, per_image.csv, overlays/."),
    held_out: bool = typer.Option(False, "--held-out", help="Only the validation images of the model's run (config.json beside it)."),
    tolerance: float = typer.Option(2.0, "--tolerance", help="Boundary F-score distance tolerance in pixels.", show_default=True),
    tile: Tile = TILE,
    overlap: Overlap = OVERLAP,
    margin: Margin = MARGIN,
    tile_batch: TileBatch = TILE_BATCH,
    refine: Refine = False,
    refine_radius: RefineRadius = 4,
    refine_eps: RefineEps = 1e-3,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """IoU and boundary F-score on labelled images, with a per-image table and overlays."""
    import json

    from rich.table import Table

    from isplab.engine.trainer import resolve_accelerator
    from isplab.workflows.sky.data import open_dataset
    from isplab.workflows.sky.evaluate import evaluate
    from isplab.workflows.sky.model import load_sky_model
    from isplab.workflows.sky.predict import RefineOptions, TileOptions

    samples = open_dataset(dataset)
    if held_out:
        config_file = model.parent / "config.json"
        if not config_file.is_file():
            raise IsplabError(f"--held-out needs the run's {config_file}, which does not exist")
        val = set(json.loads(config_file.read_text()).get("val_images", []))
        samples = [s for s in samples if s.name in val]
        if not samples:
            raise IsplabError(f"none of the validation images listed in {config_file} is in {dataset}")
    net = load_sky_model(model)
    accelerator = resolve_accelerator(device)
    result = evaluate(
        net, samples, output, TileOptions(tile, overlap, margin, tile_batch), tolerance=tolerance, device=accelerator, overwrite=overwrite,
        refine=RefineOptions(refine_radius, refine_eps) if refine else None,
    )
    table = Table("image", "IoU", "boundary F")
    for row in result.rows:
        table.add_row(row["image"], f"{row['iou']:.4f}", f"{row['boundary_f']:.4f}")
    table.add_row("[b]all (pooled IoU, mean F)", f"{result.iou:.4f}", f"{result.boundary_f:.4f}")
    Console().print(table)
    console.print(f"report: {result.folder}", highlight=False)


@app.command("export")
def export(
    model: Path = typer.Argument(..., help="Trained model (model.pt)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="ONNX file (default: MODEL with .onnx)."),
    quantize: Quantize = None,
    overwrite: Overwrite = False,
) -> None:
    """ONNX (image -> sky probability, dynamic size), checked against PyTorch with onnxruntime."""
    from isplab.workflows.sky.export import export_sky

    result = export_sky(model, output, quantize=quantize, overwrite=overwrite)
    worst = max((r.max_abs_diff for r in result.parity), default=float("nan"))
    console.print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB); onnxruntime vs PyTorch max difference {worst:.2e}", highlight=False)
