"""``isplab awb search``: the Optuna study (search space, pruning hook, SQLite resume, refusal),
its outputs (trials.csv, Pareto front, best_config.json) and ``awb train --config``."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.io import write_image
from isplab.workflows.awb.config import TrainConfig, load_train_config
from isplab.workflows.awb.dataset import load_dataset
from isplab.workflows.awb.evaluate import cross_validate
from isplab.workflows.awb.model import build_awb_model
from isplab.workflows.awb.search import (
    FEATURE_GRAPH_BYTES,
    GRAPH_BYTES_PER_MEMBER,
    HISTOGRAM_GRAPH_BYTES,
    REFERENCE_FILTERS,
    SEARCH_FILES,
    SearchSpace,
    baseline_params,
    parameter_count,
    pareto_front,
    read_trials,
    search,
    suggest_config,
    tflite_size_estimate,
)

optuna = pytest.importorskip("optuna")


def write_dataset(folder: Path, scenes: int = 12, size=(12, 16), seed: int = 0) -> Path:
    """VC4-sized statistics of grey-world scenes lit so that R/B = (5000 / T)^2; every other scene
    shot by two sensors (two images, one scene)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(scenes):
        temp = float(rng.uniform(2900, 7500))
        lux = int(rng.uniform(10, 2000))
        illuminant = np.array([0.4 * 5000 / temp, 0.4, 0.4 * temp / 5000])
        image = np.round(np.clip(rng.uniform(0.3, 1.0, (*size, 1)) * illuminant, 0, 1) * 65535).astype(np.uint16)
        for sensor in ("imx219", "imx708")[: 1 + i % 2]:
            write_image(folder / f"u{i % 3},{sensor},{i},{temp:.0f},{lux},{temp * 1.1:.0f}.png", image)
    return folder



# --- Pareto front -------------------------------------------------------------------------------


def test_pareto_front_of_hand_made_points():
    points = [(10, 100), (12, 50), (9, 200), (11, 100), (12, 50), (8, 400), (20, 40), (15, 400), (10, 120)]
    # (11, 100) and (10, 120) lose to (10, 100); (15, 400) to (8, 400); the equal (12, 50)s both stay.
    assert pareto_front(points) == [6, 1, 4, 0, 2, 5]
    assert pareto_front([]) == []
    assert pareto_front([(5.0, 1.0)]) == [0]
    # Better in one coordinate only: both stay; better in both: one.
    assert pareto_front([(1, 2), (2, 1)]) == [1, 0]
    assert pareto_front([(1, 1), (2, 2)]) == [0]


# --- search space -------------------------------------------------------------------------------


def test_search_space_includes_the_small_arch_and_maps_parameters():
    assert "small" in SearchSpace().archs
    params = {
        "arch": "small", "small_width": 8, "small_hidden": 16, "epochs": 100, "patience_fraction": 0.25,
        "ensemble": 2, "loss": "l1", "noise": 0.05, "lux_noise": 0.3, "flip": False, "zoom": 0.1, "lr": 2e-3,
        "batch_size": 32,
    }
    config = suggest_config(optuna.trial.FixedTrial(params), "vc4", SearchSpace(), TrainConfig(seed=7))
    assert config == TrainConfig(
        seed=7, arch="small", arch_options={"width": 8, "hidden": 16}, epochs=100, patience=25, lr_patience=8,
        ensemble=2, loss="l1", noise=0.05, lux_noise=0.3, flip=False, zoom=0.1, relight=0.0, lr=2e-3, batch_size=32,
    )
    # Two members of 8-wide small nets: 2 x 1441 parameters (tests/models/test_awb_small.py).
    assert parameter_count("vc4", config) == 2882


def test_search_space_maps_the_blend_and_estimates_its_features_graph():
    """A blend trial sets the CNNs' width and hidden units and the feature MLPs' units; its TFLite
    estimate adds the features' graph to the per-member one."""
    params = {
        "arch": "blend", "blend_width": 8, "blend_hidden": 16, "blend_feature_hidden": 32, "blend_histogram_bins": 6, "epochs": 60,
        "patience_fraction": 0.5, "ensemble": 2, "loss": "l1", "noise": 0.0, "lux_noise": 0.0, "flip": True,
        "zoom": 0.0, "lr": 1e-3, "batch_size": 64,
    }
    config = suggest_config(optuna.trial.FixedTrial(params), "vc4", SearchSpace(archs=("blend",)), TrainConfig(seed=3))
    assert (config.arch, config.arch_options, config.ensemble) == (
        "blend", {"width": 8, "hidden": 16, "feature_hidden": 32, "histogram_bins": 6}, 2)
    model = build_awb_model("vc4", "blend", ensemble=2, width=8, hidden=16, feature_hidden=32, histogram_bins=6)
    assert parameter_count("vc4", config) == sum(p.numel() for p in model.parameters())
    assert len(model.feature_heads) == 2 and model.feature_heads[0][0].out_features == 32
    n = parameter_count("vc4", config)
    assert tflite_size_estimate(n, 2, "blend") == round(4 * n + 2 * GRAPH_BYTES_PER_MEMBER + FEATURE_GRAPH_BYTES)
    assert tflite_size_estimate(n, 2, "blend", 6) == tflite_size_estimate(n, 2, "blend") + HISTOGRAM_GRAPH_BYTES
    assert model.feature_heads[0][0].in_features == 40 + 36  # the features, then the 6 x 6 histogram
    assert tflite_size_estimate(n, 2, "chroma") == tflite_size_estimate(n, 2) == round(4 * n + 2 * GRAPH_BYTES_PER_MEMBER)


@pytest.mark.parametrize("target", ["pisp", "vc4"])
def test_every_searched_reference_width_builds_for_its_target(target):
    for filters in REFERENCE_FILTERS[target]:
        params = {"arch": "reference", f"reference_filters_{target}": filters, "epochs": 40,
                  "patience_fraction": 0.5, "ensemble": 1, "loss": "mse", "noise": 0.1, "lux_noise": 0.2,
                  "flip": True, "zoom": 0.0, "lr": 1e-3, "batch_size": 16, "relight": 20.0}
        config = suggest_config(optuna.trial.FixedTrial(params), target, SearchSpace(relight=True))
        assert config.arch_options == {"filters": [int(v) for v in filters.split(",")]}
        assert config.relight == 20.0 and config.patience == 20
        assert parameter_count(target, config) > 0


def test_baseline_params_give_back_the_default_recipe_or_none_outside_the_space():
    """The default recipe (a blend of 3, 240 epochs...) as trial parameters: drawn back through
    suggest_config they train the same network with the same options; outside the space, none."""
    space = SearchSpace(archs=("blend", "small"), epochs=(120, 300), max_ensemble=3)
    params = baseline_params("vc4", space, TrainConfig())
    assert params == {
        "arch": "blend", "blend_width": 24, "blend_hidden": 64, "blend_feature_hidden": 64, "blend_histogram_bins": 0,
        "epochs": 240,
        "patience_fraction": 0.125, "ensemble": 3, "loss": "l1", "noise": 0.1, "lux_noise": 0.2, "flip": True,
        "zoom": 0.0, "lr": 2e-3, "batch_size": 64,
    }
    drawn = suggest_config(optuna.trial.FixedTrial(params), "vc4", space, TrainConfig())
    assert drawn == TrainConfig(arch_options={"width": 24, "hidden": 64, "feature_hidden": 64, "histogram_bins": 0})
    assert (drawn.patience, drawn.lr_patience) == (30, 10)
    default = build_awb_model("vc4", "blend", ensemble=3)
    assert parameter_count("vc4", drawn) == sum(p.numel() for p in default.parameters())
    # Re-lighting searched: the default's 0 mireds is one of its values.
    assert baseline_params("vc4", SearchSpace(archs=("blend",), epochs=(120, 300), relight=True), TrainConfig())["relight"] == 0.0
    # The reference's filters are the target's, not the class default (PiSP's three convs).
    assert baseline_params("vc4", SearchSpace(archs=("reference",), epochs=(120, 300)),
                           TrainConfig(arch="reference"))["reference_filters_vc4"] == "32,64"
    outside = [
        (SearchSpace(), TrainConfig()),  # 240 epochs, more than the default space's 200
        (SearchSpace(archs=("small",), epochs=(120, 300)), TrainConfig()),  # another arch
        (replace(space, max_ensemble=2), TrainConfig()),  # 3 members
        (space, TrainConfig(lr=2e-2)),  # above the LR range
        (space, TrainConfig(arch_options={"width": 20})),  # not a width choice
        (space, TrainConfig(arch_options={"histogram_bins": 4})),  # not a histogram choice
        (space, TrainConfig(arch_options={"dropout": 0.3})),  # not searched, and not the default
        (space, TrainConfig(lr_patience=7)),  # the search derives it from the patience
        (space, TrainConfig(patience=None)),
    ]
    for searched, base in outside:
        assert baseline_params("vc4", searched, base) is None, (searched, base)


def test_search_space_refuses_bad_settings():
    with pytest.raises(IsplabError, match="bad search archs"):
        SearchSpace(archs=("chroma", "resnet"))
    # The hybrid is an arch but not searched (measured and dropped); the blend (the default) is.
    assert SearchSpace().archs == ("reference", "chroma", "histogram", "small", "blend")
    with pytest.raises(IsplabError, match="bad search archs hybrid: expected some of reference, chroma, histogram, small, blend"):
        SearchSpace(archs=("hybrid",))
    with pytest.raises(IsplabError, match="bad search epochs"):
        SearchSpace(epochs=(5, 2))


# --- the fold hook ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("awbsearch") / "data")


def test_cross_validate_reports_the_running_mean_after_each_fold(data):
    dataset = load_dataset(data, "vc4")
    seen = []
    config = TrainConfig(arch="small", ensemble=1, epochs=1, batch_size=8, arch_options={"width": 4, "hidden": 8})
    result = cross_validate(dataset, 3, config, on_fold=lambda fold, mean: seen.append((fold, mean)))
    assert [fold.index for fold, _ in seen] == [0, 1, 2]
    assert [fold for fold, _ in seen] == list(result.folds)
    counts = np.array([fold.test_count for fold, _ in seen])
    means = np.array([fold.model.mean for fold, _ in seen])
    for i, (_, running) in enumerate(seen):
        assert running == pytest.approx(np.sum(counts[: i + 1] * means[: i + 1]) / counts[: i + 1].sum())
    assert seen[-1][1] == pytest.approx(result.model.mean)


def test_a_trial_running_past_the_timeout_stops_after_its_current_fold(data):
    import time

    from isplab.workflows.awb.search import _Objective

    dataset = load_dataset(data, "vc4")
    objective = _Objective(dataset, 3, 0, SearchSpace(archs=("small",), epochs=(1, 1), max_ensemble=1),
                           TrainConfig(device="cpu"), deadline=time.time() - 1)
    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["error"] == "_OutOfTime: stopped by --timeout after fold 0"
    assert list(trial.intermediate_values) == [0]


# --- a whole search -----------------------------------------------------------------------------


def test_search_writes_resumes_refuses_and_feeds_train(data, tmp_path, monkeypatch, capsys, awb_cli):
    study = tmp_path / "study"
    space = SearchSpace(epochs=(1, 2), max_ensemble=2)
    kwargs = dict(target="vc4", folds=2, device="cpu", space=space)
    level = logging.getLogger("lightning.pytorch").level
    first = search(data, study, trials=3, **kwargs)
    assert logging.getLogger("lightning.pytorch").level == level  # quiet during the search only
    for name in ("study.db", "trials.csv", "pareto.json", "pareto.png", "best_config.json"):
        assert (study / name).is_file(), name
    assert {p.name for p in study.iterdir()} <= set(SEARCH_FILES)

    rows = list(csv.DictReader((study / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete"] * 3  # the pruner waits for 4 finished trials
    trials = read_trials(study)
    for trial in trials:
        # The last fold's running mean is the whole out-of-fold mean: the objective.
        assert trial["intermediate"][1] == pytest.approx(trial["cv_mean"])
        assert trial["size_bytes"] == 4 * trial["parameters"] == 4 * parameter_count("vc4", TrainConfig(**trial["config"]))
        assert trial["cv_worst"] >= trial["cv_p95"] >= trial["cv_median"] > 0
    pareto = json.loads((study / "pareto.json").read_text())
    for trial in trials:
        config = trial["config"]
        assert trial["tflite_estimate"] == tflite_size_estimate(trial["parameters"], config["ensemble"], config["arch"])
    expected = pareto_front([(t["cv_mean"], t["tflite_estimate"]) for t in trials])
    assert [p["number"] for p in pareto["pareto"]] == [trials[i]["number"] for i in expected]
    best = min(trials, key=lambda t: t["cv_mean"])
    assert pareto["best"]["number"] == best["number"] == first.best["number"]
    assert load_train_config(study / "best_config.json") == TrainConfig(**best["config"]) == first.best_config

    # Without --resume an existing study is refused, and nothing in it changes.
    before = {name: (study / name).read_bytes() for name in ("trials.csv", "pareto.json", "best_config.json")}
    with pytest.raises(IsplabError, match="--resume to continue"):
        search(data, study, trials=5, **kwargs)
    with pytest.raises(IsplabError, match="other settings.*folds"):
        search(data, study, trials=5, resume=True, **{**kwargs, "folds": 3})
    assert before == {name: (study / name).read_bytes() for name in before}

    # --resume continues the same study up to 5 trials, keeping the first three.
    search(data, study, trials=5, resume=True, **kwargs)
    resumed = read_trials(study)
    assert len(resumed) == 5
    assert [t["cv_mean"] for t in resumed[:3]] == [t["cv_mean"] for t in trials]
    assert all(t["state"] in ("complete", "pruned") for t in resumed)
    for t in resumed[3:]:
        if t["state"] == "pruned":  # stopped at a fold before the last, with no final score
            assert t["cv_mean"] is None and t["last_fold"] == 0
    # A resume draws new configurations rather than replaying the first run's.
    assert len({json.dumps(t["params"], sort_keys=True) for t in resumed}) == 5

    # The CLI: same refusal in one line; a finished study needs no more trials.
    capsys.readouterr()
    code, out, err = awb_cli(None, "search", str(data), "--target", "vc4", "--trials", "5", "--folds", "2",
                          "-o", str(study), "--min-epochs", "1", "--max-epochs", "2", "--max-ensemble", "2", "--device", "cpu")
    assert code == 1 and "--resume to continue" in err and len(err.strip().splitlines()) == 1
    # The same images in another folder (another machine) resume the study.
    moved = shutil.copytree(data, tmp_path / "moved")
    code, out, err = awb_cli(None, "search", str(moved), "--target", "vc4", "--trials", "4", "--folds", "2",
                          "-o", str(study), "--min-epochs", "1", "--max-epochs", "2", "--max-ensemble", "2",
                          "--device", "cpu", "--resume")
    assert code == 0, err
    assert "already holds 5 finished or pruned trials" in err and "best_config.json" in out

    # awb train --config: the file's recipe, with options given on the command line on top.
    code, out, err = awb_cli(None, "train", str(data), str(tmp_path / "m.pt"), "--target", "vc4",
                          "--config", str(study / "best_config.json"), "--epochs", "1", "--seed", "3",
                          "--device", "cpu", "--no-progress")
    assert code == 0, err
    run_config = json.loads((tmp_path / "m-run" / "config.json").read_text())
    best_config = json.loads((study / "best_config.json").read_text())
    assert run_config["epochs"] == 1 and run_config["seed"] == 3
    for name in ("arch", "arch_options", "ensemble", "loss", "lr", "noise", "zoom", "batch_size", "patience"):
        assert run_config[name] == best_config[name], name


def test_a_new_study_runs_its_base_configuration_first(data, tmp_path):
    """Trial 0 trains the base recipe when the space holds it (recorded as the baseline in
    trials.csv and pareto.json); --no-baseline, or a base outside the space, leaves it out."""
    space = SearchSpace(archs=("small",), epochs=(1, 2), max_ensemble=1)
    base = TrainConfig(arch="small", arch_options={"width": 8, "hidden": 16}, ensemble=1, epochs=2, patience=1,
                       lr_patience=1)
    lines: list[str] = []
    result = search(data, tmp_path / "a", target="vc4", trials=2, folds=2, device="cpu", space=space, base=base,
                    seed=1, log=lines.append)
    first, second = result.trials
    assert (first["baseline"], second["baseline"]) == (True, False)
    assert TrainConfig(**first["config"]) == base  # recorded with device "auto"
    assert second["params"] != first["params"]
    assert json.loads((tmp_path / "a" / "pareto.json").read_text())["baseline"]["number"] == 0
    rows = list(csv.DictReader((tmp_path / "a" / "trials.csv").open()))
    assert [r["baseline"] for r in rows] == ["True", "False"]
    assert any("trial 0 is the base configuration" in line for line in lines)

    result = search(data, tmp_path / "b", target="vc4", trials=1, folds=2, device="cpu", space=space, base=base,
                    seed=1, baseline=False)
    assert not result.trials[0]["baseline"]
    lines.clear()
    result = search(data, tmp_path / "c", target="vc4", trials=1, folds=2, device="cpu", space=space,
                    base=replace(base, epochs=3), seed=1, log=lines.append)
    assert not result.trials[0]["baseline"]
    assert any("outside the search space (its 3 epochs against 1..2)" in line for line in lines)


def test_train_config_precedence_without_a_command_line(tmp_path):
    from isplab.workflows.awb.cli import _TRAINING_OPTIONS, train_config

    path = tmp_path / "best.json"
    path.write_text(json.dumps({"arch": "small", "epochs": 40, "lr": 0.004, "arch_options": {"width": 8}}))
    values = {name: default for name, (_, default) in _TRAINING_OPTIONS.items()}
    values.update(config_file=path, epochs=7)
    config = train_config(values, given={"epochs"})
    assert (config.arch, config.epochs, config.lr, config.arch_options) == ("small", 7, 0.004, {"width": 8})
    # Without a record of what was typed, values differing from the defaults count as given.
    config = train_config({**values, "lr": 0.01}, given=None)
    assert (config.arch, config.epochs, config.lr) == ("small", 7, 0.01)
    path.write_text(json.dumps({"arch": "small", "colour": 3}))
    with pytest.raises(IsplabError, match="unknown training options colour"):
        train_config(values, given=set())


@pytest.mark.slow
def test_workers_run_trials_in_parallel_processes_on_one_study(data, tmp_path):
    import os

    result = search(data, tmp_path / "study", target="vc4", trials=2, folds=2, workers=2, device="cpu",
                    space=SearchSpace(archs=("small",), epochs=(1, 1), max_ensemble=1))
    assert [t["state"] for t in result.trials] == ["complete", "complete"]
    db = optuna.load_study(study_name="awb", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    # Two spawned worker processes served the study; which of them ran which trial depends on the
    # machine's load (a worker that starts late may find every trial taken).
    workers = {value for key, value in db.user_attrs.items() if key.startswith("worker_")}
    assert len(workers) == 2 and os.getpid() not in workers
    assert {t.user_attrs["process"] for t in db.trials} <= workers


def test_holdout_scenes_stay_out_of_the_search_and_score_the_best(data, tmp_path):
    from isplab.workflows.awb.dataset import grouped_kfold

    study = tmp_path / "study"
    space = SearchSpace(archs=("small",), epochs=(1, 1), max_ensemble=1)
    result = search(data, study, target="vc4", trials=2, folds=2, device="cpu", space=space, holdout=0.25, seed=2)
    dataset = load_dataset(data, "vc4")
    _, held_out = grouped_kfold(dataset.samples, 4, seed=2 + 1_000_003)[0]
    pareto = json.loads((study / "pareto.json").read_text())
    # Every "small" config here is within the size budget: best and best small are the same trial.
    assert pareto["best"]["number"] == pareto["best_small"]["number"] == result.best["number"]
    summary = pareto["best"]["holdout"]
    assert summary["count"] == len(held_out) > 0
    assert summary["worst"] >= summary["p95"] >= summary["median"] > 0 and summary["worst"] >= summary["mean"]
    assert [t["holdout"] is not None for t in result.trials] == [t["number"] == result.best["number"] for t in result.trials]
    with pytest.raises(IsplabError, match="other settings.*holdout"):
        search(data, study, target="vc4", trials=3, folds=2, device="cpu", space=space, holdout=0.5, seed=2, resume=True)


# --- per-sensor fine-tuning ---------------------------------------------------------------------


def test_train_on_one_sensor_fine_tunes_a_shared_model(data, tmp_path, monkeypatch, capsys, awb_cli):
    from isplab.workflows.awb.model import build_awb_model, load_awb_model, save_awb_model

    shared = build_awb_model("vc4", "small", width=4, hidden=8)
    save_awb_model(shared, tmp_path / "shared.pt")
    code, out, err = awb_cli(None, "train", str(data), str(tmp_path / "imx708.pt"), "--target", "vc4",
                          "--model", str(tmp_path / "shared.pt"), "--sensor", "imx708", "--epochs", "1",
                          "--lr", "0.05", "--device", "cpu", "--no-progress")
    assert code == 0, err
    run = json.loads((tmp_path / "imx708-run" / "config.json").read_text())
    sensors = [p.name.split(",")[1] for p in data.iterdir()]
    assert run["images"] == sensors.count("imx708") == 6
    tuned = load_awb_model(tmp_path / "imx708.pt")
    assert tuned.awb_config["arch"] == "small" and tuned.awb_config["options"] == {"width": 4, "hidden": 8}
    before = dict(load_awb_model(tmp_path / "shared.pt").state_dict())
    assert any(not np.allclose(before[k].numpy(), v.numpy()) for k, v in tuned.state_dict().items())

    code, out, err = awb_cli(None, "train", str(data), str(tmp_path / "x.pt"), "--target", "vc4",
                          "--sensor", "imx999", "--epochs", "1", "--device", "cpu")
    assert code == 1 and "no images of sensor imx999: its sensors are imx219, imx708" in err
    assert not (tmp_path / "x.pt").exists()
