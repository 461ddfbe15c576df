"""Worst-case re-weighting training loop (the seed's ``auto_train.py``).

Each run trains a model with the current duplicate counts, evaluates it on the whole dataset, and
adds ``weight`` to the count of the image with the worst error, so later runs see it more often.
Everything goes into the output folder. Each run writes three files named
``<kind>_<worst>_<average>_<run>`` with the worst error rounded to whole mireds and the average
with ``p`` for the point (``model_12_2p6003_31.pt``):

- ``verification_...txt``: every image and its error in mireds, worst first;
- ``duplicates_...txt``: the duplicate counts used by the next run (``<prefix> <count>`` lines);
- ``model_...pt``: the model (:func:`isplab.workflows.awb.model.load_awb_model` reads it);

and ``duplicates.txt`` (unless another duplicates file is given) holds the current counts. An
interrupted loop continues with ``resume=True``: the counts of ``duplicates.txt``, the latest run's
model, and run numbers after the latest.

The loop itself is :func:`reweight_loop`, which works on an in-memory dataset and writes nothing
(``benchmarks/awb_rpi.py --reweight`` runs it inside each cross-validation fold).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from isplab.engine import is_global_zero
from isplab.errors import IsplabError
from isplab.io.paths import prepare_output_dir
from isplab.workflows.awb.dataset import (
    AWBDataset,
    mired_error,
    read_duplicates,
    repeat_counts,
    write_duplicates,
)
from isplab.workflows.awb.model import load_awb_model, save_awb_model
from isplab.workflows.awb.predict import dataset_sensors, predict
from isplab.workflows.awb.train import TrainConfig, train_model

#: The duplicates file kept in the output folder when no other is given.
DUPLICATES = "duplicates.txt"
_RUN_FILE = re.compile(r"(model|verification|duplicates)_\d+_[0-9p]+_(\d+)\.(pt|txt)")


@dataclass
class RunRecord:
    """One auto-train run."""

    run: int
    worst: float
    mean: float
    worst_image: str
    model_path: Path
    verification_path: Path
    duplicates_path: Path


@dataclass
class LoopRun:
    """One run of :func:`reweight_loop`: its model, its errors on the loop's images (mireds,
    dataset order), the image it found worst and the duplicate counts after it."""

    run: int
    model: nn.Module
    errors: np.ndarray
    worst_index: int
    duplicates: dict[str, int]

    @property
    def worst(self) -> float:
        return float(self.errors[self.worst_index])

    @property
    def mean(self) -> float:
        return float(self.errors.mean())


def reweight_loop(
    dataset: AWBDataset,
    config: TrainConfig,
    *,
    duplicates: dict[str, int] | None = None,
    start: nn.Module | None = None,
    first_run: int = 0,
    iterations: int = 50,
    weight: int = 4,
    early_stopping: int | None = 10,
    later_epochs: int | None = None,
    sensors: list[str] | None = None,
    progress: bool = True,
    on_run: Callable[[LoopRun], None] | None = None,
) -> LoopRun:
    """The re-weighting loop on an in-memory dataset; returns the best run (lowest worst-case error
    on ``dataset``, ties: lowest mean). Writes nothing.

    Each run trains with the current duplicate counts (starting from ``start``, then from the
    previous run's model), scores every image of ``dataset`` and adds ``weight`` to the count of
    the worst one.

    Args:
        duplicates: the starting counts (``<user>,<sensor>,<id>`` prefixes); not modified.
        later_epochs: epochs of each run that continues a model (every run after the first, and the
            first too when ``start`` is given); default ``config.epochs``, as the seed's loop.
        sensors: the sensor list of a new sensor embedding (see :func:`train_model`).
        on_run: called with every run (e.g. to save it).
    """
    if iterations < 1:
        raise IsplabError(f"--iterations must be at least 1, got {iterations}")
    if weight < 1:
        raise IsplabError(f"--weight must be at least 1, got {weight}")
    duplicates = dict(duplicates or {})
    names = dataset_sensors(dataset)
    best: LoopRun | None = None
    since_best = 0
    for run in range(first_run, first_run + iterations):
        run_config = config
        if later_epochs is not None and start is not None:
            run_config = dataclasses.replace(config, epochs=later_epochs)
        weights = repeat_counts(dataset.samples, duplicates)
        model = train_model(dataset, run_config, weights=weights, input_model=start, progress=progress, sensors=sensors)
        start = model
        errors = mired_error(predict(model, dataset.images, dataset.lux, sensors=names), dataset.true_temp)
        worst_index = int(np.argmax(errors))
        prefix = dataset.samples[worst_index].prefix
        duplicates[prefix] = duplicates.get(prefix, 1) + weight  # counts are total inclusions
        record = LoopRun(run, model, errors, worst_index, dict(duplicates))
        if on_run:
            on_run(record)
        if best is None or (record.worst, record.mean) < (best.worst, best.mean):
            since_best = 0 if best is None or record.worst < best.worst else since_best + 1
            best = record
        else:
            since_best += 1
        if early_stopping is not None and since_best >= early_stopping:
            break
    return best


@dataclass
class AutoTrainResult:
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def best(self) -> RunRecord:
        """The run with the lowest worst-case error (ties: lowest mean)."""
        return min(self.runs, key=lambda r: (r.worst, r.mean))


def run_name(kind: str, worst: float, mean: float, run: int) -> str:
    """``model_12_2p6003_31`` style name: worst rounded, mean rounded to 4 decimals, ``p`` for the point."""
    return f"{kind}_{round(worst)}_{str(round(mean, 4)).replace('.', 'p')}_{run}"


def run_files(output_dir: str | Path) -> list[Path]:
    """The files earlier runs wrote into ``output_dir`` (models, verifications, duplicates), by name."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _RUN_FILE.fullmatch(p.name) or p.name == DUPLICATES)


def prepare_auto_train_dir(output_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check ``output_dir`` before any training: earlier runs' files are refused unless ``resume``
    (continue them) or ``overwrite`` (they are deleted).

    Raises:
        IsplabError: earlier runs are there and neither flag was given, both flags were given, or the
            folder cannot be written.
    """
    if overwrite and resume:
        raise IsplabError("--overwrite starts afresh and --resume continues: choose one")
    if not is_global_zero():  # DDP: rank 0 checked (and may already be writing) the folder
        return Path(output_dir)
    found = [p.name for p in run_files(output_dir)]
    folder = prepare_output_dir(output_dir, overwrite=overwrite, resume=resume, names=found, what="auto-train folder")
    if overwrite:
        for name in found:
            (folder / name).unlink()
    return folder


def auto_train(
    dataset: AWBDataset,
    output_dir: str | Path,
    config: TrainConfig,
    *,
    duplicate_file: str | Path | None = None,
    clear_duplicates: bool = False,
    input_model: str | Path | None = None,
    resume: bool = False,
    iterations: int = 50,
    weight: int = 4,
    early_stopping: int | None = 10,
    progress: bool = True,
    on_run: Callable[[RunRecord], None] | None = None,
) -> AutoTrainResult:
    """Run the re-weighting loop; see the module docstring for the files each run writes.

    Args:
        output_dir: where every file goes (see :func:`prepare_auto_train_dir` to check it first).
        duplicate_file: the starting duplicate counts (``<user>,<sensor>,<id>`` prefixes and a
            count), updated after every run; default ``output_dir/duplicates.txt``.
        clear_duplicates: start from empty duplicate counts instead.
        input_model: start the first run from this model instead of from scratch; every later
            run continues from the previous run's model, as the seed's loop does.
        resume: continue an interrupted loop in ``output_dir``: run numbers go on after the latest
            run, whose model the next run starts from.
        iterations: number of runs (this call's).
        weight: how much the worst image's count grows after each run.
        early_stopping: stop after this many runs without a better worst-case error.
        on_run: called with each run's record (the CLI prints a line).
    """
    if iterations < 1:
        raise IsplabError(f"--iterations must be at least 1, got {iterations}")
    if weight < 1:
        raise IsplabError(f"--weight must be at least 1, got {weight}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    duplicate_file = Path(duplicate_file) if duplicate_file is not None else output_dir / DUPLICATES
    duplicates = {} if clear_duplicates or not duplicate_file.exists() else read_duplicates(duplicate_file)
    first_run, start = 0, load_awb_model(input_model) if input_model else None
    if resume:
        if input_model:
            raise IsplabError("resume continues from the latest run's model: do not also give an input model")
        models = {int(m.group(2)): p for p in run_files(output_dir) if (m := _RUN_FILE.fullmatch(p.name)) and m.group(1) == "model"}
        if not models:
            raise IsplabError(f"cannot resume: {output_dir} holds no model_*.pt of an earlier auto-train run")
        first_run = max(models) + 1
        start = load_awb_model(models[max(models)])
    names = [sample.path.name for sample in dataset.samples]
    result = AutoTrainResult()

    def save(run: LoopRun) -> None:
        worst, mean, errors = run.worst, run.mean, run.errors
        model_path = output_dir / f"{run_name('model', worst, mean, run.run)}.pt"
        verification_path = output_dir / f"{run_name('verification', worst, mean, run.run)}.txt"
        duplicates_path = output_dir / f"{run_name('duplicates', worst, mean, run.run)}.txt"
        if is_global_zero():
            save_awb_model(run.model, model_path)
            order = np.argsort(-errors)
            verification_path.write_text("".join(f"{names[i]} {errors[i]:.2f}\n" for i in order))
            write_duplicates(duplicates_path, run.duplicates)
            write_duplicates(duplicate_file, run.duplicates)
        record = RunRecord(run.run, worst, mean, names[run.worst_index], model_path, verification_path, duplicates_path)
        result.runs.append(record)
        if on_run:
            on_run(record)

    reweight_loop(dataset, config, duplicates=duplicates, start=start, first_run=first_run, iterations=iterations,
                  weight=weight, early_stopping=early_stopping, progress=progress, on_run=save)
    return result
