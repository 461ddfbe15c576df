from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError, MissingDependencyError, ParityError
from isplab.export import (
    NHWCWrapper,
    default_tolerance,
    export_tflite,
    run_tflite,
    tflite_signature,
)

RAW = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))


def _torch(model, *inputs: torch.Tensor) -> list[np.ndarray]:
    # The test models have no train/eval-dependent layers, so no .eval() is needed here.
    with torch.no_grad():
        out = model(*inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def test_nhwc_wrapper_permutes_4d_tensors_only(two_input_net, conv_net):
    image, lux = torch.rand(2, 3, 5, 7), torch.rand(2)
    np.testing.assert_array_equal(
        _torch(NHWCWrapper(two_input_net), image.permute(0, 2, 3, 1), lux)[0],
        _torch(two_input_net, image, lux)[0],
    )
    rgb, mean = _torch(NHWCWrapper(conv_net), RAW.permute(0, 2, 3, 1))
    want_rgb, want_mean = _torch(conv_net, RAW)
    np.testing.assert_array_equal(rgb, want_rgb.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(mean, want_mean)


@pytest.mark.parametrize("module", ["litert_torch", "litert_torch.generative.quantize.quant_recipes"])
def test_missing_converter_names_the_extra(conv_net, tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingDependencyError, match=rf"'{module}'.*pip install 'isplab\[tflite\]'"):
        export_tflite(conv_net, (RAW,), tmp_path / "m.tflite", quantize="int8")


def test_missing_interpreter_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'isplab\[tflite\]'"):
        run_tflite(tmp_path / "m.tflite", [RAW.numpy()])


@pytest.fixture(scope="module")
def conversions(conv_net, tmp_path_factory):
    """The conv net converted once per precision."""
    root = tmp_path_factory.mktemp("tflite")
    conv_net.train()
    return {
        q: export_tflite(conv_net, (RAW,), root / f"{q or 'fp32'}.tflite", quantize=q)
        for q in (None, "fp16", "int8")
    }


@pytest.mark.slow
def test_conversions_keep_layout_and_order_and_match_torch(conv_net, conversions):
    assert conv_net.training  # converted in eval mode, caller's mode restored
    raw = torch.rand(1, 4, 16, 16)
    want = _torch(conv_net, raw)
    for quantize, result in conversions.items():
        signature = tflite_signature(result.path)
        assert [s.shape for s in signature.inputs] == [(1, 4, 16, 16)]
        assert [s.shape for s in signature.outputs] == [(1, 3, 16, 16), (1, 3)]
        assert {s.dtype for s in signature.inputs + signature.outputs} == {np.dtype(np.float32)}
        atol, rtol = default_tolerance(quantize)
        (report,) = result.parity
        assert report.passed and report.n_outputs == 2 and (report.atol, report.rtol) == (atol, rtol)
        for got, ref in zip(run_tflite(result.path, [raw.numpy()]), want):
            np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol)
    assert conversions[None].parity[0].max_abs_diff < 1e-5


@pytest.mark.slow
def test_quantised_conversions_are_smaller(conversions):
    fp32 = conversions[None].size_bytes
    assert conversions["int8"].size_bytes < conversions["fp16"].size_bytes < fp32
    assert all(r.size_bytes == r.path.stat().st_size for r in conversions.values())


@pytest.mark.slow
def test_int8_conversion_with_fp32_tolerance_raises_parity_error(conv_net, tmp_path):
    path = tmp_path / "strict.tflite"
    with pytest.raises(ParityError, match=rf"TFLite model '{path}' \(int8\) vs PyTorch: output \d"):
        export_tflite(conv_net, (RAW,), path, quantize="int8", atol=1e-6, rtol=0.0)


@pytest.mark.slow
def test_wrapped_two_input_model_has_libcamera_awb_signature(two_input_net, tmp_path):
    image, lux = torch.rand(1, 12, 16, 3), torch.tensor([0.8])
    result = export_tflite(NHWCWrapper(two_input_net), (image, lux), tmp_path / "awb.tflite")
    signature = tflite_signature(result.path)
    assert [(s.shape, s.dtype) for s in signature.inputs] == [
        ((1, 12, 16, 3), np.float32),
        ((1,), np.float32),
    ]
    assert [(s.shape, s.dtype) for s in signature.outputs] == [((1,), np.float32)]
    # Independent of the wrapper: the NHWC file equals the NCHW model on a permuted image.
    image, lux = torch.rand(1, 12, 16, 3), torch.tensor([1.7])
    (got,) = run_tflite(result.path, [image.numpy(), lux.numpy()])
    np.testing.assert_allclose(
        got, _torch(two_input_net, image.permute(0, 3, 1, 2), lux)[0], atol=1e-5, rtol=1e-4
    )
    wrong_layout = r"input 0 .* has static shape \[1, 12, 16, 3\], got \[1, 3, 12, 16\]"
    with pytest.raises(IsplabError, match=wrong_layout):
        run_tflite(result.path, [image.permute(0, 3, 1, 2).numpy(), lux.numpy()])
    with pytest.raises(IsplabError, match="expects 2 inputs, got 1"):
        run_tflite(result.path, [image.numpy()])


def test_a_file_that_is_not_tflite_is_a_clear_error(tmp_path):
    from isplab.errors import IsplabError
    from isplab.export import run_tflite

    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(IsplabError, match="junk.tflite' is not a TFLite model"):
        run_tflite(junk, [])
