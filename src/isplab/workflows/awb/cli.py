"""``isplab awb ...``: Raspberry Pi neural-network auto white balance (libcamera ``rpi.nn.awb``).

Commands mirror the seed's scripts: ``convert`` (converter.py), ``train`` (train.py),
``auto-train`` (auto_train.py), ``verify`` (verify.py), ``export`` (model_converter.py),
``tuning`` (gen_tuning.py), ``annotate`` (annotator.py, as a local web page), ``capture``
(snapper.py), plus ``evaluate`` for honest held-out numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from isplab.errors import IsplabError

app = typer.Typer(help="Raspberry Pi neural-network auto white balance (libcamera rpi.nn.awb).", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

Target = Annotated[str, typer.Option("--target", "-t", help="pisp (Pi 5) or vc4 (Pi 4 and older).")]
OptionalTarget = Annotated[str | None, typer.Option("--target", "-t", help="pisp or vc4 (default: from the files).")]
TuningDir = Annotated[Path | None, typer.Option("--tuning-dir", help="Folder searched first for <target>/<sensor>.json tuning files.")]
# Training options shared by train, auto-train and evaluate --cv.
Epochs = Annotated[int, typer.Option("--epochs", help="Maximum epochs per model.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Images per step.")]
LearningRate = Annotated[float, typer.Option("--lr", help="Learning rate.")]
Arch = Annotated[str, typer.Option("--arch", help="Network: chroma (isplab's, default) or reference (Raspberry Pi's).")]
Ensemble = Annotated[int, typer.Option("--ensemble", help="Members averaged in one model.")]
Loss = Annotated[str, typer.Option("--loss", help="mse (reference: squared mireds/1000) or l1 (mireds).")]
Relight = Annotated[float, typer.Option("--relight", help="Re-lighting augmentation half-width in mireds (0: off).")]
Patience = Annotated[int, typer.Option("--early-stopping", help="Stop after this many epochs without improvement (0: never).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


def _config(epochs, batch_size, lr, arch, ensemble, loss, relight, patience, seed, device, tuning_dir):
    from isplab.workflows.awb.train import TrainConfig

    defaults = TrainConfig()
    return TrainConfig(
        epochs=epochs if epochs is not None else defaults.epochs,
        batch_size=batch_size if batch_size is not None else defaults.batch_size,
        lr=lr if lr is not None else defaults.lr,
        arch=arch or defaults.arch,
        ensemble=ensemble if ensemble is not None else defaults.ensemble,
        loss=loss or defaults.loss,
        relight=relight if relight is not None else defaults.relight,
        patience=(patience or None) if patience is not None else defaults.patience,
        seed=seed,
        device=device,
        tuning_dir=str(tuning_dir) if tuning_dir else None,
    )


def _load(folder: Path, target: str | None):
    from isplab.workflows.awb.dataset import load_dataset

    dataset = load_dataset(folder, target)
    err.print(f"{folder}: {len(dataset)} {dataset.target} images")
    return dataset


def _print_summary(title: str, summaries: dict) -> None:
    table = Table(title=title)
    for column in ("", "mean", "median", "p95", "worst", "images"):
        table.add_column(column, justify="right")
    for name, s in summaries.items():
        table.add_row(name, f"{s.mean:.2f}", f"{s.median:.2f}", f"{s.p95:.2f}", f"{s.worst:.2f}", str(s.count))
    console.print(table)


@app.command("convert")
def convert(
    input_dir: Path = typer.Argument(..., help="Folder of annotated DNGs (<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng)."),
    output_dir: Path = typer.Argument(..., help="Dataset folder to write (train/ and test/)."),
    target: Target = ...,
    split: float = typer.Option(0.0, "--split", help="Proportion of images moved to the test set."),
    resize: str | None = typer.Option(None, "--resize", help="Statistics grid W,H (default 32,32 pisp / 16,12 vc4)."),
    tuning_dir: TuningDir = None,
    colour_test: bool = typer.Option(False, "--colour-test", help="Also write colour-corrected previews for checking labels."),
    workers: int | None = typer.Option(None, "--workers", help="Parallel processes (default: all cores)."),
    progress: Progress = True,
) -> None:
    """Convert annotated DNGs into the 16-bit PNG statistics dataset the networks train on."""
    from isplab.workflows.awb.convert import convert_folder

    size = None
    if resize:
        try:
            w, h = (int(v) for v in resize.split(","))
        except ValueError:
            raise IsplabError(f"bad --resize {resize!r}: expected W,H such as 32,32") from None
        size = (w, h)
    summary = convert_folder(
        input_dir, output_dir, target, split=split, resize=size, tuning_dir=tuning_dir,
        colour_test=colour_test, workers=workers, progress=progress,
    )
    for path, message in summary.failed:
        err.print(f"[red]failed[/] {path}: {message}", highlight=False)
    console.print(str(summary))
    if not summary.ok:
        raise typer.Exit(1)


@app.command("train")
def train(
    dataset: Path = typer.Argument(..., help="Dataset folder of statistics PNGs."),
    output: Path = typer.Argument(..., help="Model file to write (.pt)."),
    target: Target = ...,
    input_model: Path | None = typer.Option(None, "--input-model", help="Continue training this model."),
    duplicate_file: Path | None = typer.Option(None, "--duplicate-file", help="Images to include more than once."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Keep Lightning checkpoints and logs here."),
    epochs: Epochs = None, batch_size: BatchSize = None, lr: LearningRate = None, arch: Arch = None,
    ensemble: Ensemble = None, loss: Loss = None, relight: Relight = None, patience: Patience = None,
    seed: Seed = 0, device: Device = "cpu", tuning_dir: TuningDir = None, progress: Progress = True,
) -> None:
    """Train one AWB network (preprocessing inside the model, temperature in kelvin out)."""
    from isplab.models.awb import save_awb_model
    from isplab.workflows.awb.dataset import read_duplicates, repeat_counts
    from isplab.workflows.awb.evaluate import evaluate_model
    from isplab.workflows.awb.train import train_model

    if output.exists():
        raise IsplabError(f"{output} already exists: choose another OUTPUT")
    data = _load(dataset, target)
    config = _config(epochs, batch_size, lr, arch, ensemble, loss, relight, patience, seed, device, tuning_dir)
    weights = repeat_counts(data.samples, read_duplicates(duplicate_file)) if duplicate_file else None
    model = train_model(data, config, weights=weights, input_model=input_model, run_dir=run_dir, progress=progress)
    save_awb_model(model, output)
    result = evaluate_model(model, data)
    _print_summary(f"{output} on its training images (mireds; held-out: isplab awb evaluate --cv 5)",
                   {"model": result.model, "camera": result.camera})


@app.command("auto-train")
def auto_train_command(
    dataset: Path = typer.Argument(..., help="Dataset folder of statistics PNGs."),
    output_dir: Path = typer.Argument(..., help="Folder for each run's model, verification and duplicates files."),
    target: Target = ...,
    duplicate_file: Path = typer.Option(Path("duplicates.txt"), "--duplicate-file", help="Duplicate counts, read and updated."),
    clear_duplicates: bool = typer.Option(False, "--clear-duplicates", help="Start from an empty duplicates file."),
    input_model: Path | None = typer.Option(None, "--input-model", help="Start from this model instead of scratch."),
    iterations: int = typer.Option(50, "--iterations", help="Number of training runs."),
    weight: int = typer.Option(4, "--weight", "-w", help="Extra inclusions of the worst image after each run."),
    stop_after: int = typer.Option(10, "--stop-after", help="Stop after this many runs without a better worst case."),
    epochs: Epochs = None, batch_size: BatchSize = None, lr: LearningRate = None, arch: Arch = None,
    ensemble: Ensemble = None, loss: Loss = None, relight: Relight = None, patience: Patience = None,
    seed: Seed = 0, device: Device = "cpu", tuning_dir: TuningDir = None, progress: Progress = False,
) -> None:
    """Train repeatedly, each time weighting the worst image more (the seed's auto_train.py)."""
    from isplab.workflows.awb.auto_train import auto_train

    data = _load(dataset, target)
    config = _config(epochs, batch_size, lr, arch, ensemble, loss, relight, patience, seed, device, tuning_dir)

    def report(record) -> None:
        console.print(f"run {record.run}: worst {record.worst:.1f} mireds ({record.worst_image}), "
                      f"mean {record.mean:.3f} -> {record.model_path.name}", highlight=False)

    result = auto_train(
        data, output_dir, config, duplicate_file=duplicate_file, clear_duplicates=clear_duplicates,
        input_model=input_model, iterations=iterations, weight=weight, early_stopping=stop_after or None,
        progress=progress, on_run=report,
    )
    best = result.best
    console.print(f"best run {best.run}: worst {best.worst:.1f}, mean {best.mean:.3f} mireds -> {best.model_path}")


@app.command("verify")
def verify_command(
    images: list[Path] = typer.Option(..., "--image", "-i", help="DNG or statistics PNG (repeatable)."),
    model: Path = typer.Option(..., "--model", "-m", help="Model (.pt or .tflite)."),
    target: OptionalTarget = None,
    tuning_dir: TuningDir = None,
) -> None:
    """Predicted vs labelled vs camera temperature for individual images."""
    from isplab.workflows.awb.verify import verify

    rows = verify(images, model, target=target, tuning_dir=tuning_dir)
    for row in rows:
        if row.failure:
            err.print(f"[red]{row.path}[/]: {row.failure}", highlight=False)
            continue
        line = f"{row.path.name}: predicted {row.predicted_temp:.0f} K"
        if row.true_temp is not None:
            line += f", labelled {row.true_temp:.0f} K ({row.error_mired:.1f} mireds)"
        if row.camera_temp is not None:
            line += f", camera {row.camera_temp:.0f} K ({row.camera_error_mired:.1f} mireds)"
        console.print(line, highlight=False, soft_wrap=True)
    if any(row.failure for row in rows):
        raise typer.Exit(1)


@app.command("evaluate")
def evaluate_command(
    dataset: Path = typer.Argument(..., help="Dataset folder of statistics PNGs."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Model to evaluate (.pt or .tflite)."),
    cv: int | None = typer.Option(None, "--cv", help="K-fold cross-validation with scenes kept in one fold (trains K models)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report folder (default: runs/awb-evaluate)."),
    target: OptionalTarget = None,
    epochs: Epochs = None, batch_size: BatchSize = None, lr: LearningRate = None, arch: Arch = None,
    ensemble: Ensemble = None, loss: Loss = None, relight: Relight = None, patience: Patience = None,
    seed: Seed = 0, device: Device = "cpu", tuning_dir: TuningDir = None,
) -> None:
    """Per-image errors worst first, summaries, the camera's own estimate as baseline; --cv for held-out numbers."""
    from isplab.workflows.awb.evaluate import cross_validate, evaluate_predictions, write_report
    from isplab.workflows.awb.verify import load_predictor

    if (model is None) == (cv is None):
        raise IsplabError("give either --model M (evaluate a trained model) or --cv K (cross-validate a training recipe)")
    data = _load(dataset, target)
    if cv is not None:
        config = _config(epochs, batch_size, lr, arch, ensemble, loss, relight, patience, seed, device, tuning_dir)
        result = cross_validate(data, cv, config, seed=seed, progress=True)
        title = f"{cv}-fold grouped cross-validation, {data.target}, arch {config.arch}"
    else:
        predictor = load_predictor(model)
        if predictor.target != data.target:
            raise IsplabError(f"{model} is a {predictor.target} model but {dataset} holds {data.target} images")
        result = evaluate_predictions(data, predictor(data.images, data.lux))
        title = f"{model.name} on {dataset} ({data.target})"
    out = out or Path("runs/awb-evaluate")
    report = write_report(result, out, title=title)
    for row in result.rows[:10]:
        console.print(f"{row.file}: predicted {row.predicted_temp:.0f} K, true {row.true_temp:.0f} K, "
                      f"{row.error_mired:.1f} mireds", highlight=False)
    _print_summary(title + " (mireds)", {"model": result.model, "camera": result.camera})
    console.print(f"report: {report}")


@app.command("export")
def export_command(
    model: Path = typer.Argument(..., help="Trained model (.pt)."),
    quantize: str | None = typer.Option(None, "--quantize", help="float16 or int8 (dynamic range; float I/O)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="The .tflite to write (default: next to MODEL)."),
    dataset: Path | None = typer.Option(None, "--dataset", help="Check agreement on these images (default: random statistics)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Export to TFLite with exactly libcamera's contract, checked with the LiteRT interpreter."""
    from isplab.models.awb import load_awb_model
    from isplab.workflows.awb.export import export_awb

    net = load_awb_model(model)
    target = net.awb_config["target"]
    suffix = f"_{quantize}" if quantize else ""
    output = output or model.with_name(f"{model.stem}{suffix}.tflite")
    data = _load(dataset, target) if dataset else None
    result = export_awb(net, target, output, quantize=quantize, dataset=data, overwrite=overwrite)
    tolerance = "reported only" if result.tolerance_mired is None else f"tolerance {result.tolerance_mired} mired"
    console.print(
        f"{result.path} ({result.size_bytes / 1024:.1f} KiB, {target}, {quantize or 'float32'}): "
        f"max {result.max_mired_difference:.3f}, mean {result.mean_mired_difference:.3f} mireds from PyTorch "
        f"over {result.images_checked} images ({tolerance})", highlight=False,
    )


@app.command("tuning")
def tuning_command(
    sensor: str = typer.Option(..., "--sensor", "-s", help="Sensor name, e.g. imx708."),
    target: Target = ...,
    model: Path = typer.Option(..., "--model", "-m", help="The .tflite model libcamera should load."),
    base: Path | None = typer.Option(None, "--base", help="Tuning file to start from (default: the installed one)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (default: <sensor>.json here)."),
    tuning_dir: TuningDir = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Write a tuning file that runs the network (rpi.nn.awb enabled, rpi.awb disabled)."""
    from isplab.workflows.awb.tuning import generate_tuning, write_tuning

    if not model.is_file():
        raise IsplabError(f"model file not found: {model}")
    data = generate_tuning(sensor, target, model.resolve(), base=base, tuning_dir=tuning_dir)
    path = write_tuning(data, output or Path(f"{sensor}.json"), overwrite=overwrite)
    console.print(f"wrote {path}: rpi.nn.awb enabled with model {model.resolve()}")


@app.command("annotate")
def annotate_command(
    folder: Path = typer.Argument(..., help="Folder of DNGs named <user>,<sensor>,<id>.dng to label."),
    target: str = typer.Option("pisp", "--target", "-t", help="pisp (Pi 5) or vc4: which tuning renders previews."),
    tuning_dir: TuningDir = None,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback: only this machine)."),
    port: int = typer.Option(0, "--port", help="Port (0: any free one)."),
) -> None:
    """Label DNGs with their white-balance gains in a local web page (annotator.py)."""
    from isplab.workflows.awb.annotate import run

    run(folder, target, tuning_dir, host, port,
        print=lambda text: console.print(text, highlight=False, soft_wrap=True))


@app.command("capture")
def capture_command(
    user: str = typer.Option(..., "--user", "-u", help="First part of the names, e.g. who or where."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for <user>,<sensor>,<id>.dng and .jpg."),
    initial_scene_id: int = typer.Option(0, "--initial-scene-id", help="First id to try (ids in use are skipped)."),
    count: int | None = typer.Option(None, "--count", help="Stop after this many scenes (default: until q)."),
    preview: bool = typer.Option(False, "--preview/--no-preview", help="Show the camera preview (a Pi with a display)."),
) -> None:
    """Capture a DNG and a JPEG per scene on a Raspberry Pi with picamera2 (snapper.py)."""
    from isplab.workflows.awb.capture import capture

    scenes = capture(output, user, initial_id=initial_scene_id, count=count, preview=preview,
                     log=lambda text: console.print(text, highlight=False))
    console.print(f"captured {len(scenes)} scenes into {output}")
