"""The Lightning-free CV trainer (isplab.workflows.awb.fast) trains exactly what train_model trains."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.io import write_image
from isplab.workflows.awb import evaluate as evaluate_module
from isplab.workflows.awb.config import TrainConfig
from isplab.workflows.awb.dataset import grouped_kfold, load_dataset
from isplab.workflows.awb.evaluate import cross_validate, single_device
from isplab.workflows.awb.fast import fast_train
from isplab.workflows.awb.predict import predict
from isplab.workflows.awb.train import train_model

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "awb-rpi"


def write_scenes(folder: Path, scenes: int = 10, size=(12, 16), seed: int = 0) -> Path:
    """VC4-sized grey-world statistics lit so that R/B = (5000 / T)^2; odd scenes shot by two sensors."""
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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return load_dataset(write_scenes(tmp_path_factory.mktemp("fastcv") / "data"), "vc4")


def _mireds_apart(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(1e6 / a - 1e6 / b).max())


# Random everything: dropout, noise, flips, shuffled batches smaller than the set, an ensemble,
# rotation and zoom, repeat counts, early stopping and LR reduction that trigger.
CONFIGS = {
    "small-ensemble": TrainConfig(arch="small", ensemble=2, epochs=4, batch_size=5, device="cpu",
                                  arch_options={"width": 4, "hidden": 8}),
    "chroma-early-stop": TrainConfig(arch="chroma", epochs=40, batch_size=6, device="cpu", patience=1, lr_patience=0,
                                     lr=0.05, zoom=0.1, rotation=0.05, loss="l1", seed=3,
                                     arch_options={"width": 4, "hidden": 8}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_train_gives_train_models_model(dataset, tmp_path, name):
    config = CONFIGS[name]
    weights = np.arange(len(dataset)) % 3 + 1
    lightning = train_model(dataset, config, weights=weights, run_dir=tmp_path / "run", progress=False)
    fast = fast_train(dataset, config, weights=weights)
    a, b = (predict(m, dataset.images, dataset.lux) for m in (lightning, fast))
    assert _mireds_apart(a, b) < 1e-3
    for (key, p), (_, q) in zip(lightning.state_dict().items(), fast.state_dict().items()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), atol=1e-6, err_msg=key)
    epochs = len(re.findall(r"^epoch \d+:", (tmp_path / "run" / "log.txt").read_text(), re.M))
    if name == "chroma-early-stop":
        assert 2 <= epochs < config.epochs  # early stopping ended both at the same epoch
    # A change of seed changes the model: the comparison above is not of two untrained nets.
    other = predict(fast_train(dataset, replace(config, seed=config.seed + 1), weights=weights), dataset.images, dataset.lux)
    assert _mireds_apart(b, other) > 0.5


def test_fast_cv_is_lightnings_cv_and_folds_never_see_their_test_images(dataset, monkeypatch):
    config = TrainConfig(arch="small", ensemble=1, epochs=3, batch_size=4, device="cpu",
                         arch_options={"width": 4, "hidden": 8})
    seen = []

    def recording(subset, *args, **kwargs):
        seen.append({s.path.name for s in subset.samples})
        return fast_train(subset, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "fast_train", recording)
    fast = cross_validate(dataset, 3, config, seed=1)
    lightning = cross_validate(dataset, 3, config, seed=1, fast=False)
    assert len(seen) == 3  # the default took the fast path; fast=False did not
    names = [s.path.name for s in dataset.samples]
    for (train_idx, test_idx), trained in zip(grouped_kfold(dataset.samples, 3, seed=1), seen):
        assert trained == {names[i] for i in train_idx}
        assert not trained & {names[i] for i in test_idx}
    assert _mireds_apart(fast.predicted, lightning.predicted) < 1e-3
    assert fast.model.mean == pytest.approx(lightning.model.mean, abs=1e-3)
    assert [f.model.mean for f in fast.folds] == pytest.approx([f.model.mean for f in lightning.folds], abs=1e-3)


def test_single_device_decides_the_default_path():
    assert single_device(TrainConfig())
    assert single_device(TrainConfig(devices=[1]))
    assert not single_device(TrainConfig(devices=2, strategy="ddp"))
    assert not single_device(TrainConfig(num_nodes=2))


def test_fast_train_refuses_what_train_model_refuses(dataset):
    with pytest.raises(IsplabError, match="unknown AWB loss 'huber'"):
        fast_train(dataset, TrainConfig(loss="huber"))
    with pytest.raises(IsplabError, match="epochs and batch_size must be at least 1"):
        fast_train(dataset, TrainConfig(epochs=0))
    with pytest.raises(IsplabError, match="positive integer repeat counts"):
        fast_train(dataset, TrainConfig(), weights=np.zeros(len(dataset), dtype=np.int64))
    with pytest.raises(IsplabError, match="empty dataset"):
        fast_train(dataset.subset([]), TrainConfig())


def test_flip_average_and_calibration_are_fitted_on_the_training_images(dataset, tmp_path):
    from isplab.models.awb import CalibratedAWB, fit_calibration

    config = replace(CONFIGS["small-ensemble"], epochs=3, flip_average=True, calibrate=True)
    model = fast_train(dataset, config)
    assert isinstance(model, CalibratedAWB) and model.flip
    raw = 1e6 / predict(model.net, dataset.images, dataset.lux)
    mirrored = 1e6 / predict(model.net, dataset.images[:, :, ::-1].copy(), dataset.lux)
    truth = 1e6 / np.clip(dataset.true_temp.astype(float), 2800, 7600)
    scale, offset = fit_calibration((raw + mirrored) / 2, truth)
    assert (float(model.scale), float(model.offset)) == (pytest.approx(scale, rel=1e-5), pytest.approx(offset, rel=1e-4))
    calibrated_error = np.mean((1e6 / predict(model, dataset.images, dataset.lux) - truth) ** 2)
    assert calibrated_error < np.mean(((raw + mirrored) / 2 - truth) ** 2)  # least squares beats the identity
    # train_model wraps its model the same way.
    lightning = train_model(dataset, config, run_dir=tmp_path / "run", progress=False)
    assert isinstance(lightning, CalibratedAWB)
    assert _mireds_apart(predict(lightning, dataset.images, dataset.lux), predict(model, dataset.images, dataset.lux)) < 1e-3
    # Without either option the network is returned bare.
    assert not isinstance(fast_train(dataset, replace(config, flip_average=False, calibrate=False)), CalibratedAWB)
