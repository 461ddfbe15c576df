"""Colour matrices against colour-science's sRGB definition and LibRaw (rawpy) on a DNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isplab.errors import IsplabError
from isplab.isp.color import (
    LINEAR_SRGB_TO_XYZ,
    XYZ_TO_LINEAR_SRGB,
    apply_color_matrix,
    camera_to_srgb_matrix,
    camera_to_xyz_matrix,
)

colour = pytest.importorskip("colour")

RNG = np.random.default_rng(3)
SRGB = colour.RGB_COLOURSPACES["sRGB"]
# XYZ -> camera matrices (D65) of the kind found in DNG ColorMatrix tags.
XYZ_TO_CAM = np.array(
    [
        [[1.5, -0.3, -0.1], [-0.4, 1.3, 0.1], [-0.05, 0.2, 0.7]],
        [[0.6722, -0.0635, -0.0963], [-0.4287, 1.246, 0.2046], [-0.0984, 0.1887, 0.6282]],
    ]
)


def _dcraw_rgb_cam(xyz_to_cam: np.ndarray, srgb_to_xyz: np.ndarray) -> np.ndarray:
    cam_rgb = xyz_to_cam @ srgb_to_xyz
    return np.linalg.inv(cam_rgb / cam_rgb.sum(axis=1, keepdims=True))


def test_srgb_matrices_are_iec_61966_2_1_and_exact_inverses():
    np.testing.assert_array_equal(LINEAR_SRGB_TO_XYZ.numpy(), SRGB.matrix_RGB_to_XYZ)
    # The exact inverse rounds to the standard's published XYZ -> RGB matrix.
    np.testing.assert_allclose(XYZ_TO_LINEAR_SRGB.numpy(), SRGB.matrix_XYZ_to_RGB, atol=5e-5)
    np.testing.assert_allclose((XYZ_TO_LINEAR_SRGB @ LINEAR_SRGB_TO_XYZ).numpy(), np.eye(3), atol=1e-14)
    d65 = colour.xy_to_XYZ(SRGB.whitepoint)
    np.testing.assert_allclose(LINEAR_SRGB_TO_XYZ.sum(1).numpy(), d65, atol=2e-4)


def test_apply_color_matrix_shared_and_per_sample():
    rgb = RNG.random((2, 3, 4, 5))
    matrices = RNG.normal(size=(2, 3, 3))
    out = apply_color_matrix(torch.from_numpy(rgb), torch.from_numpy(matrices))
    np.testing.assert_allclose(out.numpy(), np.einsum("bck,bkhw->bchw", matrices, rgb), rtol=1e-12, atol=1e-14)
    out = apply_color_matrix(torch.from_numpy(rgb).float(), matrices[0])
    assert out.dtype == torch.float32
    expected = np.stack([(matrices[0] @ img.reshape(3, -1)).reshape(img.shape) for img in rgb])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_camera_to_srgb_matrix_is_dcraws_rgb_cam():
    out = camera_to_srgb_matrix(torch.from_numpy(XYZ_TO_CAM))
    assert out.shape == (2, 3, 3) and out.dtype == torch.float64
    for i in range(2):
        np.testing.assert_allclose(out[i].numpy(), _dcraw_rgb_cam(XYZ_TO_CAM[i], SRGB.matrix_RGB_to_XYZ), rtol=1e-12)
    # The row normalisation maps white-balanced camera white to sRGB white.
    np.testing.assert_allclose((out @ torch.ones(3, dtype=torch.float64)).numpy(), np.ones((2, 3)), atol=1e-12)
    np.testing.assert_allclose(camera_to_srgb_matrix(XYZ_TO_CAM[0].tolist()).numpy(), out[0].numpy())


def test_camera_to_xyz_matrix_maps_camera_white_to_d65():
    out = camera_to_xyz_matrix(XYZ_TO_CAM)
    np.testing.assert_allclose(out.numpy(), SRGB.matrix_RGB_to_XYZ @ camera_to_srgb_matrix(XYZ_TO_CAM).numpy())
    np.testing.assert_allclose(out.sum(-1).numpy(), np.tile(SRGB.matrix_RGB_to_XYZ.sum(1), (2, 1)), atol=1e-12)


def test_camera_to_srgb_matrix_matches_libraw(tmp_path):
    rawpy = pytest.importorskip("rawpy")
    pidng_core = pytest.importorskip("pidng.core")
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, Orientation, PhotometricInterpretation

    tag, tags, size = pidng_core.Tag, pidng_core.DNGTags(), 64
    for name, value in [
        ("ImageWidth", size), ("ImageLength", size), ("TileWidth", size), ("TileLength", size),
        ("Orientation", Orientation.Horizontal),
        ("PhotometricInterpretation", PhotometricInterpretation.Color_Filter_Array),
        ("SamplesPerPixel", 1), ("BitsPerSample", 16), ("CFARepeatPatternDim", [2, 2]),
        ("CFAPattern", CFAPattern.RGGB), ("BlackLevel", [0]), ("WhiteLevel", 4095),
        ("ColorMatrix1", [(round(v * 10000), 10000) for v in XYZ_TO_CAM[1].ravel()]),
        ("CalibrationIlluminant1", CalibrationIlluminant.D65),
        ("AsShotNeutral", [(500, 1000), (1000, 1000), (700, 1000)]),
        ("Make", "isplab"), ("Model", "test"), ("UniqueCameraModel", "isplab test"),
        ("DNGVersion", DNGVersion.V1_4), ("DNGBackwardVersion", DNGVersion.V1_0),
    ]:  # fmt: skip
        tags.set(getattr(tag, name), value)
    writer = pidng_core.RAW2DNG()
    writer.options(tags, path="", compress=False)
    path = tmp_path / "matrix.dng"
    path.write_bytes(writer.convert(np.full((size, size), 1000, dtype=np.uint16)))
    with rawpy.imread(str(path)) as raw:
        libraw_rgb_cam = raw.color_matrix[:, :3].copy()
    # LibRaw uses dcraw's 6-decimal sRGB->XYZ table rather than IEC's 4-decimal one: ~2e-4 apart.
    np.testing.assert_allclose(camera_to_srgb_matrix(XYZ_TO_CAM[1]).numpy(), libraw_rgb_cam, atol=5e-4)


def test_matrices_are_differentiable():
    rgb = torch.rand(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    matrix = torch.from_numpy(XYZ_TO_CAM).requires_grad_()
    assert torch.autograd.gradcheck(apply_color_matrix, (rgb, matrix))
    assert torch.autograd.gradcheck(camera_to_srgb_matrix, (matrix,))


def test_wrong_shapes_are_reported():
    with pytest.raises(IsplabError, match=r"color matrix must have shape \(3, 3\) or \(2, 3, 3\).*got \(3, 4\)"):
        apply_color_matrix(torch.zeros(2, 3, 2, 2), torch.zeros(3, 4))
    with pytest.raises(IsplabError, match=r"xyz_to_camera must have shape \(3, 3\) or \(B, 3, 3\), got \(4, 3\)"):
        camera_to_srgb_matrix(np.zeros((4, 3)))
