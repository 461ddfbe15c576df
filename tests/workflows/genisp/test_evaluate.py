"""COCO AP values, one fresh metric per evaluation, the baseline inputs and the drawn boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.io.image import read_image
from isplab.io.raw import RawImage
from isplab.isp.gamma import linear_to_srgb
from isplab.isp.tone import smoothstep_tone
from isplab.workflows.genisp.evaluate import (
    auto_exposure_gain,
    classical_isp,
    compute_map,
    draw_detections,
    evaluate,
    format_table,
    packed_raw,
)


def _pred(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), "scores": torch.tensor(scores)}


def _gt(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_perfect_predictions_give_ap_one():
    targets = [_gt([[0, 0, 100, 100], [120, 10, 180, 90]], [1, 3]), _gt([[10, 20, 60, 120]], [2])]
    predictions = [_pred(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"])) for t in targets]
    result = compute_map(predictions, targets, {1: "person", 2: "bicycle", 3: "car"})
    assert result["AP"] == pytest.approx(1.0) and result["AP50"] == pytest.approx(1.0) and result["AP75"] == pytest.approx(1.0)
    assert result["per_class"] == pytest.approx({"person": 1.0, "bicycle": 1.0, "car": 1.0})


def test_shifted_box_gives_the_hand_computed_ap():
    # shifted by 20 px: IoU = 80*100 / (120*100) = 2/3, a match at IoU thresholds 0.50..0.65 (4 of 10)
    result = compute_map([_pred([[20, 0, 120, 100]], [1], [0.9])], [_gt([[0, 0, 100, 100]], [1])])
    assert result["AP"] == pytest.approx(0.4) and result["AP50"] == pytest.approx(1.0) and result["AP75"] == pytest.approx(0.0)
    # the wrong class is no match at all
    assert compute_map([_pred([[0, 0, 100, 100]], [2], [0.9])], [_gt([[0, 0, 100, 100]], [1])])["AP"] == pytest.approx(0.0)


class _TableDetector(nn.Module):
    """Returns a fixed prediction per image, chosen by the image's (constant) value."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, images):
        return [self.table[int(im[0, 0, 0])] for im in images]


def test_one_metric_over_all_batches_not_an_average_of_per_batch_results():
    # batch 1: a hit at score 0.9; batch 2: a miss at score 0.95. Pooled (COCO): FP then TP,
    # precision 0.5 up to recall 0.5 -> AP50 = 0.5 * 51/101; the seed's per-batch average gives 0.5.
    table = {0: _pred([[0, 0, 50, 50]], [1], [0.9]), 1: _pred([[60, 60, 90, 90]], [1], [0.95])}
    gt = _gt([[0, 0, 50, 50]], [1])
    loader = [([torch.zeros(3, 100, 100)], [gt]), ([torch.ones(3, 100, 100)], [gt])]
    detector = _TableDetector(table)
    first = evaluate(detector, None, loader, keep=1).metrics
    assert first["AP50"] == pytest.approx(0.5 * 51 / 101, abs=1e-4)
    again = evaluate(detector, None, loader).metrics  # a new metric: nothing left from the first call
    assert again == first
    # images_fn is what the detector sees: mapping every image to the first one makes both hits
    both_hits = evaluate(detector, lambda images: [im * 0 for im in images], loader).metrics
    assert both_hits["AP50"] == pytest.approx(1.0)


def test_table_lists_the_inputs_in_percent():
    text = format_table({"raw": {"AP": 0.012, "AP50": 0.05, "AP75": 0.0}, "genisp": {"AP": 0.231, "AP50": 0.526, "AP75": 0.154}})
    assert "(a) packed raw" in text and "(c) GenISP" in text and "23.1" in text and "52.6" in text


def _raw(pattern="GRBG", level=0.01, neutral=(0.5, 1.0, 0.7), size=(32, 48)):
    """A uniform grey scene: camera values proportional to the as-shot neutral, green = ``level``."""
    black, white = 64, 4095
    values = {"R": neutral[0] * level, "G": level, "B": neutral[2] * level}
    tile = np.array([[values[pattern[0]], values[pattern[1]]], [values[pattern[2]], values[pattern[3]]]])
    mosaic = np.round(black + np.tile(tile, (size[0] // 2, size[1] // 2)) * (white - black)).astype(np.uint16)
    matrix = [[0.9, 0.2, -0.1], [-0.3, 1.2, 0.1], [0.0, 0.1, 1.1]]
    return RawImage(mosaic=mosaic, cfa_pattern=pattern, black_level=[black] * 4, white_level=white,
                    as_shot_neutral=list(neutral), color_matrix=matrix)


def test_packed_raw_is_normalised_camera_rgb_by_the_files_pattern():
    for pattern in ("RGGB", "GRBG", "BGGR"):
        out = packed_raw(_raw(pattern, level=0.2))
        assert out.shape == (16, 24, 3)
        np.testing.assert_allclose(out[0, 0], [0.1, 0.2, 0.14], atol=2e-4)


def test_classical_isp_exposes_and_white_balances_a_grey_scene_to_grey():
    raw = _raw(level=0.01)
    gain = auto_exposure_gain(raw)
    assert gain == pytest.approx(18.0, rel=0.01)  # mean green 0.01 -> 0.18
    out = classical_isp(raw)
    assert out.shape == (16, 24, 3)
    expected = float(smoothstep_tone(linear_to_srgb(torch.tensor(0.18))))
    # neutral grey at mid-grey exposure: R = G = B = tone(srgb(0.18))
    np.testing.assert_allclose(out[4:-4, 4:-4], expected, atol=4e-3)
    bright = _raw(level=0.5)
    assert auto_exposure_gain(bright) == 1.0  # a bright frame is not darkened


def test_classical_isp_needs_a_colour_matrix():
    raw = _raw()
    from dataclasses import replace

    with pytest.raises(IsplabError, match="no colour matrix"):
        classical_isp(replace(raw, color_matrix=None))


def test_draw_detections_marks_truth_green_and_predictions_red(tmp_path):
    image = torch.full((3, 64, 80), 0.5)
    path = draw_detections(tmp_path / "x.png", image, _pred([[40, 10, 70, 50], [0, 0, 5, 5]], [3, 1], [0.8, 0.1]),
                           _gt([[5, 5, 30, 40]], [1]), class_names={1: "person", 3: "car"})
    pixels = read_image(path)
    assert tuple(pixels[20, 5]) == (0, 255, 0)  # ground-truth left edge
    assert tuple(pixels[30, 70]) == (255, 0, 0)  # predicted right edge
    assert tuple(pixels[2, 2]) != (255, 0, 0)  # a prediction below the score threshold is not drawn
