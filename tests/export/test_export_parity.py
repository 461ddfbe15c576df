from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from isplab.errors import IsplabError, ParityError
from isplab.export import compare_outputs, default_tolerance, eval_mode, torch_outputs


def _outputs(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((2, 3, 4, 5)).astype(np.float32), rng.random((2, 3)).astype(np.float32)]


def test_report_of_passing_comparison_matches_numpy():
    reference = _outputs()
    candidate = [r + np.float32(3e-5) * np.sign(r - 0.5) for r in reference]
    report = compare_outputs(reference, candidate, atol=1e-4, rtol=0.0, what="test")
    abs_diff = [np.abs(c.astype(np.float64) - r) for c, r in zip(candidate, reference)]
    assert report.passed
    assert report.n_outputs == 2
    assert report.max_abs_diff == pytest.approx(max(d.max() for d in abs_diff))
    assert report.max_rel_diff == pytest.approx(
        max((d / np.abs(r)).max() for d, r in zip(abs_diff, reference))
    )
    assert (report.atol, report.rtol, report.what) == (1e-4, 0.0, "test")


def test_tampered_output_raises_with_output_diff_tolerance_and_file():
    reference = _outputs()
    candidate = [r.copy() for r in reference]
    candidate[1][1, 2] += 0.5
    with pytest.raises(ParityError) as info:
        compare_outputs(reference, candidate, atol=1e-4, rtol=1e-3, what="ONNX model 'm.onnx'")
    message = str(info.value)
    assert message.startswith("ONNX model 'm.onnx': output 1 ")
    assert "max abs diff 0.5" in message
    assert "atol=0.0001 + rtol=0.001*|reference|" in message
    assert "1 of 6 elements" in message
    assert "index (1, 2)" in message


def test_relative_tolerance_scales_with_reference():
    reference = [np.array([1000.0, 1.0])]
    candidate = [np.array([1000.5, 1.0])]
    assert compare_outputs(reference, candidate, atol=0.0, rtol=1e-3, what="x").passed
    with pytest.raises(ParityError, match="max abs diff 0.5"):
        compare_outputs(reference, candidate, atol=0.0, rtol=1e-4, what="x")


def test_nan_matches_only_nan():
    reference = [np.array([np.nan, 1.0])]
    assert compare_outputs(reference, [np.array([np.nan, 1.0])], 1e-4, 0, "x").max_abs_diff == 0
    with pytest.raises(ParityError, match="max abs diff inf"):
        compare_outputs(reference, [np.array([np.nan, np.nan])], 1e-4, 0, "x")


def test_count_and_shape_mismatch_raise():
    reference = _outputs()
    with pytest.raises(ParityError, match="m: expected 2 outputs, got 1"):
        compare_outputs(reference, reference[:1], 1e-4, 1e-3, "m")
    with pytest.raises(ParityError, match=r"m: output 1 has shape \(3, 2\), expected \(2, 3\)"):
        compare_outputs(reference, [reference[0], reference[1].T], 1e-4, 1e-3, "m")


def test_default_tolerances_loosen_with_quantisation():
    fp32, fp16, int8 = (default_tolerance(q) for q in (None, "fp16", "int8"))
    assert fp32 == (1e-4, 1e-3)
    assert fp32 < fp16 < int8
    with pytest.raises(IsplabError, match="quantize must be one of None, 'fp16', 'int8'; got 'int4'"):
        default_tolerance("int4")


def test_eval_mode_restores_each_submodule_mode():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.Dropout())
    model[1].eval()  # e.g. a frozen batch norm inside a training model
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]


class _Nested(nn.Module):
    def forward(self, x: torch.Tensor):
        return x * 2, [x + 1, (x - 1,)]


def test_torch_outputs_flattens_in_order_without_grad():
    x = torch.arange(3.0, requires_grad=True)
    outputs = torch_outputs(_Nested(), (x,))
    np.testing.assert_array_equal(np.stack(outputs), [[0, 2, 4], [1, 2, 3], [-1, 0, 1]])


def test_torch_outputs_rejects_dict_outputs():
    class DictOut(nn.Module):
        def forward(self, x):
            return {"y": x}

    with pytest.raises(IsplabError, match="tensor or a tuple/list of tensors; got dict"):
        torch_outputs(DictOut(), (torch.zeros(1),))
