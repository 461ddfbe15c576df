"""``isplab awb ...``: Raspberry Pi neural-network auto white balance (libcamera ``rpi.nn.awb``).

Commands mirror the seed's scripts: ``convert`` (converter.py), ``train`` (train.py),
``auto-train`` (auto_train.py), ``verify`` (verify.py), ``export`` (model_converter.py),
``tuning`` (gen_tuning.py), ``annotate`` (annotator.py, as a local web page), ``capture``
(snapper.py), plus ``evaluate`` for honest held-out numbers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

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
from isplab.workflows.awb.config import LOSSES, TrainConfig

app = typer.Typer(help="Raspberry Pi neural-network auto white balance (libcamera rpi.nn.awb).", no_args_is_help=True)
console = Console()
err = Console(stderr=True, soft_wrap=True)

Target = Annotated[str, typer.Option("--target", "-t", help="pisp (Pi 5) or vc4 (Pi 4 and older).")]
OptionalTarget = Annotated[str | None, typer.Option("--target", "-t", help="pisp or vc4 (default: from the files).")]
TuningDir = Annotated[
    Path | None,
    typer.Option("--tuning-dir", help="Folder searched first for <target>/<sensor>.json tuning files (default: only libcamera's install folders)."),
]
StartModel = Annotated[Path | None, typer.Option("--model", "-m", help="Start from this trained model (.pt) (default: from scratch).")]
OldStartModel = Annotated[Path | None, typer.Option("--input-model", hidden=True, help="Old spelling of --model.")]

_DEFAULTS = TrainConfig()
#: The training options of train, auto-train and evaluate --cv: parameter -> (annotated type, default).
_TRAINING_OPTIONS: dict[str, tuple[Any, Any]] = {
    "epochs": (Annotated[int, typer.Option("--epochs", help="Maximum epochs per model.")], _DEFAULTS.epochs),
    "batch_size": (Annotated[int, typer.Option("--batch-size", help="Images per step.")], _DEFAULTS.batch_size),
    "lr": (Annotated[float, typer.Option("--lr", help="Adam learning rate.")], _DEFAULTS.lr),
    "arch": (
        Annotated[str, typer.Option("--arch", help="Network: chroma (isplab's), reference (Raspberry Pi's), histogram, small, hybrid (chroma plus colour-constancy features) or blend (chroma CNNs averaged with MLPs on those features).")],
        _DEFAULTS.arch,
    ),
    "ensemble": (Annotated[int, typer.Option("--ensemble", help="Members averaged in one model.")], _DEFAULTS.ensemble),
    "loss": (Annotated[str, typer.Option("--loss", help="mse (reference: squared mireds/1000) or l1 (mireds).")], _DEFAULTS.loss),
    "relight": (
        Annotated[float, typer.Option("--relight", help="Re-lighting augmentation half-width in mireds (0: off).")],
        _DEFAULTS.relight,
    ),
    "flip_average": (
        Annotated[bool, typer.Option("--flip-average/--no-flip-average",
                                     help="Average the prediction with that of the mirrored statistics (inside the exported model).")],
        _DEFAULTS.flip_average,
    ),
    "calibrate": (
        Annotated[bool, typer.Option("--calibrate/--no-calibrate",
                                     help="End the model with an affine mired calibration fitted on its training images (exported with it).")],
        _DEFAULTS.calibrate,
    ),
    "sensor_embedding": (
        Annotated[bool, typer.Option("--sensor-embedding/--no-sensor-embedding",
                                     help="One network for all sensors with a learned vector per sensor (sensors from the file names); "
                                          "export one TFLite per sensor with awb export --sensor S.")],
        _DEFAULTS.sensor_embedding,
    ),
    "early_stopping": (
        Annotated[int, typer.Option("--early-stopping", help="Stop after this many epochs without improvement (0: never).")],
        _DEFAULTS.patience or 0,
    ),
    "tuning_dir": (TuningDir, None),
    "config_file": (
        Annotated[
            Path | None,
            typer.Option("--config", help="TrainConfig JSON to start from (e.g. awb search's best_config.json); "
                         "options given on the command line override it (default: none)."),
        ],
        None,
    ),
    "seed": (Seed, _DEFAULTS.seed),
    "device": (Device, "auto"),
    "devices": (Devices, "1"),
    "strategy": (Strategy, "auto"),
    "num_nodes": (NumNodes, 1),
}


#: Option (parameter name) -> the TrainConfig fields it sets, where they differ.
_OPTION_FIELDS = {"early_stopping": ("patience",), "config_file": ()}


def train_config(values: dict[str, Any], given: set[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of the training options' values (keyed by parameter name).

    With ``values["config_file"]`` (``--config``), that JSON file is the starting point and only the
    options named in ``given`` (those typed on the command line; default: those whose value is not
    the default) replace its values.

    Raises:
        IsplabError: a value out of range or unknown (``--devices``, ``--loss``, ``--epochs``...), or
            a bad config file.
    """
    values = {"config_file": None, **values}
    config = _options_config(values)
    if values["config_file"] is None:
        return config
    from dataclasses import replace

    from isplab.workflows.awb.config import load_train_config

    if given is None:
        given = {name for name, (_, default) in _TRAINING_OPTIONS.items() if values.get(name, default) != default}
    overrides = {
        field: getattr(config, field)
        for name in given if name in _TRAINING_OPTIONS
        for field in _OPTION_FIELDS.get(name, (name,))
    }
    return replace(load_train_config(values["config_file"]), **overrides)


def _options_config(values: dict[str, Any]) -> TrainConfig:
    trainer = trainer_options(values["device"], values["devices"], values["strategy"], values["num_nodes"])
    for name in ("epochs", "batch_size", "ensemble"):
        if values[name] < 1:
            raise IsplabError(f"bad --{name.replace('_', '-')} {values[name]}: expected 1 or more")
    if values["loss"] not in LOSSES:
        raise IsplabError(f"bad --loss {values['loss']!r}: expected one of {', '.join(LOSSES)}")
    return TrainConfig(
        epochs=values["epochs"],
        batch_size=values["batch_size"],
        lr=values["lr"],
        arch=values["arch"],
        ensemble=values["ensemble"],
        loss=values["loss"],
        relight=values["relight"],
        flip_average=values["flip_average"],
        calibrate=values["calibrate"],
        sensor_embedding=values.get("sensor_embedding", _DEFAULTS.sensor_embedding),
        patience=values["early_stopping"] or None,
        tuning_dir=str(values["tuning_dir"]) if values["tuning_dir"] else None,
        seed=values["seed"],
        device=trainer.device,
        devices=trainer.devices,
        strategy=trainer.strategy,
        num_nodes=trainer.num_nodes,
    )


def training_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the shared training options; it receives them as one ``config: TrainConfig``.

    Typer has no option groups: this adds the options of :data:`_TRAINING_OPTIONS` to the
    command's signature (after its own), and the wrapper builds the config from their values.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "config"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
        for name, (kind, default) in _TRAINING_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        import click
        from click.core import ParameterSource

        options = {name: values.pop(name) for name in _TRAINING_OPTIONS}
        context = click.get_current_context(silent=True)
        given = None
        if context is not None:
            given = {name for name in options
                     if context.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}
        return command(**values, config=train_config(options, given))

    wrapper.__signature__ = signature.replace(parameters=own + shared)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper


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


def _start_model(model: Path | None, old: Path | None) -> Path | None:
    if model is not None and old is not None:
        raise IsplabError("give --model once (--input-model is its old spelling)")
    return model or old


@app.command("convert")
def convert(
    input_dir: Path = typer.Argument(..., help="Folder of annotated DNGs (<user>,<sensor>,<id>,<red_gain>,<blue_gain>.dng)."),
    output_dir: Path = typer.Argument(..., help="Dataset folder to write (train/ and test/)."),
    target: Target = ...,
    split: float = typer.Option(0.0, "--split", help="Proportion of images moved to the test set."),
    resize: str | None = typer.Option(None, "--resize", help="Statistics grid W,H (default 32,32 pisp / 16,12 vc4)."),
    tuning_dir: TuningDir = None,
    colour_test: bool = typer.Option(False, "--colour-test", help="Write previews rendered with the labels (lens shading, gains, CCM, gamma) instead of statistics, to check the labels."),
    workers: int | None = typer.Option(None, "--workers", help="Parallel processes (default: all cores)."),
    progress: Progress = True,
    overwrite: Overwrite = False,
) -> None:
    """Convert annotated DNGs into the 16-bit PNG statistics dataset the networks train on.

    A folder that already holds a dataset is refused; --overwrite deletes its statistics PNGs
    (train/ and test/) before converting."""
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
        colour_test=colour_test, workers=workers, progress=progress, overwrite=overwrite,
    )
    for path, message in summary.failed:
        err.print(f"[red]failed[/] {path}: {message}", highlight=False)
    console.print(str(summary))
    if not summary.ok:
        raise typer.Exit(1)


@app.command("train")
@training_options
def train(
    dataset: Path = typer.Argument(..., help="Dataset folder of statistics PNGs."),
    output: Path = typer.Argument(..., help="Model file to write (.pt)."),
    target: Target = ...,
    model: StartModel = None,
    input_model: OldStartModel = None,
    duplicate_file: Path | None = typer.Option(None, "--duplicate-file", help="Images to include more than once (default: none)."),
    sensor: list[str] = typer.Option(
        [], "--sensor", "-s", help="Train only on this sensor's images (repeatable), e.g. to fine-tune a shared --model per sensor (default: all)."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run folder: config.json, log.txt, checkpoints/, logs/ (default: OUTPUT without .pt, plus -run)."
    ),
    resume: Resume = False,
    overwrite: Overwrite = False,
    progress: Progress = True,
    *,
    config: TrainConfig,
) -> None:
    """Train one AWB network (preprocessing inside the model, temperature in kelvin out).

    Ctrl-C keeps the last finished epoch in the run folder; the same command with --resume continues (--epochs is the total).
    Per-sensor models, two routes: train a shared model and fine-tune it per sensor (--model shared.pt --sensor S),
    or train one model with --sensor-embedding and export it per sensor (awb export joint.pt --sensor S);
    then point each sensor's tuning file at its own TFLite (awb tuning --sensor S --model S.tflite)."""
    from isplab.engine import TrainingInterrupted, is_global_zero, prepare_run_dir
    from isplab.io.paths import prepare_output_file
    from isplab.workflows.awb.dataset import read_duplicates, repeat_counts
    from isplab.workflows.awb.evaluate import evaluate_model
    from isplab.workflows.awb.model import load_awb_model, save_awb_model
    from isplab.workflows.awb.train import RUN_FILES, train_model

    start = _start_model(model, input_model)
    if resume and start is not None:
        raise IsplabError("--resume continues the run's own model: drop --model")
    if is_global_zero():  # under DDP the other ranks start once rank 0 is training
        prepare_output_file(output, overwrite=overwrite or resume, what="model")
    start = load_awb_model(start) if start is not None else None
    run_dir = run_dir or output.with_name(f"{output.stem}-run")
    data = _load(dataset, target)
    if sensor:
        data = _sensor_subset(data, dataset, sensor)
    weights = repeat_counts(data.samples, read_duplicates(duplicate_file)) if duplicate_file else None
    prepare_run_dir(run_dir, RUN_FILES, overwrite=overwrite, resume=resume, what="run folder").clear()
    try:
        net = train_model(data, config, weights=weights, input_model=start, run_dir=run_dir, resume=resume, progress=progress)
    except TrainingInterrupted as stop:
        exit_interrupted(stop)
    if not is_global_zero():
        return
    save_awb_model(net, output)
    result = evaluate_model(net, data)
    _print_summary(f"{output} on its training images (mireds; held-out: isplab awb evaluate --cv 5)",
                   {"model": result.model, "camera": result.camera})


def _sensor_subset(data, folder: Path, sensors: list[str]):
    """The images of ``sensors`` only; an unknown sensor is an error naming the ones there are."""
    present = sorted({s.sensor for s in data.samples})
    unknown = [name for name in sensors if name not in present]
    if unknown:
        raise IsplabError(f"{folder} has no images of sensor {', '.join(unknown)}: its sensors are {', '.join(present)}")
    subset = data.subset([i for i, s in enumerate(data.samples) if s.sensor in sensors])
    err.print(f"training on the {len(subset)} images of {', '.join(sensors)}")
    return subset


@app.command("auto-train")
@training_options
def auto_train_command(
    dataset: Path = typer.Argument(..., help="Dataset folder of statistics PNGs."),
    output_dir: Path = typer.Argument(..., help="Folder for each run's model, verification and duplicates files."),
    target: Target = ...,
    duplicate_file: Path | None = typer.Option(
        None, "--duplicate-file", help="Duplicate counts, read and updated (default: OUTPUT_DIR/duplicates.txt)."
    ),
    clear_duplicates: bool = typer.Option(False, "--clear-duplicates", help="Start from empty duplicate counts."),
    model: StartModel = None,
    input_model: OldStartModel = None,
    iterations: int = typer.Option(50, "--iterations", help="Number of training runs."),
    weight: int = typer.Option(4, "--weight", "-w", help="Extra inclusions of the worst image after each run."),
    stop_after: int = typer.Option(10, "--stop-after", help="Stop after this many runs without a better worst case (0: never)."),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the runs already in OUTPUT_DIR (from the latest model).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete earlier runs' files in OUTPUT_DIR first.")] = False,
    progress: Progress = False,
    *,
    config: TrainConfig,
) -> None:
    """Train repeatedly, each time weighting the worst image more (the seed's auto_train.py)."""
    from isplab.engine import is_global_zero
    from isplab.io.paths import prepare_output_file
    from isplab.workflows.awb.auto_train import auto_train, prepare_auto_train_dir
    from isplab.workflows.awb.model import load_awb_model

    start = _start_model(model, input_model)
    prepare_auto_train_dir(output_dir, overwrite=overwrite, resume=resume)
    if duplicate_file is not None:
        prepare_output_file(duplicate_file, overwrite=True, what="duplicates file")
    if start is not None:
        load_awb_model(start)  # a bad file is an error now, not after the first run
    data = _load(dataset, target)

    def report(record) -> None:
        if is_global_zero():
            console.print(f"run {record.run}: worst {record.worst:.1f} mireds ({record.worst_image}), "
                          f"mean {record.mean:.3f} -> {record.model_path.name}", highlight=False)

    result = auto_train(
        data, output_dir, config, duplicate_file=duplicate_file, clear_duplicates=clear_duplicates,
        input_model=start, resume=resume, iterations=iterations, weight=weight, early_stopping=stop_after or None,
        progress=progress, on_run=report,
    )
    best = result.best
    if is_global_zero():
        console.print(f"best run {best.run}: worst {best.worst:.1f}, mean {best.mean:.3f} mireds -> {best.model_path}")


@app.command("verify")
def verify_command(
    images: list[Path] = typer.Option(..., "--image", "-i", help="DNG or statistics PNG (repeatable)."),
    model: Path = typer.Option(..., "--model", "-m", help="Model (.pt or .tflite)."),
    target: OptionalTarget = None,
    tuning_dir: TuningDir = None,
) -> None:
    """Predicted vs labelled vs camera temperature for individual images.

    Each file that cannot be read is reported on its own line; the command then exits 1."""
    from isplab.workflows.awb.verify import verify

    rows = verify(images, model, target=target, tuning_dir=tuning_dir)
    for row in rows:
        if row.failure:
            err.print(f"[red]failed[/] {row.path}: {row.failure}", highlight=False, soft_wrap=True)
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
@training_options
def evaluate_command(
    dataset: Path = typer.Argument(..., help="Dataset folder of statistics PNGs."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Model to evaluate (.pt or .tflite) (default: none; give --cv)."),
    cv: int | None = typer.Option(
        None, "--cv", help="K-fold cross-validation with scenes kept in one fold: trains K models (default: off; give --model)."
    ),
    output: Path = typer.Option(Path("runs/awb-evaluate"), "--output", "-o", help="Report folder."),
    old_output: Path | None = typer.Option(None, "--out", hidden=True, help="Old spelling of --output."),
    target: OptionalTarget = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
    *,
    config: TrainConfig,
) -> None:
    """Per-image errors worst first, summaries, the camera's own estimate as baseline; --cv for held-out numbers."""
    from isplab.engine import is_global_zero
    from isplab.io.paths import prepare_output_dir
    from isplab.workflows.awb.evaluate import (
        REPORT_FILES,
        cross_validate,
        evaluate_predictions,
        write_report,
    )
    from isplab.workflows.awb.predict import load_predictor

    if (model is None) == (cv is None):
        raise IsplabError("give either --model M (evaluate a trained model) or --cv K (cross-validate a training recipe)")
    output = old_output or output
    if is_global_zero():
        prepare_output_dir(output, overwrite=overwrite, names=REPORT_FILES, what="report folder")
    data = _load(dataset, target)
    if cv is not None:
        result = cross_validate(data, cv, config, seed=config.seed, progress=progress)
        title = f"{cv}-fold grouped cross-validation, {data.target}, arch {config.arch}"
    else:
        predictor = load_predictor(model)
        if predictor.target != data.target:
            raise IsplabError(f"{model} is a {predictor.target} model but {dataset} holds {data.target} images")
        result = evaluate_predictions(data, predictor(data.images, data.lux, [x.sensor for x in data.samples]))
        title = f"{model.name} on {dataset} ({data.target})"
    if not is_global_zero():
        return
    report = write_report(result, output, title=title)
    for row in result.rows[:10]:
        console.print(f"{row.file}: predicted {row.predicted_temp:.0f} K, true {row.true_temp:.0f} K, "
                      f"{row.error_mired:.1f} mireds", highlight=False)
    _print_summary(title + " (mireds)", {"model": result.model, "camera": result.camera})
    console.print(f"report: {report}")


@app.command("export")
def export_command(
    model: Path = typer.Argument(..., help="Trained model (.pt)."),
    quantize: Quantize = None,
    output: Path | None = typer.Option(None, "--output", "-o", help="The .tflite to write (default: next to MODEL)."),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="Check agreement on these images (default: 200 random statistics)."
    ),
    sensor: str | None = typer.Option(
        None, "--sensor", "-s", help="For a model trained with --sensor-embedding: the sensor baked into the file (required there)."
    ),
    overwrite: Overwrite = False,
) -> None:
    """Export to TFLite with exactly libcamera's contract, checked with the LiteRT interpreter.

    float32/float16 must agree with PyTorch within 1 mired on every image (else error, nothing written); int8 is reported.
    A model trained with --sensor-embedding is exported once per sensor (--sensor S; default output MODEL_S.tflite)."""
    from isplab.io.paths import prepare_output_file
    from isplab.models.awb import model_sensors, select_sensor
    from isplab.workflows.awb.export import export_awb
    from isplab.workflows.awb.model import load_awb_model, model_target

    quantize = parse_quantize(quantize)
    net = load_awb_model(model)
    known = model_sensors(net)
    if known is not None and sensor is None:
        raise IsplabError(f"{model} was trained jointly on sensors {', '.join(known)}: give --sensor S (one TFLite per sensor)")
    if sensor is not None:
        net = select_sensor(net, sensor)  # an unknown sensor: one line naming the known ones
    suffix = (f"_{sensor}" if sensor else "") + (f"_{quantize}" if quantize else "")
    output = prepare_output_file(output or model.with_name(f"{model.stem}{suffix}.tflite"), overwrite=overwrite,
                                 what="TFLite model")
    target = model_target(net)
    data = _load(dataset, target) if dataset else None
    result = export_awb(net, target, output, quantize=quantize, dataset=data, overwrite=overwrite)
    tolerance = "reported, not enforced" if result.tolerance_mired is None else f"tolerance {result.tolerance_mired} mired"
    console.print(
        f"{result.path} ({result.size_bytes / 1024:.1f} KiB, {target}, {quantize or 'float32'}): "
        f"max {result.max_mired_difference:.3f}, mean {result.mean_mired_difference:.3f} mireds from PyTorch "
        f"over {result.images_checked} images ({tolerance})", highlight=False, soft_wrap=True,
    )


@app.command("search")
def search_command(
    dataset: Path = typer.Argument(..., help="Dataset folder of statistics PNGs."),
    target: Target = ...,
    trials: int = typer.Option(50, "--trials", help="Finished + pruned trials the study should hold (a resume counts earlier ones)."),
    output: Path = typer.Option(Path("runs/awb-search"), "--output", "-o", help="Study folder (study.db, trials.csv, pareto.json/.png, best_config.json)."),
    folds: int = typer.Option(5, "--folds", help="Grouped K-fold CV scoring each trial (scenes never split)."),
    workers: int = typer.Option(1, "--workers", help="Parallel processes sharing the study, each with cores/K threads."),
    device: Device = "auto",
    timeout: float | None = typer.Option(None, "--timeout", help="After this many seconds start no trial and stop running ones at their next fold (failed; --resume redoes them) (default: none)."),
    seed: Seed = 0,
    arch: list[str] = typer.Option([], "--arch", help="Architectures searched (repeatable; default: all of reference chroma histogram small blend; hybrid is not searched)."),
    min_epochs: int = typer.Option(30, "--min-epochs", help="Smallest maximum-epochs tried."),
    max_epochs: int = typer.Option(200, "--max-epochs", help="Largest maximum-epochs tried."),
    max_ensemble: int = typer.Option(5, "--max-ensemble", help="Ensembles of 1..this many members are tried."),
    tuning_dir: TuningDir = None,
    holdout: float = typer.Option(0.0, "--holdout", help="Fraction of scenes kept out of the search; the best configurations are then scored on them (0: off)."),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the study in OUTPUT (same target, images, folds, seed, space, holdout).")] = False,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="A new study's trial 0 is awb train's default recipe when the space holds it: blend searched, --max-epochs 240 or more.")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Optuna search over architecture, width, ensemble, loss, augmentation, LR and epochs, scored by grouped CV.

    Bad trials are pruned after a fold; re-lighting is searched when --tuning-dir is given. Writes
    the Pareto front of CV error vs size and best_config.json for `isplab awb train --config`."""
    from isplab.workflows.awb.config import config_json
    from isplab.workflows.awb.search import SEARCH_ARCHS, SMALL_BYTES, SearchSpace, search

    space = SearchSpace(archs=tuple(arch) or SEARCH_ARCHS, epochs=(min_epochs, max_epochs), max_ensemble=max_ensemble,
                        relight=tuning_dir is not None)
    base = TrainConfig(seed=seed, tuning_dir=str(tuning_dir) if tuning_dir else None)
    try:
        result = search(
            dataset, output, target=target, trials=trials, folds=folds, workers=workers, device=device,
            timeout=timeout, seed=seed, resume=resume, overwrite=overwrite, space=space, base=base, holdout=holdout, baseline=baseline,
            log=lambda text: err.print(text, highlight=False, soft_wrap=True),
        )
    except KeyboardInterrupt:
        from isplab.workflows.awb.search import write_outputs

        if (output / "study.db").is_file():
            try:
                write_outputs(output)
            except Exception:  # noqa: BLE001 - the study itself is what matters; the summaries can be redone
                pass
        err.print(f"search interrupted: the finished trials are in {output / 'study.db'}; the same command with "
                  "--resume continues it", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    table = Table(title=f"Pareto front: {folds}-fold grouped CV mean error vs estimated float32 TFLite size")
    for column in ("trial", "arch", "ensemble", "params", "KB", "mean", "median", "p95", "worst"):
        table.add_column(column, justify="left" if column == "arch" else "right")
    for row in result.pareto:
        table.add_row(str(row["number"]), row["arch"], str(row["ensemble"]), str(row["parameters"]),
                      f"{row['tflite_estimate'] / 1024:.1f}", f"{row['cv_mean']:.2f}", f"{row['cv_median']:.2f}",
                      f"{row['cv_p95']:.2f}", f"{row['cv_worst']:.1f}")
    console.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items()))
    best = result.best
    console.print(f"{counts}; best trial {best['number']}: CV mean {best['cv_mean']:.2f}, worst {best['cv_worst']:.1f} "
                  f"mireds, {best['parameters']} parameters", highlight=False)
    baseline = next((row for row in result.trials if row["baseline"] and row["cv_mean"] is not None), None)
    if baseline is not None and baseline["number"] != best["number"]:
        console.print(f"baseline (trial {baseline['number']}, the default recipe): CV mean {baseline['cv_mean']:.2f}, "
                      f"worst {baseline['cv_worst']:.1f} mireds", highlight=False)
    small = result.best_small
    if small is not None and small["number"] != best["number"]:
        console.print(f"best with an estimated TFLite file within {SMALL_BYTES // 1024} KB: trial {small['number']}: CV mean "
                      f"{small['cv_mean']:.2f}, worst {small['cv_worst']:.1f} mireds, {small['parameters']} parameters "
                      f"-> {output / 'best_small_config.json'}", highlight=False, soft_wrap=True)
    for name, row in (("best", best), ("best small", small)):
        if row is not None and row.get("holdout"):
            h = row["holdout"]
            console.print(f"{name} (trial {row['number']}) on the {h['count']} held-out images: mean {h['mean']:.2f}, "
                          f"median {h['median']:.2f}, p95 {h['p95']:.2f}, worst {h['worst']:.1f} mireds", highlight=False)
    console.print(config_json(result.best_config), highlight=False, soft_wrap=True)
    console.print(f"wrote {output / 'best_config.json'} (isplab awb train DATASET MODEL.pt --target {target} "
                  f"--config {output / 'best_config.json'}), trials.csv, pareto.json, pareto.png", highlight=False,
                  soft_wrap=True)


@app.command("tuning")
def tuning_command(
    sensor: str = typer.Option(..., "--sensor", "-s", help="Sensor name, e.g. imx708."),
    target: Target = ...,
    model: Path = typer.Option(..., "--model", "-m", help="The .tflite model libcamera should load."),
    base: Path | None = typer.Option(None, "--base", help="Tuning file to start from (default: the installed one)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (default: <sensor>.json next to MODEL)."),
    tuning_dir: TuningDir = None,
    overwrite: Overwrite = False,
) -> None:
    """Write a tuning file that runs the network (rpi.nn.awb enabled, rpi.awb disabled).

    MODEL must be a TFLite file with libcamera's AWB contract for TARGET (checked with LiteRT)."""
    from isplab.io.paths import prepare_output_file
    from isplab.workflows.awb.export import check_contract
    from isplab.workflows.awb.tuning import generate_tuning, write_tuning

    output = prepare_output_file(output or model.with_name(f"{sensor}.json"), overwrite=overwrite, what="tuning file")
    check_contract(model, target)
    data = generate_tuning(sensor, target, model.resolve(), base=base, tuning_dir=tuning_dir)
    path = write_tuning(data, output, overwrite=overwrite)
    console.print(f"wrote {path}: rpi.nn.awb enabled with model {model.resolve()}", highlight=False, soft_wrap=True)


@app.command("annotate")
def annotate_command(
    folder: Path = typer.Argument(..., help="Folder of DNGs named <user>,<sensor>,<id>.dng to label."),
    target: str = typer.Option("pisp", "--target", "-t", help="pisp (Pi 5) or vc4: which tuning renders previews."),
    tuning_dir: TuningDir = None,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback: only this machine; 0.0.0.0: all networks, with a warning)."),
    port: int = typer.Option(0, "--port", help="Port (0: any free one)."),
    token: bool = typer.Option(True, "--token/--no-token", help="Require the random token of the printed address on every request."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Another host name the page may be opened by (repeatable)."),
) -> None:
    """Label DNGs with their white-balance gains in a local web page (annotator.py)."""
    from isplab.workflows.awb.annotate import run

    run(folder, target, tuning_dir, host, port, token=token, allow_hosts=allow_host,
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
