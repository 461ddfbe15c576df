"""Challenge-style export: NHWC dynamic and fixed-size models, checked with their runtimes."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from isplab.errors import IsplabError
from isplab.export import tflite_signature
from isplab.models.isp import build_isp_model
from isplab.workflows.isp.export import export_isp


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_isp_model("lfnet", 4).eval()


def reference_nhwc(model, raw_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(raw_nhwc).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


def test_onnx_dynamic_and_fixed(model, tmp_path) -> None:
    dynamic, fixed = export_isp(model, tmp_path, fixed_size=(32, 48))
    assert (dynamic.name, fixed.name) == ("lfnet_dynamic.onnx", "lfnet_32x48.onnx")

    session = onnxruntime.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 32, 48, 4]
    assert session.get_outputs()[0].shape == [1, 64, 96, 3]

    session = onnxruntime.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 1 and session.get_inputs()[0].shape[3] == 4
    assert all(isinstance(d, str) for d in session.get_inputs()[0].shape[1:3])
    raw = np.random.default_rng(0).uniform(0, 1, (1, 20, 36, 4)).astype(np.float32)  # a size never exported
    (rgb,) = session.run(None, {"raw": raw})
    assert rgb.shape == (1, 40, 72, 3)
    np.testing.assert_allclose(rgb, reference_nhwc(model, raw), atol=1e-4, rtol=1e-3)


def test_invalid_format_and_size(model, tmp_path) -> None:
    with pytest.raises(IsplabError, match="unknown export format 'pb'"):
        export_isp(model, tmp_path, format="pb")
    punet = build_isp_model("punet", 4)
    with pytest.raises(IsplabError, match="fixed_size 40x48 must be positive multiples of the model's size_multiple 16"):
        export_isp(punet, tmp_path, fixed_size=(40, 48))


@pytest.mark.slow
def test_tflite_fixed_only(model, tmp_path) -> None:
    pytest.importorskip("litert_torch")
    paths = export_isp(model, tmp_path, format="tflite", fixed_size=(32, 48))
    assert [p.name for p in paths] == ["lfnet_32x48.tflite"]
    signature = tflite_signature(paths[0])
    assert [s.shape for s in signature.inputs] == [(1, 32, 48, 4)]
    assert [s.shape for s in signature.outputs] == [(1, 64, 96, 3)]
