"""The fast models on colour-constancy features and the nested blend
(:mod:`isplab.workflows.awb.features`); the features themselves are tested in
``tests/models/test_awb_features.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import isplab.models.awb_features as shared
from isplab.workflows.awb import features
from isplab.workflows.awb.dataset import AWBDataset, AWBSample, grouped_kfold
from isplab.workflows.awb.features import (
    fit_ridge,
    grouped_cv_predictions,
    nested_blend,
)


def test_the_features_are_re_exported_from_the_models_layer():
    for name in ("FEATURE_NAMES", "QUANTILE_STEPS", "colour_constancy_features", "masked_quantiles"):
        assert getattr(features, name) is getattr(shared, name) and name in features.__all__


def test_ridge_recovers_a_linear_function():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 3.0
    predict = fit_ridge(x, y, alpha=1e-8)
    np.testing.assert_allclose(predict(x[:5]), y[:5], atol=1e-6)


def _dataset(n_scenes: int = 10) -> AWBDataset:
    samples, temps = [], []
    for scene in range(n_scenes):
        for sensor in ("imx219", "imx477"):
            t = 3000.0 + 400 * scene
            samples.append(AWBSample(Path(f"u,{sensor},{scene:05d},{t},100,{t}.png"), "u", sensor, f"{scene:05d}", t, 100.0, t))
            temps.append(t)
    n = len(samples)
    t = np.array(temps, dtype=np.float32)
    return AWBDataset(samples, np.zeros((n, 12, 16, 3), np.float32), np.full(n, 100.0, np.float32), t, t, "vc4")


def test_grouped_cv_predictions_use_the_cross_validation_folds():
    dataset = _dataset()
    y = 1e6 / dataset.true_temp.astype(np.float64)
    # A "model" that predicts its training mean: each image gets the mean of the other folds' labels.
    predicted = grouped_cv_predictions(dataset, np.zeros((len(dataset), 1)), lambda x, t: (lambda xt: np.full(len(xt), t.mean())), k=5)
    for train, test in grouped_kfold(dataset.samples, 5, seed=0):
        np.testing.assert_allclose(predicted[test], y[train].mean())
        assert not {dataset.samples[i].scene for i in train} & {dataset.samples[i].scene for i in test}


def test_nested_blend_never_chooses_a_weight_on_the_fold_it_blends():
    rng = np.random.default_rng(1)
    y = rng.uniform(130, 350, 40)
    folds = np.repeat(np.arange(4), 10)
    a = y + rng.normal(0, 10, 40)
    b = y.copy()  # a perfect estimate: the weight goes to b
    blended, weights = nested_blend(a, b, y, folds)
    assert weights == [1.0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(blended, b)
    # Make fold 0's b terrible: fold 0 still blends with the weight the other folds chose.
    b2 = b.copy()
    b2[:10] += 500.0
    blended2, weights2 = nested_blend(a, b2, y, folds)
    assert weights2[0] == 1.0 and weights2[1:] != [1.0] * 3
    np.testing.assert_allclose(blended2[:10], b2[:10])


def test_benchmark_features_mode_scores_the_saved_cnn_and_its_blends(tmp_path):
    """``benchmarks/awb_rpi.py --features`` reads the CNN's out-of-fold kelvin from
    ``cv_<target>.npy`` and scores it, the fast models and the blends on the same labels."""
    import importlib.util

    from rich.console import Console

    from isplab.io import write_image
    from isplab.workflows.awb.config import TrainConfig

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "awb_rpi.py"
    spec = importlib.util.spec_from_file_location("awb_rpi_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    images = np.random.default_rng(7).uniform(0.01, 0.9, (20, 12, 16, 3))
    folder = tmp_path / "vc4" / "train"
    folder.mkdir(parents=True)
    temps = np.linspace(3000, 7000, 20)
    for i, (image, t) in enumerate(zip(images, temps, strict=True)):
        write_image(folder / f"u,imx219,{i // 2},{t:.0f},400,5000.png", np.round(image * 65535).astype(np.uint16))
    cnn = tmp_path / "cnn"
    cnn.mkdir()
    np.save(cnn / "cv_vc4.npy", temps + 100.0)  # a CNN 100 K too warm everywhere
    result = bench.features_results("vc4", tmp_path, TrainConfig(), 2, cnn, 2, Console(quiet=True))
    rows = result["rows"]
    true = 1e6 / np.round(temps)
    cnn_error = np.abs(1e6 / (temps + 100.0) - true)
    cnn_row = next(row for name, row in rows.items() if name.startswith("CNN ("))
    assert cnn_row["mean"] == pytest.approx(cnn_error.mean(), rel=1e-4)
    assert cnn_row["worst"] == pytest.approx(cnn_error.max(), rel=1e-4)
    assert rows["camera AWB"]["mean"] == pytest.approx(np.abs(200.0 - true).mean(), rel=1e-4)
    assert len(result["blend_weights"]) == 2 and all(0.0 <= w <= 1.0 for w in result["blend_weights"])
    assert {"ridge (alpha 10)", "CNN + MLP, 50/50", "CNN + MLP, weight from the other folds"} <= set(rows)
