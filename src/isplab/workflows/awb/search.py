"""Search AWB training recipes with Optuna: architecture, width, ensemble, loss, augmentation, LR, epochs.

Every trial is scored by the same grouped K-fold cross-validation as ``isplab awb evaluate --cv``
(:func:`~isplab.workflows.awb.evaluate.cross_validate`: scenes never split, folds fixed by the
search's seed, so every trial sees the same folds and no choice is made on a test fold's own
training). The objective is the mean out-of-fold error in mireds; after each fold the running
mean is reported to Optuna, and a :class:`optuna.pruners.MedianPruner` stops trials that are worse
than the median of earlier trials at the same fold. Each trial records as user attributes its
worst, median and 95th-percentile error, its parameter count and the float32 weight size
(parameters x 4 bytes); :func:`tflite_size_estimate` adds the exported graph (about 13.5 KB per
member, and the features' 111 KB for ``"blend"``; within 3 KB of the real file,
``tests/models/test_awb_small.py`` and ``tests/workflows/awb/test_export.py``;
``benchmarks/awb_rpi.py --search`` measures the real files).

The study lives in SQLite (``STUDY_DIR/study.db``): ``resume=True`` continues it (``trials`` is
the total wanted, finished and pruned trials count, trials left running by a killed search are
marked failed), and ``workers=K`` runs K processes on the same study, each with ``cores / K``
threads (and on a multi-GPU machine each on its own GPU). Outputs (:data:`SEARCH_FILES`):

* ``trials.csv``: one row per trial (state, errors, size, parameters);
* ``pareto.json``: the trials no other finished trial beats on both CV mean error and estimated
  float32 TFLite size (:func:`tflite_size_estimate`), plus
  the best trial overall, the best whose estimated TFLite file (:func:`tflite_size_estimate`)
  is within :data:`SMALL_BYTES`, and the baseline: trial 0 of a new study trains the base
  configuration (``awb train``'s default recipe) when the space holds it (:func:`baseline_params`);

The best trial's CV error is optimistic (it is the minimum over many trials scored on the same
folds). With ``holdout`` a share of the scenes never enters the search, and the best and best small
configurations are then scored on it: each trial's ``holdout`` summary in ``pareto.json``.
* ``pareto.png``: CV mean error against size, the Pareto front drawn as a staircase;
* ``best_config.json`` (and ``best_small_config.json``): the :class:`TrainConfig` JSON that
  ``isplab awb train --config`` reads.
"""

from __future__ import annotations

import csv
import functools
import gc
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from isplab.errors import IsplabError
from isplab.io.paths import remove_outputs
from isplab.models.awb import ARCHS
from isplab.workflows.awb.config import (
    LOSSES,
    TrainConfig,
    config_json,
    train_config_from_dict,
)
from isplab.workflows.awb.constants import REFERENCE_FILTERS as TARGET_FILTERS

__all__ = [
    "FEATURE_GRAPH_BYTES", "GRAPH_BYTES_PER_MEMBER", "HISTOGRAM_GRAPH_BYTES", "SEARCH_ARCHS", "SEARCH_FILES", "SMALL_BYTES", "SearchResult", "SearchSpace", "baseline_params", "pareto_front", "read_trials",
    "search", "study_settings", "suggest_config", "tflite_size_estimate", "write_outputs",
]

#: What a search writes into its study folder (``--overwrite`` deletes exactly these).
SEARCH_FILES = (
    "study.db", "trials.csv", "pareto.json", "pareto.png", "best_config.json", "best_small_config.json",
)
#: Size budget of a "small" model: Raspberry Pi's reference float32 TFLite files are 46 KB (PiSP)
#: and 42 KB (VC4) (``benchmarks/awb_rpi.py`` prints both).
SMALL_BYTES = 50 * 1024
#: Bytes a float32 TFLite export adds per ensemble member on top of the weights (the graph: ops,
#: shapes, constants); measured on the small and chroma nets.
GRAPH_BYTES_PER_MEMBER = 13.5 * 1024
#: Bytes the colour-constancy features (their bisections, unrolled) add to a ``"blend"`` export on
#: top of the weights and :data:`GRAPH_BYTES_PER_MEMBER` per CNN; the MLPs add next to nothing
#: (measured for 1-3 members of widths 8-24 on both targets: 113,644-114,556 bytes).
FEATURE_GRAPH_BYTES = 114_000
#: Bytes the log-chroma histogram of a ``"blend"`` with ``histogram_bins`` adds beyond its weights
#: (measured: 6,000 bytes for 4 bins, 6,828 for 8, two members of widths 4).
HISTOGRAM_GRAPH_BYTES = 6_800
STUDY_NAME = "awb"

#: Architectures a search may try (its default): :data:`isplab.models.awb.ARCHS` but ``"hybrid"``
#: (measured and dropped: ``benchmarks/awb_rpi.py``'s docstring).
SEARCH_ARCHS = tuple(arch for arch in ARCHS if arch != "hybrid")

#: Conv widths searched for the reference network ("valid" convs: VC4's 12x16 grid fits only two).
REFERENCE_FILTERS = {
    "pisp": ("8,16,32", "16,32,64", "24,48,96"),
    "vc4": ("16,32", "32,64", "48,96"),
}
#: Width and hidden-layer choices of the other architectures.
WIDTHS = {"chroma": (8, 12, 16, 24, 32), "small": (8, 12, 16, 24), "histogram": (4, 8, 16), "blend": (8, 12, 16, 24, 32)}
HIDDEN = {"chroma": (16, 32, 64), "small": (16, 32, 64), "histogram": (32, 64), "blend": (16, 32, 64)}
#: Hidden units of the ``"blend"``'s feature MLPs.
FEATURE_HIDDEN = (16, 32, 64, 128)
#: Log-chroma histogram bins per axis given to the ``"blend"``'s MLPs (0: none).
HISTOGRAM_BINS = (0, 6, 8, 12)
BATCH_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True)
class SearchSpace:
    """What a search varies; recorded in the study, and a resume must use the same.

    Attributes:
        archs: architectures tried (some of :data:`SEARCH_ARCHS`).
        epochs: ``(low, high)`` maximum epochs per model (early stopping may end sooner).
        max_ensemble: ensembles of 1..max_ensemble members.
        relight: also search the re-lighting half-width (0..40 mireds); needs the sensors' tuning files.
    """

    archs: tuple[str, ...] = SEARCH_ARCHS
    epochs: tuple[int, int] = (30, 200)
    max_ensemble: int = 5
    relight: bool = False

    def __post_init__(self) -> None:
        unknown = [a for a in self.archs if a not in SEARCH_ARCHS]
        if not self.archs or unknown:
            raise IsplabError(f"bad search archs {', '.join(self.archs) or '(none)'}: expected some of {', '.join(SEARCH_ARCHS)}")
        low, high = self.epochs
        if not 1 <= low <= high:
            raise IsplabError(f"bad search epochs {low}..{high}: expected 1 <= min <= max")
        if self.max_ensemble < 1:
            raise IsplabError(f"bad search max ensemble {self.max_ensemble}: expected 1 or more")

    def as_dict(self) -> dict[str, Any]:
        return {"archs": list(self.archs), "epochs": list(self.epochs), "max_ensemble": self.max_ensemble,
                "relight": self.relight}


def suggest_config(trial, target: str, space: SearchSpace, base: TrainConfig | None = None) -> TrainConfig:
    """Draw one training configuration from ``trial`` (an ``optuna.Trial``).

    ``base`` supplies what is not searched (seed, device, tuning folder, LR factor...). Parameter
    names are per architecture (``chroma_width``, ``small_width``...) so that each has one fixed
    set of choices across the study.
    """
    base = base or TrainConfig()
    arch = trial.suggest_categorical("arch", list(space.archs))
    options: dict[str, Any] = {}
    if arch == "reference":
        filters = trial.suggest_categorical(f"reference_filters_{target}", list(REFERENCE_FILTERS[target]))
        options["filters"] = [int(v) for v in filters.split(",")]
    else:
        options["width"] = trial.suggest_categorical(f"{arch}_width", list(WIDTHS[arch]))
        options["hidden"] = trial.suggest_categorical(f"{arch}_hidden", list(HIDDEN[arch]))
    if arch == "blend":
        options["feature_hidden"] = trial.suggest_categorical("blend_feature_hidden", list(FEATURE_HIDDEN))
        options["histogram_bins"] = trial.suggest_categorical("blend_histogram_bins", list(HISTOGRAM_BINS))
    epochs = trial.suggest_int("epochs", *space.epochs)
    patience = max(1, round(trial.suggest_float("patience_fraction", 0.1, 0.5) * epochs))
    return replace(
        base,
        arch=arch,
        arch_options=options,
        ensemble=trial.suggest_int("ensemble", 1, space.max_ensemble),
        loss=trial.suggest_categorical("loss", list(LOSSES)),
        noise=trial.suggest_float("noise", 0.0, 0.2),
        lux_noise=trial.suggest_float("lux_noise", 0.0, 0.4),
        flip=trial.suggest_categorical("flip", [True, False]),
        zoom=trial.suggest_float("zoom", 0.0, 0.2),
        relight=trial.suggest_float("relight", 0.0, 40.0) if space.relight else 0.0,
        lr=trial.suggest_float("lr", 3e-4, 1e-2, log=True),
        batch_size=trial.suggest_categorical("batch_size", list(BATCH_SIZES)),
        epochs=epochs,
        patience=patience,
        lr_patience=max(1, patience // 3),  # TrainConfig's 10 of 30
    )


def _arch_defaults(arch: str) -> dict[str, Any]:
    """The keyword defaults of ``arch``'s network class (what empty ``arch_options`` build)."""
    import inspect

    from isplab.models.awb import ARCH_CLASSES

    return {name: p.default for name, p in inspect.signature(ARCH_CLASSES[arch]).parameters.items()
            if p.default is not inspect.Parameter.empty}


def baseline_params(target: str, space: SearchSpace, base: TrainConfig) -> dict[str, Any] | None:
    """The trial parameters for which :func:`suggest_config` trains exactly ``base`` (all of its
    options, its network's width and hidden units), or ``None`` when ``base`` lies outside ``space``
    (another arch, more epochs than searched, a larger ensemble, a learning rate or width that
    is not a choice...). :func:`search` runs these as a new study's first trial, so the study
    scores the default recipe on its own folds and the sampler starts from it."""
    import optuna

    if base.arch not in space.archs or base.patience is None or base.rotation != 0:
        return None
    options = {**_arch_defaults(base.arch), **base.arch_options}
    params: dict[str, Any] = {"arch": base.arch}
    if base.arch == "reference":
        filters = base.arch_options.get("filters") or TARGET_FILTERS[target]  # the class default is PiSP's
        params[f"reference_filters_{target}"] = ",".join(str(int(v)) for v in filters)
    else:
        params[f"{base.arch}_width"] = options.get("width")
        params[f"{base.arch}_hidden"] = options.get("hidden")
    if base.arch == "blend":
        params["blend_feature_hidden"] = options.get("feature_hidden")
        params["blend_histogram_bins"] = options.get("histogram_bins")
    params.update(
        epochs=base.epochs, patience_fraction=base.patience / base.epochs, ensemble=base.ensemble, loss=base.loss,
        noise=base.noise, lux_noise=base.lux_noise, flip=base.flip, zoom=base.zoom, lr=base.lr,
        batch_size=base.batch_size,
    )
    if space.relight:
        params["relight"] = base.relight
    choices = {f"{base.arch}_width": WIDTHS.get(base.arch, ()), f"{base.arch}_hidden": HIDDEN.get(base.arch, ()),
               "blend_feature_hidden": FEATURE_HIDDEN, "blend_histogram_bins": HISTOGRAM_BINS, "batch_size": BATCH_SIZES, "loss": LOSSES,
               f"reference_filters_{target}": REFERENCE_FILTERS.get(target, ())}
    ranges = {"epochs": space.epochs, "patience_fraction": (0.1, 0.5), "ensemble": (1, space.max_ensemble),
              "noise": (0.0, 0.2), "lux_noise": (0.0, 0.4), "zoom": (0.0, 0.2), "relight": (0.0, 40.0),
              "lr": (3e-4, 1e-2)}
    for name, value in params.items():
        if name in choices and value not in choices[name]:
            return None
        if name in ranges and not ranges[name][0] <= value <= ranges[name][1]:
            return None
    # Checked, not assumed: the parameters must give back base, its network spelled out in full.
    drawn = suggest_config(optuna.trial.FixedTrial(params), target, space, base)
    if replace(drawn, arch_options=base.arch_options) != base:
        return None
    defaults = _arch_defaults(base.arch)
    if any(options[k] != defaults.get(k) for k in options if k not in drawn.arch_options):  # e.g. dropout
        return None
    return params


def parameter_count(target: str, config: TrainConfig) -> int:
    """Parameters of the model ``config`` trains for ``target`` (all ensemble members)."""
    from isplab.workflows.awb.model import build_awb_model

    model = build_awb_model(target, config.arch, ensemble=config.ensemble, **config.arch_options)
    return sum(p.numel() for p in model.parameters())


def tflite_size_estimate(parameters: int, ensemble: int, arch: str | None = None, histogram_bins: int = 0) -> int:
    """Estimated float32 TFLite file size: 4 bytes a parameter plus :data:`GRAPH_BYTES_PER_MEMBER`
    per member, plus :data:`FEATURE_GRAPH_BYTES` for ``arch="blend"`` and
    :data:`HISTOGRAM_GRAPH_BYTES` when its MLPs take a histogram (within 3 KB of the real file
    for small nets of 1 and 2 members, ``tests/models/test_awb_small.py``, and for blends of 2,
    ``tests/workflows/awb/test_export.py``; ``benchmarks/awb_rpi.py --search`` measures real files)."""
    blend = arch == "blend"
    return round(4 * parameters + GRAPH_BYTES_PER_MEMBER * ensemble + (FEATURE_GRAPH_BYTES if blend else 0)
                 + (HISTOGRAM_GRAPH_BYTES if blend and histogram_bins else 0))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates minimised, sorted by the
    second coordinate (size) then the first.

    ``a`` dominates ``b`` when ``a <= b`` in both coordinates and ``a < b`` in one; equal points
    do not dominate each other, so both are kept.
    """
    front = []
    for i, (error, size) in enumerate(points):
        dominated = any(
            e <= error and s <= size and (e < error or s < size) for j, (e, s) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][1], points[i][0]))


# --- running the study ------------------------------------------------------------------------


def _quiet(function):
    """Run ``function`` with Lightning's and Optuna's info logs and known warnings silenced, and
    restore them afterwards (the caller's process keeps its own settings)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import lightning.pytorch  # noqa: F401 - its import sets its loggers' levels: quiet them afterwards
        import optuna

        loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")]
        levels = [logger.level for logger in loggers]
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets its own line (_report_trial)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
                warnings.filterwarnings("ignore", message=".*will not be re-lit.*")
                return function(*args, **kwargs)
        finally:
            optuna.logging.set_verbosity(verbosity)
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)

    return wrapper


def _storage(db: Path):
    import optuna

    # A generous lock timeout: K worker processes write to the same SQLite file.
    return optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}", engine_kwargs={"connect_args": {"timeout": 120}})


def _sampler(seed: int, worker: int, parallel: bool, start: int = 0):
    import optuna

    # Each worker, and each resume (``start``: trials already in the study), draws its own random
    # numbers, so a resume does not repeat the first run's startup trials; constant_liar keeps
    # parallel workers apart.
    state = np.random.SeedSequence([seed, worker, start]).generate_state(1)[0]
    return optuna.samplers.TPESampler(
        seed=int(state), multivariate=True, group=True, constant_liar=parallel, n_startup_trials=8
    )


def _pruner():
    import optuna

    # Compare a trial's running CV mean after each fold with the median of earlier trials there.
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)


class _OutOfTime(Exception):
    """A trial still running when the search's time is up (recorded as failed: a resume redoes it)."""


@dataclass
class _Objective:
    dataset: Any  # AWBDataset
    folds: int
    fold_seed: int
    space: SearchSpace
    base: TrainConfig
    deadline: float | None = None  # time.time() after which running trials stop at their next fold

    def __call__(self, trial) -> float | None:
        import optuna

        from isplab.workflows.awb.evaluate import cross_validate

        config = suggest_config(trial, self.dataset.target, self.space, self.base)
        parameters = parameter_count(self.dataset.target, config)
        trial.set_user_attr("parameters", parameters)
        trial.set_user_attr("size_bytes", 4 * parameters)
        trial.set_user_attr("process", os.getpid())
        trial.set_user_attr("config", asdict(replace(config, device="auto", devices=1)))
        start = time.perf_counter()
        fold_means: list[float] = []

        def on_fold(fold, running_mean: float) -> None:
            fold_means.append(fold.model.mean)
            trial.set_user_attr("fold_means", fold_means)
            trial.report(running_mean, fold.index)
            if trial.should_prune():
                trial.set_user_attr("seconds", time.perf_counter() - start)
                raise optuna.TrialPruned(f"running CV mean {running_mean:.2f} after fold {fold.index}")
            if self.deadline is not None and time.time() > self.deadline and fold.index < self.folds - 1:
                raise _OutOfTime(f"stopped by --timeout after fold {fold.index}")

        try:
            result = cross_validate(self.dataset, self.folds, config, seed=self.fold_seed, on_fold=on_fold)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # noqa: BLE001 - a configuration that cannot train is a failed trial, not a failed search
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            trial.set_user_attr("seconds", time.perf_counter() - start)
            return None  # a failed trial: the search carries on
        trial.set_user_attr("seconds", time.perf_counter() - start)
        for name in ("worst", "median", "p95"):
            trial.set_user_attr(f"cv_{name}", getattr(result.model, name))
        return result.model.mean


@_quiet
def _run_worker(
    worker: int, workers: int, db: str, objective: _Objective, target: int, seed: int, threads: int | None,
    storage=None, start: int = 0,
) -> None:
    """Run trials until the study holds ``target`` finished + pruned ones (module-level so
    ``spawn`` can start it)."""
    import optuna
    import torch

    if threads:
        torch.set_num_threads(threads)
    study = optuna.load_study(
        study_name=STUDY_NAME, storage=storage or _storage(Path(db)), sampler=_sampler(seed, worker, workers > 1, start),
        pruner=_pruner(),
    )
    study.set_user_attr(f"worker_{start}_{worker}_process", os.getpid())  # which processes served the study
    states = optuna.trial.TrialState
    failures = 0
    # Ask/tell rather than study.optimize: the count is checked before each trial, so workers that
    # start late or run fast share the trials without overshooting the target; the deadline is
    # the search's (spawned workers start late), not one counted from each worker's start.
    while objective.deadline is None or time.time() < objective.deadline:
        counted = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.RUNNING))
        if len(counted) >= target or failures >= max(5, target):
            break
        trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=states.PRUNED)
        except BaseException:  # Ctrl-C, or a bug: record the trial as failed, then stop
            study.tell(trial, state=states.FAIL)
            raise
        else:
            if value is None:
                failures += 1
                frozen = study.tell(trial, state=states.FAIL)
            else:
                frozen = study.tell(trial, value)
        _report_trial(study, frozen)
        gc.collect()


def _report_trial(study, trial) -> None:
    """One stderr line per trial (workers print too)."""
    attrs = trial.user_attrs
    what = f"{attrs.get('config', {}).get('arch')} x{attrs.get('config', {}).get('ensemble')}, {attrs.get('parameters')} parameters"
    if trial.state.name == "PRUNED":  # Optuna gives a pruned trial its last running mean as value
        outcome = f"pruned after fold {max(trial.intermediate_values, default=-1)}"
    elif trial.value is not None and math.isfinite(trial.value):
        outcome = f"CV mean {trial.value:.2f}, worst {attrs.get('cv_worst', math.nan):.1f} mireds"
    else:
        outcome = f"failed: {attrs.get('error', 'see above')}"
    print(f"trial {trial.number} ({what}, {attrs.get('seconds', 0):.0f} s): {outcome}", file=sys.stderr, flush=True)


@dataclass
class SearchResult:
    """What a search left in its study folder.

    Attributes:
        study_dir: the folder.
        trials: rows of ``trials.csv`` (:func:`read_trials`).
        pareto: the Pareto-front rows, smallest first.
        best: the row of the trial with the lowest CV mean error (``None``: no trial finished).
        best_small: the best row whose ``tflite_estimate`` is within :data:`SMALL_BYTES` (``None``: none).
        best_config: ``best``'s :class:`TrainConfig`.
    """

    study_dir: Path
    trials: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_small: dict[str, Any] | None
    best_config: TrainConfig | None
    counts: dict[str, int] = field(default_factory=dict)


@_quiet
def search(
    dataset_dir: str | Path,
    study_dir: str | Path,
    *,
    target: str | None = None,
    trials: int = 50,
    folds: int = 5,
    workers: int = 1,
    device: str = "auto",
    timeout: float | None = None,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    space: SearchSpace | None = None,
    base: TrainConfig | None = None,
    holdout: float = 0.0,
    baseline: bool = True,
    log: Callable[[str], None] = lambda text: None,
) -> SearchResult:
    """Run (or continue) an Optuna search of AWB training recipes; see the module docstring.

    Args:
        dataset_dir: statistics dataset folder (:func:`~isplab.workflows.awb.dataset.load_dataset`).
        study_dir: the study folder (:data:`SEARCH_FILES`).
        target: ``pisp`` or ``vc4`` (default: from the images).
        trials: finished + pruned trials the study should hold at the end (a resume counts earlier ones).
        folds: K of the grouped K-fold CV scoring each trial.
        workers: parallel processes sharing the study (1: in this process).
        device: where to train (``cpu``, ``cuda``, ``auto``...); ``cuda`` with several GPUs spreads workers over them.
        timeout: seconds after which no trial starts and running ones stop at their next fold
            (recorded as failed, so a resume runs them again).
        seed: sampler and fold seed (training uses ``base.seed``).
        resume: continue the study in ``study_dir`` (its target, images, folds, seed and space must
            match; trials it left running are marked failed, so no other search may be using it).
        overwrite: delete a previous search's files in ``study_dir`` first.
        space: what is searched (default :class:`SearchSpace`).
        base: options not searched (default :class:`TrainConfig`).
        holdout: keep about this fraction of the scenes (one of ``round(1 / holdout)`` grouped folds,
            drawn with ``seed``) out of the search; the best configuration and the best small one are
            then trained on the searched images and scored on these, an error the choice of
            configuration has not seen (``pareto.json``'s ``holdout``). 0: off.
        baseline: a new study's first trial trains ``base`` itself (:func:`baseline_params`; by
            default the default recipe) when it lies in ``space``, so the study scores it on the
            same folds as every other trial; a ``base`` outside ``space`` is said in ``log``.
        log: receives progress lines.

    Raises:
        IsplabError: bad counts, an existing study without ``resume``/``overwrite`` (or both given),
            ``resume`` without a study or with other settings, absent hardware, a bad dataset, or
            every trial failed.
    """
    import optuna

    from isplab.engine import resolve_accelerator
    from isplab.io.paths import prepare_output_dir
    from isplab.workflows.awb.dataset import load_dataset

    space = space or SearchSpace()
    base = base or TrainConfig()
    for name, value, low in (("trials", trials, 1), ("folds", folds, 2), ("workers", workers, 1)):
        if value < low:
            raise IsplabError(f"bad --{name} {value}: expected {low} or more")
    if timeout is not None and timeout <= 0:
        raise IsplabError(f"bad --timeout {timeout}: expected seconds > 0")
    if not 0 <= holdout <= 0.5:
        raise IsplabError(f"bad --holdout {holdout}: expected a fraction of the scenes from 0 (off) to 0.5")
    if resume and overwrite:
        raise IsplabError("give --resume (continue the study) or --overwrite (start again), not both")
    study_dir = Path(study_dir)
    db = study_dir / "study.db"
    if db.exists() and not (resume or overwrite):
        raise IsplabError(
            f"study folder {study_dir} already holds a search ({db.name}): pass --resume to continue it, "
            "--overwrite to start again, or choose another folder"
        )
    prepare_output_dir(study_dir, overwrite=overwrite, resume=resume, names=SEARCH_FILES, what="study folder")
    if resume and not db.is_file():
        raise IsplabError(f"cannot resume: {db} does not exist (start the search without --resume)")
    accelerator = resolve_accelerator(device)
    dataset = load_dataset(dataset_dir, target)
    searched, held_out = _split_holdout(dataset, holdout, seed)
    scenes = len({dataset.samples[i].scene for i in searched})
    if folds > scenes:
        raise IsplabError(f"{dataset_dir} has {scenes} scenes{' outside the holdout' if holdout else ''}: "
                          f"too few for {folds} folds")
    if space.relight and base.relight == 0 and base.tuning_dir is None:
        log("relight is searched without a tuning folder: libcamera's installed tuning files must cover the sensors")
    if overwrite:
        remove_outputs(study_dir, SEARCH_FILES)
    # The images are identified by their names (which hold the labels), not by the folder's path,
    # so a study started on one machine resumes on another.
    names = hashlib.sha256("\n".join(sorted(s.path.name for s in dataset.samples)).encode()).hexdigest()[:16]
    settings = {
        "target": dataset.target, "images": len(dataset), "image_names_sha256": names,
        "folds": folds, "seed": seed, "space": space.as_dict(), "holdout": holdout,
    }
    storage = _storage(db)
    if resume:
        try:
            study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        except KeyError:
            raise IsplabError(f"cannot resume: {db} holds no isplab AWB study") from None
        recorded = study.user_attrs.get("settings")
        if recorded != settings:
            differ = sorted(k for k in settings if (recorded or {}).get(k) != settings[k])
            raise IsplabError(
                f"cannot resume {db}: it was started with other settings ({', '.join(differ)} differ: "
                f"{', '.join(f'{k}={(recorded or {}).get(k)!r}' for k in differ)}); use the same, or --overwrite"
            )
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # Left running by a search that was killed: nothing is computing it any more (a resume
            # assumes that no other search is working on the same study).
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    else:
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="minimize")
        study.set_user_attr("settings", settings)
        study.set_user_attr("dataset", str(Path(dataset_dir).resolve()))
        if baseline:
            params = baseline_params(dataset.target, space, base)
            if params is None:
                low, high = space.epochs
                why = f" (its {base.epochs} epochs against {low}..{high})" if not low <= base.epochs <= high else ""
                log(f"the base configuration lies outside the search space{why}: not run as a baseline trial")
            else:
                study.enqueue_trial(params, user_attrs={"baseline": True})
                log(f"trial 0 is the base configuration ({base.arch} x{base.ensemble}, {base.epochs} epochs)")

    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=counted))
    remaining = trials - done
    base = replace(base, device=accelerator, devices=1, strategy="auto", num_nodes=1)
    objective = _Objective(dataset.subset(searched), folds, seed, space, base,
                           None if timeout is None else time.time() + timeout)
    if remaining > 0:
        kept = f" ({len(held_out)} more held out)" if len(held_out) else ""
        log(f"{dataset.target}: {len(searched)} images{kept}, {scenes} scenes; {remaining} trials of {folds}-fold CV "
            f"on {accelerator} with {workers} worker{'s' if workers > 1 else ''} -> {db}")
        start = len(study.get_trials(deepcopy=False))
        _optimize(objective, db, remaining, workers, seed, accelerator, storage, start, done)
    else:
        log(f"{db} already holds {trials - remaining} finished or pruned trials (asked for {trials})")
    result = write_outputs(study_dir, storage)
    if len(held_out) and result.best is not None:
        missing = [row for row in (result.best, result.best_small) if row is not None and row.get("holdout") is None]
        for row in {r["number"]: r for r in missing}.values():
            log(f"training trial {row['number']}'s configuration on the searched images, scoring the held-out ones")
            summary = _score_holdout(dataset, searched, held_out, row["config"], accelerator)
            study.set_user_attr(f"holdout_{row['number']}", summary)
        if missing:
            result = write_outputs(study_dir, storage)
    if result.best is None:
        errors = [row["error"] for row in result.trials if row.get("error")]
        raise IsplabError(
            f"no trial of the search in {study_dir} finished"
            + (f"; the first failure: {errors[0]}" if errors else " (all pruned or stopped by --timeout)")
        )
    return result


def _split_holdout(dataset, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(searched, held-out) image indices: one of ``round(1 / holdout)`` grouped folds held out."""
    every = np.arange(len(dataset))
    if holdout == 0:
        return every, every[:0]
    from isplab.workflows.awb.dataset import grouped_kfold

    return grouped_kfold(dataset.samples, max(2, round(1 / holdout)), seed=seed + 1_000_003)[0]


def _score_holdout(dataset, searched: np.ndarray, held_out: np.ndarray, config: dict, accelerator: str) -> dict:
    from isplab.workflows.awb.dataset import mired_error
    from isplab.workflows.awb.evaluate import summarise
    from isplab.workflows.awb.predict import predict
    from isplab.workflows.awb.train import train_model

    config = replace(train_config_from_dict(config), device=accelerator)
    # As in cross_validate: a sensor embedding knows every sensor of the dataset.
    model = train_model(dataset.subset(searched), config, progress=False,
                        sensors=sorted({s.sensor for s in dataset.samples}))
    predicted = predict(model, dataset.images[held_out], dataset.lux[held_out],
                        sensors=[dataset.samples[i].sensor for i in held_out])
    return summarise(mired_error(predicted, dataset.true_temp[held_out])).as_dict()


def _optimize(objective: _Objective, db: Path, remaining: int, workers: int, seed: int,
              accelerator: str, storage, start: int, start_counted: int) -> None:
    workers = min(workers, remaining)
    target = start_counted + remaining
    if workers == 1:
        _run_worker(0, 1, str(db), objective, target, seed, None, storage, start)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    gpus = 0
    if accelerator == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    context = multiprocessing.get_context("spawn")  # CUDA and forked threads do not mix
    processes = []
    for worker in range(workers):
        job = objective if gpus < 2 else replace(objective, base=replace(objective.base, devices=[worker % gpus]))
        process = context.Process(
            target=_run_worker, args=(worker, workers, str(db), job, target, seed, threads, None, start),
            name=f"isplab-awb-search-{worker}",
        )
        process.start()
        processes.append(process)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    failed = [p.name for p in processes if p.exitcode not in (0, None)]
    if failed:
        raise IsplabError(f"search worker(s) {', '.join(failed)} exited with an error (see their messages above)")


# --- reading a study --------------------------------------------------------------------------


@_quiet
def read_trials(study_dir: str | Path, storage=None) -> list[dict[str, Any]]:
    """One dict per trial of the study in ``study_dir``: ``number``, ``state``, ``cv_mean``
    (``None`` unless finished), ``cv_worst``, ``cv_median``, ``cv_p95``, ``parameters``,
    ``size_bytes`` (4 bytes a parameter), ``tflite_estimate`` (:func:`tflite_size_estimate`), ``seconds``, ``arch``, ``ensemble``, ``last_fold`` (the last fold reported),
    ``error``, ``baseline`` (the trial :func:`search` ran for its ``base``), ``config``
    (:class:`TrainConfig` as a dict) and ``params`` (Optuna's).

    Raises:
        IsplabError: no ``study.db`` in ``study_dir``, or not an isplab AWB study.
    """
    import optuna

    db = Path(study_dir) / "study.db"
    if not db.is_file():
        raise IsplabError(f"no search study in {study_dir}: {db} not found")
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage or _storage(db))
    except KeyError:
        raise IsplabError(f"{db} holds no isplab AWB study") from None
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file
        raise IsplabError(f"{db} is not a readable Optuna SQLite study: {e}") from None
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        config = attrs.get("config") or {}
        finished = trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None
        rows.append({
            "number": trial.number,
            "state": trial.state.name.lower(),
            "cv_mean": float(trial.value) if finished else None,
            "cv_worst": attrs.get("cv_worst") if finished else None,
            "cv_median": attrs.get("cv_median") if finished else None,
            "cv_p95": attrs.get("cv_p95") if finished else None,
            "parameters": attrs.get("parameters"),
            "size_bytes": attrs.get("size_bytes"),
            "tflite_estimate": (tflite_size_estimate(attrs["parameters"], config.get("ensemble", 1), config.get("arch"),
                                                     (config.get("arch_options") or {}).get("histogram_bins", 0))
                                if attrs.get("parameters") is not None else None),
            "seconds": attrs.get("seconds"),
            "arch": config.get("arch"),
            "ensemble": config.get("ensemble"),
            "last_fold": max(trial.intermediate_values) if trial.intermediate_values else None,
            "intermediate": {int(k): float(v) for k, v in trial.intermediate_values.items()},
            "error": attrs.get("error"),
            "baseline": bool(attrs.get("baseline", False)),
            "holdout": study.user_attrs.get(f"holdout_{trial.number}"),
            "config": config,
            "params": dict(trial.params),
        })
    return rows


@_quiet
def study_settings(study_dir: str | Path) -> dict[str, Any]:
    """What the study in ``study_dir`` was started with: ``target``, ``images``,
    ``image_names_sha256``, ``folds``, ``seed`` and ``space``.

    Raises:
        IsplabError: no readable isplab AWB study there.
    """
    import optuna

    db = Path(study_dir) / "study.db"
    if not db.is_file():
        raise IsplabError(f"no search study in {study_dir}: {db} not found")
    try:
        return dict(optuna.load_study(study_name=STUDY_NAME, storage=_storage(db)).user_attrs.get("settings", {}))
    except KeyError:
        raise IsplabError(f"{db} holds no isplab AWB study") from None


CSV_COLUMNS = ("number", "state", "cv_mean", "cv_worst", "cv_median", "cv_p95", "parameters", "size_bytes",
               "tflite_estimate", "seconds", "arch", "ensemble", "last_fold", "error", "baseline", "params")


@_quiet
def write_outputs(study_dir: str | Path, storage=None) -> SearchResult:
    """Write ``trials.csv``, ``pareto.json``, ``pareto.png`` and the best configurations from the
    study in ``study_dir``; returns what they hold."""
    study_dir = Path(study_dir)
    rows = read_trials(study_dir, storage)
    with (study_dir / "trials.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(["" if row[c] is None else json.dumps(row[c], sort_keys=True) if c == "params" else row[c]
                             for c in CSV_COLUMNS])
    finished = [row for row in rows if row["cv_mean"] is not None and row["tflite_estimate"] is not None]
    front = [finished[i] for i in pareto_front([(row["cv_mean"], row["tflite_estimate"]) for row in finished])]
    best = min(finished, key=lambda row: row["cv_mean"], default=None)
    best_small = min((row for row in finished if row["tflite_estimate"] <= SMALL_BYTES),
                     key=lambda row: row["cv_mean"], default=None)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1

    def brief(row: dict[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        return {k: row[k] for k in ("number", "cv_mean", "cv_worst", "cv_median", "cv_p95", "parameters",
                                     "size_bytes", "tflite_estimate", "seconds", "arch", "ensemble", "holdout",
                                     "config")}

    (study_dir / "pareto.json").write_text(json.dumps({
        "objective": "grouped K-fold CV mean error (mireds) vs estimated float32 TFLite size (tflite_estimate)",
        "small_bytes": SMALL_BYTES,
        "best_small_means": "lowest CV mean error with tflite_estimate <= small_bytes",
        "counts": counts,
        "pareto": [brief(row) for row in front],
        "best": brief(best),
        "best_small": brief(best_small),
        "baseline": brief(next((row for row in finished if row["baseline"]), None)),
    }, indent=2))
    best_config = None
    for row, name in ((best, "best_config.json"), (best_small, "best_small_config.json")):
        path = study_dir / name
        if row is None:
            if path.exists():
                path.unlink()
            continue
        config = train_config_from_dict(row["config"], f"trial {row['number']}")
        path.write_text(config_json(config) + "\n")
        if name == "best_config.json":
            best_config = config
    _plot(rows, front, study_dir / "pareto.png")
    return SearchResult(study_dir, rows, front, best, best_small, best_config, counts)


def _plot(rows: list[dict[str, Any]], front: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = figure.add_subplot()
    finished = [row for row in rows if row["cv_mean"] is not None and row["tflite_estimate"]]
    colours = dict(zip(ARCHS, ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")))
    for arch in ARCHS:
        mine = [row for row in finished if row["arch"] == arch]
        if mine:
            ax.scatter([r["tflite_estimate"] / 1024 for r in mine], [r["cv_mean"] for r in mine], s=22, alpha=0.75,
                       color=colours.get(arch, "tab:gray"), label=f"{arch} ({len(mine)})")
    if front:
        sizes = [r["tflite_estimate"] / 1024 for r in front]
        errors = [r["cv_mean"] for r in front]
        ax.step(sizes, errors, where="post", color="black", linewidth=1.2, label="Pareto front")
        ax.scatter(sizes, errors, s=60, facecolors="none", edgecolors="black")
        for row in front:
            ax.annotate(f"#{row['number']}", (row["tflite_estimate"] / 1024, row["cv_mean"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    for row in (r for r in finished if r.get("baseline")):
        ax.scatter([row["tflite_estimate"] / 1024], [row["cv_mean"]], s=90, marker="x", color="black",
                   label=f"default recipe (#{row['number']})")
    if finished:
        ax.set_xscale("log")
    ax.set_xlabel("estimated float32 TFLite size (KB)")
    ax.set_ylabel("grouped CV mean error (mireds)")
    pruned = sum(row["state"] == "pruned" for row in rows)
    ax.set_title(f"AWB search: {len(finished)} finished, {pruned} pruned trials")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    figure.savefig(path, dpi=110)


def best_config_dict(result: SearchResult) -> dict[str, Any] | None:
    """``best_config.json``'s content (``None`` when no trial finished)."""
    return None if result.best_config is None else json.loads(config_json(result.best_config))
