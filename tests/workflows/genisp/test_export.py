"""GenISP to ONNX: onnxruntime matches PyTorch at several sizes; outputs are not overwritten."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.export.onnx import run_onnx
from isplab.models.genisp import genisp, save_genisp
from isplab.workflows.genisp.export import export_genisp
from isplab.workflows.genisp.predict import apply_genisp


def test_export_matches_pytorch_at_any_size(tmp_path):
    torch.manual_seed(0)
    model = genisp()
    with torch.no_grad():  # image-dependent colour stages, so the shrink inside the graph matters
        model.conv_wb.head.weight.normal_(0, 0.5)
        model.conv_cc.head.weight.normal_(0, 0.5)
    path = save_genisp(model, tmp_path / "genisp.pt")
    result = export_genisp(path)
    assert result.path == tmp_path / "genisp.onnx" and result.path.is_file()
    assert len(result.parity) == 3 and all(r.max_abs_diff < 1e-4 for r in result.parity)
    x = torch.rand(1, 3, 150, 610) * 0.05
    with torch.no_grad():
        expected = apply_genisp(model.eval(), x).numpy()
        assert not np.allclose(expected, apply_genisp(model, x * 2).numpy() / 2, atol=1e-3)  # not a linear map
    got = run_onnx(result.path, [x.numpy()])[0]
    assert got.shape == (1, 3, 150, 610)
    assert np.abs(got - expected).max() < 1e-4
    before = result.path.read_bytes()
    with pytest.raises(IsplabError, match="already exists"):
        export_genisp(path)
    assert result.path.read_bytes() == before


def test_export_refuses_a_non_genisp_file(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"sky_config": {}, "state_dict": {}}, bad)
    with pytest.raises(IsplabError, match="x.pt.*GenISP model"):
        export_genisp(bad, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
