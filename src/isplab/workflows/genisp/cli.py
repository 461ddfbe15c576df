"""``isplab genisp ...``: GenISP, a minimal neural ISP trained through a frozen detector
(synth, detector train, train, test, run, export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

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
    Workers,
    exit_interrupted,
    trainer_options,
)
from isplab.errors import IsplabError

app = typer.Typer(help="GenISP: minimal neural ISP for low-light object detection (synth, detector train, train, test, run, export).",
                  no_args_is_help=True)
detector_app = typer.Typer(help="The detector GenISP is trained through (train it on normal-light images).", no_args_is_help=True)
app.add_typer(detector_app, name="detector")
console = Console(stderr=True, soft_wrap=True)

Model = Annotated[Path, typer.Option("--model", "-m", help="Trained GenISP model (model.pt from isplab genisp train).")]
DetectorFile = Annotated[Path, typer.Option("--detector", help="Detector file (detector.pt from isplab genisp detector train).")]
Camera = Annotated[str, typer.Option("--camera", help="Camera of a synth dataset (its raw/<camera>/ and annotations).", show_default=True)]
ImageDir = Annotated[Path | None, typer.Option("--images", help="Image folder of a COCO JSON DATASET (default: the JSON's folder).")]
Short = Annotated[int | None, typer.Option("--short", help="Shorter image side after resizing (default: the detector's).")]
Long = Annotated[int | None, typer.Option("--long", help="Cap on the longer side (default: the detector's).")]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise IsplabError(f"bad --size {text!r}: expected WIDTHxHEIGHT such as 640x426") from None
    return w, h


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Dataset folder to create: normal/, raw/<camera>/, annotations/, manifest.json."),
    count: int = typer.Option(500, "--count", "-n", help="Number of scenes.", show_default=True),
    size: str = typer.Option("640x426", "--size", help="Sensor size WIDTHxHEIGHT (even).", show_default=True),
    cameras: str = typer.Option("cam-a,cam-b", "--cameras", help="Synthetic cameras, comma-separated (cam-a, cam-b, cam-c).", show_default=True),
    seed: Seed = 0,
    workers: Workers = None,
    shard: str | None = typer.Option(None, "--shard", help="I/N: make only this shard's scenes (1-based)."),
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """A synthetic low-light detection dataset: normal-light sRGB renders and noisy dark raws per camera."""
    import os

    from isplab.workflows.genisp.synth import parse_shard, synthesize

    result = synthesize(out, count=count, seed=seed, size=_size(size), cameras=tuple(c.strip() for c in cameras.split(",") if c.strip()),
                        workers=workers or os.cpu_count() or 1, shard=parse_shard(shard) if shard else None,
                        overwrite=overwrite, progress=progress)
    for failure in result.failures:
        console.print(f"[red]failed[/] {failure['id']}: {escape(str(failure['error']))}", highlight=False)
    console.print(f"wrote {len(result.images)} scenes to {result.out_dir} in {result.seconds:.0f} s", highlight=False)
    if result.failures:
        raise typer.Exit(1)


@detector_app.command("train")
def detector_train(
    dataset: Path = typer.Argument(..., help="Synth dataset folder (annotations/normal_*.json) or a COCO JSON file of sRGB images."),
    out_dir: Path = typer.Argument(..., help="Run folder to create (detector.pt, checkpoints/, logs/, config.json, log.txt)."),
    detector: str = typer.Option("retinanet_resnet18_fpn", "--name", help="isplab's small detector or any torchvision detection model.", show_default=True),
    weights: str | None = typer.Option(None, "--detector-weights", help="Start from DEFAULT (torchvision's, downloaded) or a local state-dict file."),
    images: ImageDir = None,
    val_annotations: Path | None = typer.Option(None, "--val", help="Validation COCO JSON (a synth folder has its own)."),
    short: int = typer.Option(800, "--short", help="Shorter image side (the detector's min_size).", show_default=True),
    long: int = typer.Option(1333, "--long", help="Cap on the longer side (max_size).", show_default=True),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per step.", show_default=True),
    epochs: int = typer.Option(30, "--epochs", help="Epochs (total, when resuming).", show_default=True),
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
    """Train a detector on the normal-light images (the stand-in for a COCO-pretrained one)."""
    from isplab.engine import TrainingInterrupted
    from isplab.workflows.genisp.train import DetectorTrainConfig, train_detector

    options = trainer_options(device, devices, strategy, num_nodes)
    config = DetectorTrainConfig(detector=detector, weights=weights, short=short, long=long, batch_size=batch_size, epochs=epochs, lr=lr,
                                 seed=seed, workers=workers or 0, image_dir=str(images) if images else None,
                                 val_annotations=str(val_annotations) if val_annotations else None, **options.as_kwargs())
    try:
        path = train_detector(dataset, out_dir, config, resume=resume, overwrite=overwrite, progress=progress)
    except TrainingInterrupted as stop:
        exit_interrupted(stop)
    console.print(f"detector: {path}", highlight=False)


@app.command("train")
def train(
    dataset: Path = typer.Argument(..., help="Synth dataset folder or a COCO JSON file of raws (RAW-NOD, LOD)."),
    model_dir: Path = typer.Argument(..., help="Run folder to create (model.pt, checkpoints/, logs/, config.json, log.txt)."),
    detector: Annotated[Path | None, typer.Option("--detector", help="Detector file (detector.pt from isplab genisp detector train).")] = None,
    detector_weights: str | None = typer.Option(None, "--detector-weights",
                                                help="Instead of --detector: DEFAULT (torchvision's COCO weights, downloaded) or a torchvision state-dict file."),
    detector_name: str = typer.Option("retinanet_resnet50_fpn", "--detector-name", help="torchvision detection model for --detector-weights.",
                                      show_default=True),
    detector_classes: int = typer.Option(91, "--detector-classes", help="Classes of a --detector-weights state dict (COCO: 91).", show_default=True),
    camera: Camera = "cam-a",
    images: ImageDir = None,
    val_annotations: Path | None = typer.Option(None, "--val", help="Validation COCO JSON (a synth folder has its own)."),
    short: Short = None,
    long: Long = None,
    batch_size: int = typer.Option(8, "--batch-size", help="Images per step.", show_default=True),
    epochs: int = typer.Option(15, "--epochs", help="Epochs (total, when resuming).", show_default=True),
    lr: float = typer.Option(1e-2, "--lr", help="Adam learning rate.", show_default=True),
    milestones: str = typer.Option("5,10", "--milestones", help="Epochs at which the learning rate is multiplied by 0.1.", show_default=True),
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
    """Train GenISP on one camera's raws through the frozen detector's own loss."""
    from isplab.engine import TrainingInterrupted
    from isplab.workflows.genisp.train import GenISPTrainConfig, train_genisp

    try:
        steps = [int(v) for v in milestones.split(",") if v.strip()]
    except ValueError:
        raise IsplabError(f"bad --milestones {milestones!r}: expected epochs such as 5,10") from None
    options = trainer_options(device, devices, strategy, num_nodes)
    config = GenISPTrainConfig(camera=camera, short=short, long=long, batch_size=batch_size, epochs=epochs, lr=lr, milestones=steps,
                               seed=seed, workers=workers or 0, image_dir=str(images) if images else None,
                               val_annotations=str(val_annotations) if val_annotations else None, detector_name=detector_name,
                               detector_weights=detector_weights, detector_classes=detector_classes, **options.as_kwargs())
    try:
        path = train_genisp(dataset, model_dir, detector, config, resume=resume, overwrite=overwrite, progress=progress)
    except TrainingInterrupted as stop:
        exit_interrupted(stop)
    console.print(f"model: {path}", highlight=False)


@app.command("test")
def test(
    dataset: Path = typer.Argument(..., help="Synth dataset folder or a COCO JSON file of raws."),
    model: Model = ...,
    detector: DetectorFile = ...,
    output: Path = typer.Option(..., "--output", "-o", help="Report folder: metrics.json, table.txt, images/."),
    camera: Camera = "cam-a",
    split: str = typer.Option("test", "--split", help="Split of a synth dataset.", show_default=True),
    images: ImageDir = None,
    inputs: str = typer.Option("raw,classical,genisp,normal", "--inputs",
                               help="Inputs to compare: raw (packed), classical (isplab's ISP), genisp, normal (synth only).", show_default=True),
    short: Short = None,
    long: Long = None,
    keep: int = typer.Option(4, "--keep", help="Images per input drawn with their boxes.", show_default=True),
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """COCO AP (AP, AP50, AP75, per class) of the frozen detector on GenISP and on the baselines."""
    from isplab.engine.trainer import resolve_accelerator
    from isplab.models.genisp import load_genisp
    from isplab.workflows.genisp.detector import load_detector
    from isplab.workflows.genisp.evaluate import evaluate_inputs
    from isplab.workflows.genisp.train import open_split

    sources = [s.strip() for s in inputs.split(",") if s.strip()]
    coco = open_split(dataset, camera, split, image_dir=images)
    normal = None
    if "normal" in sources:
        if not Path(dataset).is_dir():
            raise IsplabError("the normal input needs a synth dataset folder (its normal-light renders); drop it from --inputs")
        normal = open_split(dataset, "normal", split)
    net = load_genisp(model)
    frozen = load_detector(detector)
    accelerator = resolve_accelerator(device)
    short = short or int(frozen.detector_config["min_size"])
    long = long or max(short, int(frozen.detector_config["max_size"]))
    result = evaluate_inputs(coco, net, frozen, output, sources=sources, normal_coco=normal, short=short, long=long,
                             device="cuda" if accelerator == "cuda" else accelerator, keep=keep, overwrite=overwrite,
                             title=f"{camera} {split} ({len(coco)} images)")
    typer.echo((result.folder / "table.txt").read_text().rstrip())
    console.print(f"report: {result.folder}", highlight=False)


@app.command("run")
def run(
    raws: list[Path] = typer.Argument(..., help="Raw files (DNG and any format rawpy reads)."),
    model: Model = ...,
    output: Path = typer.Option(..., "--output", "-o", help="Folder for <stem>.png (16-bit) and the --format extras."),
    formats: str = typer.Option("png", "--format", help="Comma-separated: png (16-bit, clipped to [0, 1]), tiff and exr (float32, unclipped).",
                                show_default=True),
    short: int = typer.Option(800, "--short", help="Shorter side of the output (0: the packed raw's half resolution).", show_default=True),
    long: int = typer.Option(1333, "--long", help="Cap on the longer side.", show_default=True),
    tile: int = typer.Option(1024, "--tile", help="ConvNet tile side (0: whole image; tiled output equals whole).", show_default=True),
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Raw -> GenISP output image (what the detector sees), one per raw; failures reported, exit 1 at the end."""
    from isplab.engine.trainer import resolve_accelerator
    from isplab.workflows.genisp.predict import run_files

    def report(path: Path, error: str | None) -> None:
        if error:
            console.print(f"[red]failed[/] {escape(error)}", highlight=False)
        else:
            console.print(f"done {path}", highlight=False)

    accelerator = resolve_accelerator(device)
    result = run_files(raws, model, output, formats=[f.strip() for f in formats.split(",") if f.strip()], short=short or None,
                       long=long or None, tile=tile, device="cuda" if accelerator == "cuda" else accelerator, overwrite=overwrite,
                       on_file=report)
    if result.failures:
        raise typer.Exit(1)


@app.command("export")
def export(
    model: Path = typer.Argument(..., help="Trained GenISP model (model.pt)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="ONNX file (default: MODEL with .onnx)."),
    quantize: Quantize = None,
    overwrite: Overwrite = False,
) -> None:
    """GenISP alone as ONNX (camera XYZ -> detector input, dynamic size), checked with onnxruntime."""
    from isplab.workflows.genisp.export import export_genisp

    result = export_genisp(model, output, quantize=quantize, overwrite=overwrite)
    worst = max((r.max_abs_diff for r in result.parity), default=float("nan"))
    console.print(f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB); onnxruntime vs PyTorch max difference {worst:.2e}", highlight=False)
