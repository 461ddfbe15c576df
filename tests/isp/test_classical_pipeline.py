"""The classical pipeline against an independent numpy/colour-science composition, and its inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.isp import bayer
from isplab.isp.gamma import srgb_to_linear
from isplab.isp.pipeline import ClassicalISP, render
from isplab.isp.tone import inverse_smoothstep_tone

colour = pytest.importorskip("colour")
colour_demosaicing = pytest.importorskip("colour_demosaicing")

RNG = np.random.default_rng(6)
GAINS = np.array([[2.0, 1.0, 1.6], [1.4, 1.0, 2.2]])
CCMS = np.array(
    [
        [[1.7, -0.5, -0.2], [-0.3, 1.5, -0.2], [0.0, -0.6, 1.6]],
        [[1.9, -0.8, -0.1], [-0.2, 1.4, -0.2], [0.1, -0.4, 1.3]],
    ]
)
_REFERENCE_DEMOSAIC = {
    "malvar": colour_demosaicing.demosaicing_CFA_Bayer_Malvar2004,
    "bilinear": colour_demosaicing.demosaicing_CFA_Bayer_bilinear,
}


def _demosaic(raw: np.ndarray, pattern: str, method: str) -> np.ndarray:
    """colour-demosaicing with isplab's CFA-preserving border (see test_demosaic.py)."""
    return _REFERENCE_DEMOSAIC[method](np.pad(raw, 2, mode="reflect"), pattern)[2:-2, 2:-2]


def _numpy_render(raw: np.ndarray, pattern: str, gains, ccm, method: str, tone: bool, clip: bool) -> np.ndarray:
    """One ``(H, W)`` mosaic, the documented order, with reference implementations."""
    balanced = raw.copy()
    for position, colour_name in enumerate(pattern):
        balanced[position // 2 :: 2, position % 2 :: 2] *= gains["RGB".index(colour_name)]
    balanced = np.clip(balanced, 0, 1) if clip else balanced
    rgb = _demosaic(balanced, pattern, method) @ ccm.T  # (H, W, 3)
    rgb = np.clip(rgb, 0, 1) if clip else rgb
    out = colour.cctf_encoding(rgb, function="sRGB")
    if tone:
        out = np.clip(out, 0, 1)
        out = 3 * out**2 - 2 * out**3
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize(
    "pattern, method, tone, clip",
    [("RGGB", "malvar", True, True), ("GBRG", "bilinear", False, True), ("BGGR", "malvar", False, False)],
)
def test_render_matches_reference_composition(pattern, method, tone, clip):
    raw = RNG.random((2, 1, 8, 10))
    out = render(torch.from_numpy(raw), pattern, GAINS, CCMS, demosaic_method=method, tone=tone, clip=clip)
    expected = np.stack([_numpy_render(raw[b, 0], pattern, GAINS[b], CCMS[b], method, tone, clip) for b in range(2)])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    if clip:
        assert out.min() >= 0 and out.max() <= 1


def test_shared_parameters_and_float32():
    raw = torch.rand(2, 1, 8, 8)
    out = render(raw, "GRBG", GAINS[0], CCMS[0])
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    per_sample = render(raw, "GRBG", np.tile(GAINS[0], (2, 1)), np.tile(CCMS[0], (2, 1, 1)))
    torch.testing.assert_close(out, per_sample)


def test_unprocessing_in_reverse_order_recovers_a_flat_image():
    # sRGB -> inverse tone -> linear -> inverse CCM -> mosaic -> inverse WB, then render: the
    # pipeline's documented order. Flat colours demosaic exactly, borders included.
    srgb = torch.tensor([[0.3, 0.5, 0.7], [0.6, 0.4, 0.2]], dtype=torch.float64)
    image = srgb[:, :, None, None].expand(2, 3, 8, 8)
    linear = srgb_to_linear(inverse_smoothstep_tone(image))
    camera = torch.einsum("bck,bkhw->bchw", torch.linalg.inv(torch.from_numpy(CCMS)), linear)
    raw = bayer.mosaic(camera / torch.from_numpy(GAINS)[:, :, None, None], "RGGB")[:, None]
    out = render(raw, "RGGB", GAINS, CCMS)
    torch.testing.assert_close(out, image, rtol=0, atol=1e-12)


def test_module_matches_function_and_is_differentiable():
    isp = ClassicalISP("bggr", demosaic_method="bilinear", tone=False)
    assert isp.pattern == "BGGR" and list(isp.parameters()) == []
    raw = torch.from_numpy(RNG.uniform(0.2, 0.4, size=(2, 1, 4, 4))).requires_grad_()
    gains = torch.tensor(GAINS, requires_grad=True)
    ccm = torch.tensor(np.tile(np.eye(3) * 0.9 + 0.03, (2, 1, 1)), requires_grad=True)
    expected = render(raw, "BGGR", gains, ccm, demosaic_method="bilinear", tone=False)
    torch.testing.assert_close(isp(raw, gains, ccm), expected)
    assert torch.autograd.gradcheck(ClassicalISP("RGGB"), (raw, gains, ccm))


def test_module_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    isp = ClassicalISP("GRBG").eval()
    inputs = (torch.rand(1, 1, 16, 16), torch.tensor([[2.0, 1.0, 1.5]]), torch.from_numpy(CCMS[:1]).float())
    path = tmp_path / "isp.onnx"
    torch.onnx.export(isp, inputs, str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path))
    (out,) = session.run(None, {i.name: v.numpy() for i, v in zip(session.get_inputs(), inputs, strict=True)})
    np.testing.assert_allclose(out, isp(*inputs).numpy(), atol=1e-5)


def test_bad_arguments_are_reported():
    with pytest.raises(IsplabError, match="unknown demosaic method 'vng'"):
        ClassicalISP("RGGB", demosaic_method="vng")
    with pytest.raises(IsplabError, match="unknown CFA pattern 'XGGB'"):
        ClassicalISP("XGGB")
    with pytest.raises(IsplabError, match=r"gains must have shape \(3,\) or \(1, 3\).*got \(4,\)"):
        render(torch.rand(1, 1, 4, 4), "RGGB", [1.0, 1.0, 1.0, 1.0], np.eye(3))
    with pytest.raises(IsplabError, match=r"color matrix must have shape \(3, 3\) or \(1, 3, 3\).*got \(3,\)"):
        render(torch.rand(1, 1, 4, 4), "RGGB", [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
