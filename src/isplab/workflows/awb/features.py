"""Hand-crafted colour-constancy features of AWB statistics, fast models on them, and blends.

:func:`colour_constancy_features` turns each image's zone statistics and lux into a fixed vector
(grey world, shades of grey, grey edge, max-RGB, bright-zone means, log-chroma quantiles and
spread, saturated/dark fractions, lux). It lives in :mod:`isplab.models.awb_features` (with
:func:`masked_quantiles`, :data:`FEATURE_NAMES` and :data:`QUANTILE_STEPS`, re-exported here),
where the ``"hybrid"`` AWB network computes it inside the model and its exported TFLite file.

:func:`fit_mlp` and :func:`fit_ridge` are models that train in seconds on those vectors (in
mireds); :func:`grouped_cv_predictions` scores them with the folds of
:func:`isplab.workflows.awb.evaluate.cross_validate`; :func:`nested_blend` mixes two sets of
out-of-fold predictions with a weight chosen without the test fold. ``benchmarks/awb_rpi.py
--features`` measures all of them against the default CNN (its docstring has the numbers: none
reached the issue's goals).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from isplab.models.awb_features import (
    FEATURE_NAMES,
    QUANTILE_STEPS,
    colour_constancy_features,
    masked_quantiles,
)
from isplab.workflows.awb.dataset import AWBDataset, grouped_kfold

__all__ = [
    "FEATURE_NAMES", "QUANTILE_STEPS", "colour_constancy_features", "dataset_features", "fit_mlp", "fit_ridge",
    "grouped_cv_predictions", "masked_quantiles", "nested_blend",
]


def dataset_features(dataset: AWBDataset) -> np.ndarray:
    """``(N, len(FEATURE_NAMES))`` float64 features of every image of ``dataset``."""
    with torch.no_grad():
        features = colour_constancy_features(torch.as_tensor(dataset.images), torch.as_tensor(dataset.lux))
    return features.double().numpy()


Predictor = Callable[[np.ndarray], np.ndarray]


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), x.std(axis=0) + 1e-9


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> Predictor:
    """Ridge regression of ``y`` ``(N,)`` on standardised ``x`` ``(N, F)`` (intercept not penalised)."""
    mu, sd = _standardise(x)
    z = (x - mu) / sd
    coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    offset = float(y.mean())
    return lambda xt: ((xt - mu) / sd) @ coef + offset


def fit_mlp(
    x: np.ndarray, y: np.ndarray, *, members: int = 3, epochs: int = 300, hidden: int = 64,
    lr: float = 3e-3, weight_decay: float = 1e-3, batch_size: int = 64, seed: int = 0,
) -> Predictor:
    """An ensemble of ``members`` MLPs (two hidden ReLU layers) fitted to ``y`` (mireds) on
    standardised ``x`` with an L1 loss and AdamW; the prediction is their mean."""
    mu, sd = _standardise(x)
    z = torch.tensor((x - mu) / sd, dtype=torch.float32)
    y_mean, y_sd = float(y.mean()), float(y.std() + 1e-9)
    target = torch.tensor((y - y_mean) / y_sd, dtype=torch.float32)
    nets = []
    for member in range(members):
        generator = torch.Generator().manual_seed(seed * 1000 + member)
        torch.manual_seed(seed * 1000 + member)
        net = torch.nn.Sequential(
            torch.nn.Linear(z.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )
        optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            order = torch.randperm(len(z), generator=generator)
            for start in range(0, len(z), batch_size):
                batch = order[start : start + batch_size]
                loss = (net(z[batch])[:, 0] - target[batch]).abs().mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        nets.append(net.eval())

    def predict(xt: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            zt = torch.tensor((xt - mu) / sd, dtype=torch.float32)
            return np.mean([net(zt)[:, 0].numpy() for net in nets], axis=0).astype(np.float64) * y_sd + y_mean

    return predict


def grouped_cv_predictions(
    dataset: AWBDataset, x: np.ndarray, fit: Callable[[np.ndarray, np.ndarray], Predictor], k: int = 5, seed: int = 0,
) -> np.ndarray:
    """``(N,)`` out-of-fold predicted mireds of ``fit(x_train, mireds_train)`` over the folds of
    :func:`~isplab.workflows.awb.dataset.grouped_kfold` (those of ``cross_validate``), clipped to
    the label range 2800..7600 K."""
    y = 1e6 / np.clip(dataset.true_temp.astype(np.float64), 2800.0, 7600.0)
    predicted = np.full(len(dataset), np.nan)
    for train, test in grouped_kfold(dataset.samples, k, seed=seed):
        predicted[test] = fit(x[train], y[train])(x[test])
    return np.clip(predicted, 1e6 / 7600.0, 1e6 / 2800.0)


def nested_blend(
    a: np.ndarray, b: np.ndarray, y: np.ndarray, folds: np.ndarray, weights: Sequence[float] = tuple(np.linspace(0, 1, 21)),
) -> tuple[np.ndarray, list[float]]:
    """Blend out-of-fold mireds ``(1 - w) a + w b`` with, for each fold, the ``w`` of ``weights``
    of lowest mean absolute error on the *other* folds' images (never on the fold it is applied to).

    Args:
        a, b: ``(N,)`` out-of-fold predictions (mireds); y: ``(N,)`` true mireds.
        folds: ``(N,)`` each image's test fold.

    Returns:
        The ``(N,)`` blended predictions and the weight used for each fold (in fold order).
    """
    blended = np.full(len(y), np.nan)
    chosen = []
    for fold in np.unique(folds):
        other = folds != fold
        errors = [np.abs((1 - w) * a[other] + w * b[other] - y[other]).mean() for w in weights]
        w = float(weights[int(np.argmin(errors))])
        chosen.append(w)
        mine = folds == fold
        blended[mine] = (1 - w) * a[mine] + w * b[mine]
    return blended, chosen
