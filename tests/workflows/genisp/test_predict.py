"""GenISP inference: tiled equals whole, and ``run`` over raw files (batch failures, outputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.io.dng import write_dng
from isplab.io.image import read_image
from isplab.io.raw import RawImage
from isplab.models.genisp import genisp, save_genisp
from isplab.workflows.genisp.predict import apply_genisp, process_raw, run_files


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = genisp(subnet_size=32)
    with torch.no_grad():  # non-trivial colour stages (they start as the identity)
        model.conv_wb.head.weight.normal_(0, 0.05)
        model.conv_cc.head.weight.normal_(0, 0.05)
        for norm in (model.convnet.layers[1], model.convnet.layers[4]):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("size,tile", [((70, 101), 32), ((64, 64), 16), ((37, 50), 7)])
def test_tiled_equals_whole(size, tile):
    model = _model()
    x = torch.rand(2, 3, *size) * torch.tensor([0.2, 0.1, 0.05])[None, :, None, None]
    with torch.no_grad():
        whole = apply_genisp(model, x)
        tiled = apply_genisp(model, x, tile=tile)
        assert torch.equal(whole, model(x))
    assert (whole - tiled).abs().max() < 1e-5
    assert whole.std() > 0.01  # not a trivial (constant) output


def test_tiled_keeps_gradients_and_one_image_input():
    model = _model()
    x = torch.rand(3, 40, 40)
    out = apply_genisp(model, x, tile=16)
    assert out.shape == (3, 40, 40)
    out.square().mean().backward()
    assert model.conv_wb.head.weight.grad.abs().sum() > 0 and model.convnet.layers[0].weight.grad.abs().sum() > 0


def test_bad_input_shape():
    with pytest.raises(IsplabError, match=r"\(B, 3, H, W\)"):
        apply_genisp(_model(), torch.rand(1, 4, 8, 8))


def _raw(path, seed=0):
    rng = np.random.default_rng(seed)
    raw = RawImage(mosaic=rng.integers(64, 600, size=(48, 64)).astype(np.uint16), cfa_pattern="GRBG",
                   black_level=[64] * 4, white_level=4095, as_shot_neutral=[0.5, 1, 0.7],
                   color_matrix=[[0.9, 0.1, 0.0], [0.2, 1.0, -0.1], [0.0, 0.1, 1.2]])
    return write_dng(path, raw)


def test_run_writes_outputs_reports_failures_and_refuses_overwrite(tmp_path):
    model = _model()
    model_path = save_genisp(model, tmp_path / "genisp.pt")
    good = _raw(tmp_path / "a.dng")
    bad = tmp_path / "broken.dng"
    bad.write_bytes(b"not a raw")
    seen = []
    result = run_files([good, bad], model_path, tmp_path / "out", formats=("png", "tiff"), short=None, tile=16,
                       on_file=lambda p, e: seen.append((p.name, e)))
    assert [p.name for p in result.written] == ["a.png", "a.tiff"]
    assert len(result.failures) == 1 and result.failures[0][0] == bad and "broken.dng" in result.failures[0][1]
    assert seen[0] == ("a.dng", None) and seen[1][0] == "broken.dng"
    expected = process_raw(model, good, short=None)
    assert expected.shape == (24, 32, 3)
    png = read_image(tmp_path / "out" / "a.png")
    assert png.dtype == np.uint16
    np.testing.assert_allclose(png / 65535.0, np.clip(expected, 0, 1), atol=1.5 / 65535)
    np.testing.assert_allclose(read_image(tmp_path / "out" / "a.tiff"), expected, atol=1e-5)
    before = png.copy()
    with pytest.raises(IsplabError, match="already exists"):
        run_files([good], model_path, tmp_path / "out")
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "a.png"), before)


def test_run_resizes_keeping_aspect(tmp_path):
    model = _model()
    good = _raw(tmp_path / "a.dng")
    out = process_raw(model, good, short=12, long=100)
    assert out.shape == (12, 16, 3)
