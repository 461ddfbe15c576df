"""Challenge-style export: NHWC dynamic and fixed-size models, checked with their runtimes."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from isplab.errors import IsplabError
from isplab.export import run_tflite
from isplab.models.isp import build_isp_model
from isplab.workflows.isp.export import export_isp, export_paths


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
    with pytest.raises(IsplabError, match="bad --quantize 'int4'"):
        export_isp(model, tmp_path, quantize="int4")


def test_file_names_and_existing_outputs_are_refused_before_exporting(model, tmp_path) -> None:
    assert [p.name for p in export_paths(model, tmp_path, "onnx", "fp16", fixed_size=(32, 48))] == [
        "lfnet_dynamic_float16.onnx", "lfnet_32x48_float16.onnx"]
    assert [p.name for p in export_paths(model, tmp_path, "tflite", "int8")] == ["lfnet_544x960_int8.tflite"]
    existing = tmp_path / "lfnet_32x48.onnx"
    existing.write_bytes(b"an earlier export")
    with pytest.raises(IsplabError, match=rf"^export {existing} already exists: pass --overwrite to replace it"):
        export_isp(model, tmp_path, fixed_size=(32, 48))
    assert existing.read_bytes() == b"an earlier export"
    assert not (tmp_path / "lfnet_dynamic.onnx").exists()  # refused before the first file


# Small widths and a 32 x 32 packed input keep each conversion to seconds; nafnet with two levels
# has every op of the default four-level one.
ARCHS = {"punet": {}, "lfnet": {}, "nafnet": {"enc_blocks": (1, 1), "mid_blocks": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_architecture_exports_to_onnx_and_tflite_with_parity(arch, tmp_path) -> None:
    pytest.importorskip("litert_torch")
    torch.manual_seed(0)
    net = build_isp_model(arch, 4, **ARCHS[arch]).eval()
    # export_isp checks each file against PyTorch on its example input (ParityError otherwise);
    # here each runtime also gets an input it was not traced or checked with.
    raw = np.random.default_rng(1).uniform(0, 1, (1, 32, 32, 4)).astype(np.float32)
    expected = reference_nhwc(net, raw)

    (tflite,) = export_isp(net, tmp_path, format="tflite", fixed_size=(32, 32))
    assert tflite.name == f"{arch}_32x32.tflite"
    (rgb,) = run_tflite(tflite, [raw])
    assert rgb.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(rgb, expected, atol=1e-4, rtol=1e-3)

    dynamic, fixed = export_isp(net, tmp_path, format="onnx", fixed_size=(32, 32))
    for path in (fixed, dynamic):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (rgb,) = session.run(None, {"raw": raw})
        np.testing.assert_allclose(rgb, expected, atol=1e-4, rtol=1e-3)
    session = onnxruntime.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    wide = np.random.default_rng(2).uniform(0, 1, (1, 16, 48, 4)).astype(np.float32)
    (rgb,) = session.run(None, {"raw": wide})
    np.testing.assert_allclose(rgb, reference_nhwc(net, wide), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "blind"])
def test_a_model_with_the_classical_prior_exports_with_the_prior_in_the_graph(metadata, tmp_path) -> None:
    """The challenge-style NHWC ONNX files of a prior model match PyTorch, prior included."""
    from isplab.models.isp_prior import last_layer

    torch.manual_seed(0)
    net = build_isp_model("lfnet", 4, num_blocks=1, metadata=metadata, prior="classical").eval()
    with torch.no_grad():
        last_layer(net.net, "lfnet").weight.normal_(0, 0.05)  # as if trained: the network's part is not zero
    dynamic, fixed = export_isp(net, tmp_path, fixed_size=(16, 24))
    raw = np.random.default_rng(3).uniform(0, 0.5, (1, 16, 24, 4)).astype(np.float32)
    expected = reference_nhwc(net, raw)
    with torch.no_grad():
        prior_only = net.prior(torch.from_numpy(raw).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert np.abs(expected - prior_only).max() > 1e-3
    for path in (fixed, dynamic):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (rgb,) = session.run(None, {"raw": raw})
        np.testing.assert_allclose(rgb, expected, atol=1e-4, rtol=1e-3)
