"""Tests for isplab.workflows.awb.evaluate: summaries, per-image rows, grouped CV, reports, TFLite."""

from __future__ import annotations

import csv
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.io import read_image, write_image
from isplab.workflows.awb import evaluate as evaluate_module
from isplab.workflows.awb.dataset import load_dataset
from isplab.workflows.awb.evaluate import (
    CVResult,
    cross_validate,
    evaluate_model,
    evaluate_predictions,
    evaluate_tflite,
    summarise,
    write_report,
)
from isplab.workflows.awb.train import TrainConfig

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "awb-rpi"


def numpy_mired_error(pred, true):
    return np.abs(1e6 / np.asarray(pred, float) - 1e6 / np.clip(np.asarray(true, float), 2800, 7600))


def write_stats_images(folder: Path, entries, size=(32, 32), seed=0) -> list[Path]:
    """16-bit PNGs of grey-world scenes lit so that R/B = (5000 / T)^2; ``entries`` are
    ``(user, sensor, id, true_temp, lux, camera_temp)``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for user, sensor, scene_id, true_temp, lux, camera_temp in entries:
        illuminant = np.array([0.4 * 5000 / true_temp, 0.4, 0.4 * true_temp / 5000])
        reflectance = rng.uniform(0.3, 1.0, size=(*size, 1))
        image = np.round(np.clip(reflectance * illuminant, 0, 1) * 65535).astype(np.uint16)
        path = folder / f"{user},{sensor},{scene_id},{true_temp},{lux},{camera_temp}.png"
        write_image(path, image)
        paths.append(path)
    return paths


class RatioModel(nn.Module):
    """Stand-in AWB model: inverts R/B = (5000 / T)^2 from the image's channel means."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        means = image.mean(dim=(1, 2))
        return self.scale * 5000.0 / torch.sqrt(means[:, 0] / means[:, 2])


# 8 scenes (user, id), some shot by two sensors; temperatures 3000..7000 K, one outside the clamp range.
ENTRIES = [
    (user, sensor, scene_id, temp, lux, camera)
    for user, scene_id, temp, lux, camera in [
        ("anna", "1", 3000, 120, 3200),
        ("anna", "2", 4000, 800, 3900),
        ("anna", "3", 5000, 40, 5400),
        ("ben", "1", 6000, 2000, 5600),
        ("ben", "2", 7000, 300, 7300),
        ("ben", "3", 2500, 15, 2900),
        ("cara", "7", 4500, 600, 4700),
        ("cara", "8", 5500, 900, 5000),
    ]
    for sensor in (["imx219", "imx708"] if scene_id in ("1", "3") else ["imx477"])
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awb_stats")
    write_stats_images(folder, ENTRIES)
    return load_dataset(folder, "pisp")


@pytest.fixture(scope="module")
def shared_pisp():
    if not SHARED.is_dir():
        pytest.skip(f"shared AWB data not found at {SHARED}")
    return load_dataset(SHARED / "pisp" / "train", "pisp")


def test_summarise_matches_hand_values_and_numpy():
    summary = summarise(np.arange(1, 101))
    assert (summary.worst, summary.mean, summary.median, summary.count) == (100, 50.5, 50.5, 100)
    assert summary.p95 == pytest.approx(95.05)  # linear interpolation between the 95th and 96th value

    errors = np.random.default_rng(1).gamma(2.0, 5.0, size=37)
    summary = summarise(errors)
    assert summary.worst == pytest.approx(errors.max())
    assert summary.mean == pytest.approx(errors.mean())
    assert summary.median == pytest.approx(np.median(errors))
    assert summary.p95 == pytest.approx(np.percentile(errors, 95))
    assert summary.count == 37


def test_summarise_rejects_empty_and_nan():
    with pytest.raises(IsplabError, match="empty"):
        summarise([])
    with pytest.raises(IsplabError, match="NaN or infinite values \\(1 of 3\\)"):
        summarise([1.0, np.nan, 2.0])


def test_evaluate_predictions_rows_sorted_worst_first_with_numpy_errors(dataset):
    rng = np.random.default_rng(2)
    predicted = dataset.true_temp * rng.uniform(0.8, 1.2, size=len(dataset))
    result = evaluate_predictions(dataset, predicted)

    errors = [row.error_mired for row in result.rows]
    assert errors == sorted(errors, reverse=True)
    assert len(result.rows) == len(dataset)
    by_file = {row.file: row for row in result.rows}
    expected = numpy_mired_error(predicted, dataset.true_temp)
    expected_camera = numpy_mired_error(dataset.camera_temp, dataset.true_temp)
    for i, sample in enumerate(dataset.samples):
        row = by_file[sample.path.name]
        clamped = min(max(sample.true_temp, 2800), 7600)
        assert row.predicted_temp == pytest.approx(predicted[i])
        assert (row.true_temp, row.camera_temp) == (sample.true_temp, sample.camera_temp)
        assert row.error_mired == pytest.approx(expected[i])
        assert row.error_kelvin == pytest.approx(abs(predicted[i] - clamped), rel=1e-6)
        assert row.error_percent == pytest.approx(100 * abs(predicted[i] - clamped) / clamped, rel=1e-6)
        assert row.camera_error_mired == pytest.approx(expected_camera[i])
    assert result.model.mean == pytest.approx(expected.mean())
    assert result.model.p95 == pytest.approx(np.percentile(expected, 95))
    assert result.camera.worst == pytest.approx(expected_camera.max())


def test_evaluate_predictions_rejects_wrong_length_and_nonpositive(dataset):
    with pytest.raises(IsplabError, match=f"got 3 predictions for a dataset of {len(dataset)} images"):
        evaluate_predictions(dataset, np.ones(3) * 5000)
    with pytest.raises(IsplabError, match="positive and finite"):
        evaluate_predictions(dataset, np.zeros(len(dataset)))


def test_evaluate_model_with_standin(dataset):
    result = evaluate_model(RatioModel(), dataset)
    # The stand-in inverts the synthetic lighting exactly up to 16-bit rounding, so only the
    # 2500 K scene's two images (clamped to 2800 K by the error measure) have a sizeable error.
    for row in result.rows[:2]:
        assert row.file.split(",")[3] == "2500"
        assert row.error_mired == pytest.approx(1e6 / 2500 - 1e6 / 2800, abs=0.5)
    assert result.rows[2].error_mired < 0.5
    assert result.target == "pisp"


def test_cross_validate_predictions_come_from_other_folds(dataset, monkeypatch):
    """A stand-in trainer whose model predicts its training set's mean temperature shows which
    images each fold's model was trained on."""
    trained_on = []

    class MeanModel(nn.Module):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def forward(self, image, lux):
            return torch.full((image.shape[0],), self.value)

    def fake_train(subset, config, *, weights=None, progress=True, **_):
        trained_on.append(({s.path.name for s in subset.samples}, None if weights is None else weights.tolist()))
        return MeanModel(float(np.mean(subset.true_temp)))

    monkeypatch.setattr(evaluate_module, "train_model", fake_train)
    weights = np.arange(len(dataset)) + 1
    result = cross_validate(dataset, 3, TrainConfig(), weights=weights)

    names = [s.path.name for s in dataset.samples]
    assert sorted(row.file for row in result.rows) == sorted(names)  # every image exactly once
    assert len(result.folds) == 3 and sum(f.test_count for f in result.folds) == len(dataset)
    for fold, (train_names, train_weights) in zip(result.folds, trained_on):
        test_rows = [row for row in result.rows if row.fold == fold.index]
        assert len(test_rows) == fold.test_count and fold.train_count == len(train_names)
        assert not train_names & {row.file for row in test_rows}
        assert train_weights == [weights[names.index(n)] for n in sorted(train_names)]
        train_mean = np.mean([float(n.split(",")[3]) for n in train_names])
        for row in test_rows:
            assert row.predicted_temp == pytest.approx(train_mean, rel=1e-6)
        assert fold.model.mean == pytest.approx(np.mean([row.error_mired for row in test_rows]))
        assert fold.camera.mean == pytest.approx(np.mean([row.camera_error_mired for row in test_rows]))
    scene_folds = {}
    for row in result.rows:
        user, _, scene_id = row.file.split(",")[:3]
        scene_folds.setdefault((user, scene_id), set()).add(row.fold)
    assert all(len(folds) == 1 for folds in scene_folds.values())
    assert result.model.count == len(dataset)


def test_cross_validate_trains_real_models(dataset):
    config = TrainConfig(epochs=2, batch_size=8)
    result = cross_validate(dataset, 2, config)
    assert isinstance(result, CVResult)
    assert sorted(row.file for row in result.rows) == sorted(s.path.name for s in dataset.samples)
    assert {row.fold for row in result.rows} == {0, 1}
    assert np.isfinite(result.predicted).all()
    assert all(fold.train_seconds > 0 for fold in result.folds)


def test_cross_validate_rejects_bad_weights(dataset):
    with pytest.raises(IsplabError, match=f"got 2 weights for a dataset of {len(dataset)} images"):
        cross_validate(dataset, 2, TrainConfig(), weights=np.ones(2))


def _cv_like(dataset) -> CVResult:
    predicted = dataset.true_temp * np.linspace(0.9, 1.1, len(dataset))
    folds = np.arange(len(dataset)) % 2
    base = evaluate_predictions(dataset, predicted, folds)
    fold = evaluate_module.FoldResult(0, 5, 5, base.model, base.camera, 1.5)
    return CVResult(base.rows, base.model, base.camera, base.predicted, base.target, folds=(fold, fold))


def test_write_report_files(dataset, tmp_path):
    result = _cv_like(dataset)
    html = write_report(result, tmp_path / "report")
    assert html == tmp_path / "report" / "report.html"
    text = html.read_text()
    assert "2-fold grouped cross-validation (pisp)" in text and "Per fold" in text
    assert result.rows[0].file in text  # worst image listed
    for name in ("error_histogram.png", "predicted_vs_true.png"):
        image = read_image(tmp_path / "report" / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0
    with open(tmp_path / "report" / "errors.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(dataset)
    assert rows[0]["file"] == result.rows[0].file
    assert float(rows[0]["error_mired"]) == pytest.approx(result.rows[0].error_mired)
    assert [float(r["error_mired"]) for r in rows] == sorted((float(r["error_mired"]) for r in rows), reverse=True)


def test_write_report_plain_evaluation(dataset, tmp_path):
    result = evaluate_predictions(dataset, dataset.true_temp * 1.05)
    text = write_report(result, tmp_path, title="My model").read_text()
    assert "<title>My model</title>" in text and "Per fold" not in text


@pytest.mark.shared_data
def test_evaluate_tflite_reference_model_in_sample(shared_pisp):
    subset = shared_pisp.subset(np.arange(0, len(shared_pisp), 19))  # 31 images across users
    result = evaluate_tflite(SHARED / "reference-models" / "model_pisp.tflite", subset)
    assert result.model.count == len(subset)
    # Trained on these images: a few mireds, far below the camera's own estimate.
    assert result.model.mean < 8
    assert result.model.mean < result.camera.mean


@pytest.mark.shared_data
def test_evaluate_tflite_wrong_target(shared_pisp):
    with pytest.raises(IsplabError, match=r"model_vc4.tflite' is for vc4 \(16 wide x 12 high zones\), got images of shape \(32, 32, 3\)"):
        evaluate_tflite(SHARED / "reference-models" / "model_vc4.tflite", shared_pisp.subset([0]))


class _Tables(HTMLParser):
    """Every <table> of a page as (caption, rows of cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(("", []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th", "caption"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][1][-1].append("".join(self._text).strip())
            self._text = None
        elif tag == "caption":
            self.tables[-1] = ("".join(self._text).strip(), self.tables[-1][1])
            self._text = None


def test_write_report_numbers_of_a_hand_made_result(tmp_path):
    """Model errors 1, 2, 3, 4, 10 and camera errors 0, 0, 0, 0, 5 mireds: mean 4 / 1, median 3 / 0,
    p95 (linear) 8.8 / 4, worst 10 / 5, in the HTML table and errors.csv."""
    from isplab.workflows.awb.dataset import AWBDataset, AWBSample

    true = np.array([3000.0, 4000.0, 5000.0, 6000.0, 7000.0])
    model_error, camera_error = np.array([1, 2, 3, 4, 10.0]), np.array([0, 0, 0, 0, 5.0])
    predicted = 1e6 / (1e6 / true + model_error * np.array([1, -1, 1, -1, 1]))
    camera = 1e6 / (1e6 / true - camera_error)
    samples = [AWBSample(Path(f"u,imx708,{i},{t:.0f},100,{c:.3f}.png"), "u", "imx708", str(i), t, 100.0, c)
               for i, (t, c) in enumerate(zip(true, camera))]
    data = AWBDataset(samples, np.zeros((5, 32, 32, 3), np.float32), np.full(5, 100, np.float32),
                      true.astype(np.float32), camera.astype(np.float32), "pisp")
    html = write_report(evaluate_predictions(data, predicted), tmp_path / "rep", title="hand-made")

    parser = _Tables()
    parser.feed(html.read_text())
    summary = dict(parser.tables)["Error (mireds)"]
    assert summary[0] == ["estimate", "mean", "median", "p95", "worst", "images"]
    assert summary[1] == ["model", "4.00", "3.00", "8.80", "10.00", "5"]
    assert summary[2] == ["camera", "1.00", "0.00", "4.00", "5.00", "5"]
    worst = parser.tables[-1][1]
    assert [row[0] for row in worst[1:]] == [samples[i].path.name for i in (4, 3, 2, 1, 0)]
    assert [row[4] for row in worst[1:]] == ["10.0", "4.0", "3.0", "2.0", "1.0"]
    with open(tmp_path / "rep" / "errors.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [float(r["error_mired"]) for r in rows] == pytest.approx([10, 4, 3, 2, 1], abs=2e-3)
    assert [float(r["camera_error_mired"]) for r in rows] == pytest.approx([5, 0, 0, 0, 0], abs=2e-3)
    assert float(rows[0]["predicted_temp"]) == pytest.approx(predicted[4])
