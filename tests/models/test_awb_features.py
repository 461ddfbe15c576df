"""Colour-constancy features of AWB statistics (:mod:`isplab.models.awb_features`), checked
against independent numpy code, and their TFLite export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.models.awb_features import (
    FEATURE_NAMES,
    QUANTILE_STEPS,
    colour_constancy_features,
    masked_quantiles,
)


def numpy_features(images: np.ndarray, lux: np.ndarray) -> np.ndarray:
    """The documented features written independently in numpy (exact quantiles by sorting)."""
    rows = []
    for image, light in zip(images.astype(np.float64), lux.astype(np.float64), strict=True):
        x = image.reshape(-1, 3)
        g = x[:, 1]
        saturated = x.max(axis=1) >= 0.98
        dark = g <= 0.002
        valid = ~saturated & ~dark
        xv = x[valid]

        def ratios(rgb):
            rgb = np.maximum(rgb, 1e-4)
            return [np.log(rgb[0] / rgb[1]), np.log(rgb[2] / rgb[1])]

        def lower_quantile(values, q):
            ordered = np.sort(values)
            return ordered[int(np.ceil(q * len(ordered))) - 1]

        row = ratios(xv.mean(axis=0))
        for p in (2, 4, 8):
            row += ratios((xv**p).mean(axis=0) ** (1 / p))
        dx = np.abs(np.diff(image, axis=1)).reshape(-1, 3)
        dy = np.abs(np.diff(image, axis=0)).reshape(-1, 3)
        for p in (1, 2):
            row += ratios(((dx**p).mean(axis=0) + (dy**p).mean(axis=0)) ** (1 / p))
        row += ratios(xv.max(axis=0))
        for percent in (1, 5, 10, 25):
            row += ratios(xv[xv[:, 1] >= lower_quantile(xv[:, 1], 1 - percent / 100)].mean(axis=0))
        chroma = np.log(np.maximum(xv[:, [0, 2]], 1e-4)) - np.log(np.maximum(xv[:, [1]], 1e-4))
        weight = np.minimum(xv[:, 1], 0.5)
        mean = (chroma * weight[:, None]).sum(axis=0) / weight.sum()
        row += list(mean)
        for c in range(2):
            row += [lower_quantile(chroma[:, c], q / 100) for q in (5, 25, 50, 75, 95)]
        row += list(np.sqrt((((chroma - mean) ** 2) * weight[:, None]).sum(axis=0) / weight.sum()))
        row += [saturated.mean(), dark.mean(), np.log(g.mean()), np.log(max(light, 1.0)) / 10]
        rows.append(row)
    return np.array(rows)


def _statistics(n: int, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.01, 0.9, (n, *size, 3)) * rng.uniform(0.3, 1.0, (n, 1, 1, 3))
    images[:, 0, :3] = 0.995  # saturated zones
    images[:, -1, :2, 1] = 0.001  # dark zones
    lux = np.array([0.5, 40.0, 400.0, 2500.0][:n] + [100.0] * max(0, n - 4))
    return images.astype(np.float32), lux.astype(np.float32)


@pytest.mark.parametrize("size", [(12, 16), (32, 32)])
def test_features_match_an_independent_numpy_reference(size):
    images, lux = _statistics(4, size)
    with torch.no_grad():
        got = colour_constancy_features(torch.from_numpy(images), torch.from_numpy(lux)).double().numpy()
    want = numpy_features(images, lux)
    assert got.shape == want.shape == (4, len(FEATURE_NAMES)) == (4, 40)
    quantile = np.array([name.startswith(("bright", "p")) for name in FEATURE_NAMES])
    # Exact features: float32 against float64.
    np.testing.assert_allclose(got[:, ~quantile], want[:, ~quantile], rtol=2e-4, atol=2e-5)
    # Quantile-based ones: the bisection's bound (log chroma spans < 10 here), bright means exactly.
    np.testing.assert_allclose(got[:, quantile], want[:, quantile], atol=10 / 2**QUANTILE_STEPS + 1e-4)
    saturated, dark = FEATURE_NAMES.index("saturated"), FEATURE_NAMES.index("dark")
    zones = size[0] * size[1]
    np.testing.assert_allclose(got[:, saturated], 3 / zones, rtol=1e-6)
    np.testing.assert_allclose(got[:, dark], 2 / zones, rtol=1e-6)


def test_a_channel_gain_shifts_the_chroma_estimates_by_its_log():
    images, lux = _statistics(3, (12, 16), seed=2)
    images = np.clip(images, 0.01, 0.8)  # no saturated or dark zones before or after the gain
    base = colour_constancy_features(torch.from_numpy(images), torch.from_numpy(lux))
    tinted = images.copy()
    tinted[..., 0] *= 1.2
    shifted = colour_constancy_features(torch.from_numpy(tinted), torch.from_numpy(lux))
    for name in ("grey_world_r", "sog4_r", "edge1_r", "max_rgb_r", "bright10_r", "log_mean_r"):
        i = FEATURE_NAMES.index(name)
        torch.testing.assert_close(shifted[:, i] - base[:, i], torch.full((3,), float(np.log(1.2))), atol=1e-5, rtol=0)
        j = FEATURE_NAMES.index(name[:-1] + "b")
        torch.testing.assert_close(shifted[:, j], base[:, j], atol=1e-5, rtol=0)


def test_masked_quantiles_are_the_lower_order_statistics_within_the_bisection_bound():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(6, 50))
    mask = (rng.uniform(size=(6, 50)) > 0.3).astype(np.float64)
    mask[:, 0] = 0.0
    quantiles = (0.05, 0.5, 0.9, 1.0)
    got = masked_quantiles(torch.from_numpy(values), torch.from_numpy(mask), quantiles).numpy()
    for row in range(6):
        kept = np.sort(values[row][mask[row] > 0])
        exact = np.array([kept[int(np.ceil(q * len(kept))) - 1] for q in quantiles])
        bound = (kept[-1] - kept[0]) / 2**QUANTILE_STEPS
        assert np.all(got[row] >= exact - 1e-12) and np.all(got[row] <= exact + bound + 1e-12)
    # Masked-out values never count, however extreme.
    values[:, 0] = 1e3
    again = masked_quantiles(torch.from_numpy(values), torch.from_numpy(mask), quantiles).numpy()
    np.testing.assert_allclose(again, got)


@pytest.mark.slow
def test_features_export_to_tflite_and_match_pytorch(tmp_path):
    """The features use only ops LiteRT runs (sort/topk would not load): a module returning them
    converts, loads and agrees with PyTorch."""
    litert_torch = pytest.importorskip("litert_torch")
    from isplab.export import TFLiteRunner

    class Features(torch.nn.Module):
        def forward(self, image, lux):
            return colour_constancy_features(image, lux)

    images, lux = _statistics(1, (12, 16), seed=3)
    path = tmp_path / "features.tflite"
    litert_torch.convert(Features().eval(), (torch.from_numpy(images), torch.from_numpy(lux))).export(str(path))
    got = np.asarray(TFLiteRunner(path)([images, lux])).reshape(1, -1)
    want = colour_constancy_features(torch.from_numpy(images), torch.from_numpy(lux)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
