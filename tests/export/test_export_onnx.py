from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from isplab.errors import IsplabError, ParityError
from isplab.export import default_tolerance, export_onnx, run_onnx

RAW = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
DYNAMIC = {"raw": {0: "batch", 2: "height", 3: "width"}}


def _torch(model, *inputs: torch.Tensor) -> list[np.ndarray]:
    # The test models have no train/eval-dependent layers, so no .eval() is needed here.
    with torch.no_grad():
        out = model(*inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


@pytest.fixture(scope="module")
def exports(conv_net, tmp_path_factory):
    """The conv net exported once per precision, with dynamic batch/H/W."""
    root = tmp_path_factory.mktemp("onnx")
    conv_net.train()
    return {
        q: export_onnx(
            conv_net,
            (RAW,),
            root / f"{q or 'fp32'}.onnx",
            output_names=["rgb", "mean"],
            dynamic_axes=DYNAMIC,
            quantize=q,
        )
        for q in (None, "fp16", "int8")
    }


def test_fp32_export_has_dynamic_axes_and_matches_torch_at_other_sizes(conv_net, exports):
    assert conv_net.training  # export ran in eval mode and restored the caller's mode
    result = exports[None]
    graph = onnx.load(result.path).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert [i.name for i in graph.input] == ["raw"]
    assert [o.name for o in graph.output] == ["rgb", "mean"]
    assert dims == ["batch", 4, "height", "width"]
    # export_onnx checked the example size and one with every dynamic axis doubled...
    assert len(result.parity) == 2
    assert "[(1, 4, 16, 16)]" in result.parity[0].what
    assert "[(2, 4, 32, 32)]" in result.parity[1].what
    assert all(r.passed and r.max_abs_diff < 1e-5 for r in result.parity)
    # ...and an independent size (odd, non-square) works too.
    raw = torch.rand(3, 4, 13, 22)
    for got, want in zip(run_onnx(result.path, [raw.numpy()]), _torch(conv_net, raw)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_quantised_exports_are_smaller_and_within_their_tolerance(conv_net, exports):
    raw = torch.rand(2, 4, 24, 20)
    want = _torch(conv_net, raw)
    for quantize in ("fp16", "int8"):
        result = exports[quantize]
        assert result.quantize == quantize
        assert result.size_bytes < exports[None].size_bytes
        assert result.size_bytes == result.path.stat().st_size
        atol, rtol = default_tolerance(quantize)
        assert all(r.passed and (r.atol, r.rtol) == (atol, rtol) for r in result.parity)
        for got, ref in zip(run_onnx(result.path, [raw.numpy()]), want):
            assert got.dtype == np.float32  # float32 I/O kept
            np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol)


def test_quantised_graphs_hold_quantised_weights(exports):
    fp16 = onnx.load(exports["fp16"].path).graph
    assert {t.data_type for t in fp16.initializer if "weight" in t.name} == {onnx.TensorProto.FLOAT16}
    assert fp16.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    int8_ops = {n.op_type for n in onnx.load(exports["int8"].path).graph.node}
    assert {"ConvInteger", "DynamicQuantizeLinear"} <= int8_ops


def test_int8_export_with_fp32_tolerance_raises_parity_error(conv_net, tmp_path):
    path = tmp_path / "strict.onnx"
    with pytest.raises(ParityError) as info:
        export_onnx(conv_net, (RAW,), path, quantize="int8", atol=1e-6, rtol=0.0)
    message = str(info.value)
    assert f"ONNX model '{path}' (int8) vs PyTorch" in message
    assert "output 0 (shape (1, 3, 16, 16)) exceeds tolerance atol=1e-06 + rtol=0*|reference|" in message
    assert "max abs diff" in message


def test_two_input_export_keeps_input_and_output_order(two_input_net, tmp_path):
    image, lux = torch.rand(1, 3, 8, 12), torch.tensor([0.7])
    result = export_onnx(two_input_net, (image, lux), tmp_path / "awb.onnx", output_names=["gain"])
    graph = onnx.load(result.path).graph
    assert [i.name for i in graph.input] == ["image", "lux"]  # forward's parameter names
    assert [o.name for o in graph.output] == ["gain"]
    assert len(result.parity) == 1  # static shapes: only the example inputs are checked
    lux = torch.tensor([2.5])
    got = run_onnx(result.path, [image.numpy(), lux.numpy()])
    np.testing.assert_allclose(got[0], _torch(two_input_net, image, lux)[0], atol=1e-5, rtol=1e-4)


def test_invalid_arguments_raise(conv_net, tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(IsplabError, match=r"dynamic_axes names \['rgb'\] are neither inputs \['raw'\]"):
        export_onnx(conv_net, (RAW,), path, dynamic_axes={"rgb": [2, 3]})
    with pytest.raises(IsplabError, match=r"input_names \['a', 'b'\] has 2 names for 1 example"):
        export_onnx(conv_net, (RAW,), path, input_names=["a", "b"])
    with pytest.raises(IsplabError, match="quantize must be one of"):
        export_onnx(conv_net, (RAW,), path, quantize="int4")
    assert not path.exists()


def test_run_onnx_reports_missing_file_and_wrong_input_count(exports, tmp_path):
    with pytest.raises(IsplabError, match="ONNX model file not found: '.*nope.onnx'"):
        run_onnx(tmp_path / "nope.onnx", [RAW.numpy()])
    with pytest.raises(IsplabError, match=r"expects 1 inputs \['raw'\], got 2"):
        run_onnx(exports[None].path, [RAW.numpy(), RAW.numpy()])
