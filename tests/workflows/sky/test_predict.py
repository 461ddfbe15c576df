"""The sky model file, encoder weights, and tiled prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from isplab.errors import IsplabError
from isplab.workflows.sky.hdr import LogEncoding, network_input
from isplab.workflows.sky.model import build_sky_model, load_sky_model, save_sky_model
from isplab.workflows.sky.predict import TileOptions, _ramp, overlay, predict_alpha
from isplab.workflows.sky.synth import make_sample


def _sharp_model(depth: int, seed: int = 0):
    """A tiny random U-Net whose outputs span most of [0, 1], so tiling errors are not hidden."""
    torch.manual_seed(seed)
    model = build_sky_model("resnet18", depth, [16] * depth).eval()
    with torch.no_grad():
        model.segmentation_head[0].weight.mul_(30)
    return model


def test_model_file_round_trip_keeps_encoding(tmp_path):
    enc = LogEncoding(log_split_around1=True, output_bias=1.0)
    model = build_sky_model("resnet18", 3, [8, 8, 8], encoding=enc.to_dict()).eval()
    save_sky_model(model, tmp_path / "m.pt")
    loaded = load_sky_model(tmp_path / "m.pt")
    assert loaded.sky_config["encoding"] == enc.to_dict() and loaded.size_multiple == 8
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(IsplabError, match=r"other\.pt' is not an isplab sky model"):
        load_sky_model(tmp_path / "other.pt")
    with pytest.raises(IsplabError, match="does not exist"):
        load_sky_model(tmp_path / "missing.pt")
    with pytest.raises(IsplabError, match="unknown encoder 'resnet9000'"):
        build_sky_model("resnet9000")


def test_encoder_weights_from_a_local_torchvision_file(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()  # includes fc.*, which is ignored
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_sky_model("resnet18", 3, [8, 8, 8], encoder_weights=tmp_path / "resnet18.pth")
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.encoder.layer2[0].bn1.running_var, state["layer2.0.bn1.running_var"])
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(IsplabError, match=r"resnet34\.pth does not fit the encoder"):
        build_sky_model("resnet18", 3, [8, 8, 8], encoder_weights=tmp_path / "resnet34.pth")


def test_window_ramps_only_on_inner_edges():
    w = _ramp(256, 160, 64, start_edge=False, end_edge=True)
    assert np.all(w[:64] == 0) and np.all(w[160:] == 1) and np.all(np.diff(w[:160]) >= 0)
    assert 0 < w[66] < w[80] < w[94] < 1 and w[96] == 1  # a raised cosine over overlap - 2 * margin
    assert w[80] == pytest.approx(0.5 - 0.5 * np.cos(np.pi * 16.5 / 32))
    assert np.all(_ramp(256, 160, 64, True, True) == 1)
    # neighbouring tiles' ramps over the shared pixels add up to a positive weight everywhere
    down = _ramp(256, 160, 64, True, False)[-160:]
    up = _ramp(256, 160, 64, False, True)[:160]
    np.testing.assert_allclose(down + up, 1.0, atol=1e-12)  # ramps cross where both tiles are reliable


@pytest.mark.parametrize("depth, tile, overlap, margin", [(3, 256, 160, 64), (4, 320, 256, 112)])
def test_tiled_equals_whole_image(depth, tile, overlap, margin):
    image, *_ = make_sample(0, 0, (640, 320))
    model = _sharp_model(depth)
    whole = predict_alpha(model, image, True, TileOptions(tile=0))
    assert whole.std() > 0.1  # the outputs vary: a real test of the blend
    tiled = predict_alpha(model, image, True, TileOptions(tile=tile, overlap=overlap, margin=margin, batch=2))
    assert np.abs(tiled - whole).max() < 1e-3


@pytest.mark.slow
def test_default_tiling_equals_whole_image_for_the_default_model():
    # the default U-Net (ResNet-34, 5 stages) with random weights sees farthest past a tile's edge
    # (benchmarks/sky.py --tile-study: below 1e-3 from ~340 px in, a trained one from ~160 px)
    torch.manual_seed(0)
    model = build_sky_model().eval()
    image, *_ = make_sample(5, 0, (2304, 256))  # two 2048 x 256 tiles, 1792 pixels shared
    whole = predict_alpha(model, image, True, TileOptions(tile=0))
    assert whole.std() > 0.1
    tiled = predict_alpha(model, image, True)  # the defaults
    assert np.abs(tiled - whole).max() < 1e-3
    # the old default margin (192) is not enough for this network
    narrow = predict_alpha(model, image, True, TileOptions(overlap=512, margin=192))
    assert np.abs(narrow - whole).max() > 1e-3


def test_tiling_mutations_break_tile_equals_whole(monkeypatch):
    """The tile == whole test above catches a missing window, a missing margin and off-grid tiles."""
    from isplab.workflows.sky import predict

    image, *_ = make_sample(0, 0, (640, 320))
    model = _sharp_model(3)
    options = TileOptions(tile=256, overlap=160, margin=64, batch=2)
    whole = predict_alpha(model, image, True, TileOptions(tile=0))
    assert np.abs(predict_alpha(model, image, True, options) - whole).max() < 1e-3
    assert np.abs(predict_alpha(model, image, True, TileOptions(256, 160, 0)) - whole).max() > 1e-2  # no margin
    with monkeypatch.context() as m:  # no blending window: a plain mean of the overlapping tiles
        m.setattr(predict, "_ramp", lambda length, *args: np.ones(length))
        assert np.abs(predict_alpha(model, image, True, options) - whole).max() > 1e-2
    starts = predict._starts
    with monkeypatch.context() as m:  # tile origins 4 pixels off the 8-pixel pooling grid
        m.setattr(predict, "_starts", lambda size, tile, step: [min(s + 4, size - tile) if 0 < s < size - tile else s for s in starts(size, tile, step)])
        assert np.abs(predict_alpha(model, image, True, options) - whole).max() > 1e-2


def test_cli_tiling_defaults_are_the_tile_options_defaults():
    from isplab.workflows.sky import cli

    assert (cli.TILE, cli.OVERLAP, cli.MARGIN, cli.TILE_BATCH) == tuple(vars(TileOptions()).values())


def test_prediction_of_odd_sizes_is_padded_and_cropped():
    image, *_ = make_sample(1, 0, (200, 100))
    model = _sharp_model(3)
    alpha = predict_alpha(model, image, True, TileOptions(tile=0))
    assert alpha.shape == (100, 200) and 0 <= alpha.min() and alpha.max() <= 1
    # = the network on the image reflect-padded to 104x200 (multiples of 8), cropped back
    padded = np.pad(image, ((0, 4), (0, 0), (0, 0)), mode="reflect")
    x = torch.from_numpy(network_input(padded, True)).permute(2, 0, 1)[None]
    with torch.no_grad():
        direct = torch.sigmoid(model(x))[0, 0, :100].numpy()
    np.testing.assert_allclose(alpha, direct, atol=1e-5)  # tiles are encoded in float32 (torch), the reference in float64
    nchw = predict_alpha(model, image, True, TileOptions(tile=0), channels_last=False)  # the memory layout changes nothing
    np.testing.assert_allclose(nchw, alpha, atol=1e-5)
    tiled = predict_alpha(model, image, True, TileOptions(tile=64, overlap=48, margin=16))
    assert tiled.shape == (100, 200) and np.abs(tiled - alpha).mean() < 0.05


def test_tiling_options_are_checked():
    model = _sharp_model(3)
    image = np.ones((64, 96, 3), np.float32)
    with pytest.raises(IsplabError, match="multiple of 8"):
        predict_alpha(model, image, True, TileOptions(tile=36, overlap=16, margin=4))
    with pytest.raises(IsplabError, match="bad tiling"):
        predict_alpha(model, image, True, TileOptions(tile=32, overlap=16, margin=8))


def test_overlay_tints_sky_and_draws_the_boundary():
    preview = np.full((10, 10, 3), 100, np.uint8)
    alpha = np.zeros((10, 10), np.float32)
    alpha[:5] = 1.0
    out = overlay(preview, alpha)
    assert tuple(out[0, 5]) == (50, 130, 178)  # 50% of (0, 160, 255) over 100
    assert tuple(out[8, 5]) == (100, 100, 100)
    assert tuple(out[4, 5]) == (255, 0, 0)  # the last sky row is the boundary


def test_iou_and_boundary_f_values():
    from isplab.workflows.sky.evaluate import boundary, boundary_f, iou

    gt = np.zeros((20, 20), bool)
    gt[:10] = True
    pred = np.zeros((20, 20), bool)
    pred[:12] = True
    assert iou(pred, gt) == pytest.approx(10 / 12)
    assert iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    assert boundary(gt).sum() == 20 and boundary(gt)[9].all()  # the last sky row
    # boundaries 2 rows apart: within tolerance 2, not within 1
    assert boundary_f(pred, gt, tolerance=2) == 1.0
    assert boundary_f(pred, gt, tolerance=1) == 0.0
    assert boundary_f(gt, gt, tolerance=0) == 1.0
    half = gt.copy()
    half[:, 10:] = False  # boundary: row 9 (cols 0-9) and column 9 (rows 0-9)
    p = (10 + 2) / 19  # half's boundary within 2 px of gt's row 9: its row 9 and column 9's rows 7-8
    r = 12 / 20  # gt's row 9 within 2 px of half's boundary: cols 0-11
    assert boundary_f(half, gt, tolerance=2) == pytest.approx(2 * p * r / (p + r))


def test_guided_refinement_moves_a_soft_edge_to_the_image_edge():
    from isplab.workflows.sky.predict import RefineOptions, refine_alpha

    pixels = np.full((40, 40, 3), 0.05, np.float32)
    pixels[:20] = 5.0  # bright sky in rows 0-19
    soft = (np.clip((26 - np.arange(40)) / 8, 0, 1)[:, None] * np.ones(40)).astype(np.float32)  # 0.5 at row 22
    refined = refine_alpha(soft, pixels, True, RefineOptions(radius=6, eps=1e-4))
    column = refined[:, 5]
    assert column[19] > 0.95 and column[20] < 0.45  # the step is now where the image's edge is
    assert ((refined >= 0.5) == (np.arange(40) < 20)[:, None]).all()
    assert not ((soft >= 0.5) == (np.arange(40) < 20)[:, None]).all()


def test_predict_files_refine_applies_the_guided_filter(tmp_path):
    from isplab.io.image import read_image
    from isplab.workflows.sky.predict import RefineOptions, predict_files, refine_alpha

    image, *_ = make_sample(2, 0, (128, 64))
    np.save(tmp_path / "pano.npy", image)
    model = _sharp_model(3)
    save_sky_model(model, tmp_path / "m.pt")
    options = TileOptions(tile=0)
    plain = predict_files([tmp_path / "pano.npy"], tmp_path / "m.pt", tmp_path / "plain", options, device="cpu")
    refine = RefineOptions(radius=3, eps=1e-3)
    refined = predict_files([tmp_path / "pano.npy"], tmp_path / "m.pt", tmp_path / "ref", options, device="cpu", refine=refine)
    assert not plain.failures and not refined.failures
    alpha = predict_alpha(load_sky_model(tmp_path / "m.pt"), image, True, options)
    np.testing.assert_allclose(read_image(tmp_path / "plain/pano_alpha.png") / 65535, alpha, atol=1 / 65535)
    expected = refine_alpha(alpha, image, True, refine)
    np.testing.assert_allclose(read_image(tmp_path / "ref/pano_alpha.png") / 65535, expected, atol=1 / 65535)
    assert np.abs(expected - alpha).max() > 0.01


def test_export_refuses_an_existing_file(tmp_path):
    from isplab.workflows.sky.export import export_sky

    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(IsplabError, match=r"m\.onnx already exists"):
        export_sky(tmp_path / "m.pt", tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"old"


def test_replace_sky_values():
    from isplab.workflows.sky.predict import exposure_scale, replace_sky

    pixels = np.zeros((4, 6, 3), np.float32)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 3.0, 1.0, 0.25  # channels differ: a swap shows
    replacement = np.zeros((4, 6, 3), np.float32)
    replacement[..., 0], replacement[..., 1], replacement[..., 2] = 0.5, 7.0, 100.0
    alpha = np.zeros((4, 6), np.float32)
    alpha[0], alpha[1] = 1.0, 0.5
    out = replace_sky(pixels, alpha, replacement)
    np.testing.assert_array_equal(out[0], replacement[0])  # alpha 1: the replacement, exactly
    np.testing.assert_array_equal(out[2:], pixels[2:])  # alpha 0: the image, exactly
    np.testing.assert_allclose(out[1], (pixels[1] + replacement[1]) / 2, rtol=1e-6)  # alpha 0.5: the mean
    # a panorama of another size is resized to the image (equirectangular: a plain resize)
    big = np.repeat(np.repeat(replacement, 3, 0), 3, 1)
    np.testing.assert_allclose(replace_sky(pixels, alpha, big), out, rtol=1e-6)
    gradient = np.repeat(np.linspace(0, 1, 12, dtype=np.float32)[None, :, None], 3, 2) * np.ones((8, 1, 1), np.float32)
    resized = replace_sky(pixels, np.ones((4, 6), np.float32), gradient)
    np.testing.assert_allclose(resized[0, :, 0], [(2 * i + 0.5) / 11 for i in range(6)], atol=1e-6)  # area averages of pairs
    # exposure matching: median luminance over alpha >= 0.5 of the image / of the replacement
    lum = lambda rgb: 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    scale = lum(pixels[0, 0]) / lum(replacement[0, 0])
    assert exposure_scale(pixels, replacement, alpha) == pytest.approx(scale, rel=1e-6)
    matched = replace_sky(pixels, alpha, replacement, match_exposure=True)
    np.testing.assert_allclose(matched[0], replacement[0] * scale, rtol=1e-6)
    np.testing.assert_array_equal(matched[3], pixels[3])
    assert lum(matched[0, 0]) == pytest.approx(lum(pixels[0, 0]), rel=1e-6)
    assert exposure_scale(pixels, replacement, np.zeros((4, 6), np.float32)) == 1.0  # no sky: unchanged


def test_predict_files_writes_alpha_exr_and_the_replaced_sky(tmp_path):
    import OpenEXR

    from isplab.io.image import read_image, write_image
    from isplab.workflows.sky.predict import OutputOptions, predict_files, replace_sky

    image, *_ = make_sample(3, 0, (128, 64))
    write_image(tmp_path / "pano.exr", image)
    panorama, *_ = make_sample(4, 0, (256, 128))
    write_image(tmp_path / "new_sky.exr", panorama)
    save_sky_model(_sharp_model(3), tmp_path / "m.pt")
    outputs = OutputOptions(alpha="exr", replace_sky=tmp_path / "new_sky.exr", match_exposure=True)
    result = predict_files([tmp_path / "pano.exr"], tmp_path / "m.pt", tmp_path / "out", TileOptions(tile=0), device="cpu", outputs=outputs)
    assert not result.failures
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pano_alpha.exr", "pano_mask.png", "pano_overlay.png", "pano_replaced.exr"]
    alpha = predict_alpha(load_sky_model(tmp_path / "m.pt"), image, True, TileOptions(tile=0))
    with OpenEXR.File(str(tmp_path / "out/pano_alpha.exr")) as exr:  # one float32 channel named Y, the values exactly
        channels = exr.channels()
        assert list(channels) == ["Y"] and channels["Y"].pixels.dtype == np.float32
        np.testing.assert_array_equal(channels["Y"].pixels, alpha)
    replaced = read_image(tmp_path / "out/pano_replaced.exr")
    np.testing.assert_array_equal(replaced, replace_sky(image, alpha, panorama, match_exposure=True))
    assert np.abs(replaced - replace_sky(image, alpha, panorama)).max() > 0.01  # the exposure was matched


def test_an_unusable_replacement_is_refused_before_any_work(tmp_path):
    from isplab.io.image import write_image
    from isplab.workflows.sky.predict import OutputOptions, predict_files

    write_image(tmp_path / "a.png", np.zeros((32, 32, 3), np.uint8))
    save_sky_model(_sharp_model(3), tmp_path / "m.pt")
    bad = np.ones((8, 8, 3), np.float32)
    bad[1, 1, 0] = np.nan
    write_image(tmp_path / "nan_sky.exr", bad)
    (tmp_path / "junk_sky.exr").write_bytes(b"not an exr")
    for name, match in (("nan_sky.exr", r"replacement sky panorama: .*nan_sky\.exr.*1 NaN"), ("junk_sky.exr", r"replacement sky panorama: .*junk_sky\.exr"),
                        ("missing.exr", r"replacement sky panorama: .*not found.*missing\.exr")):
        with pytest.raises(IsplabError, match=match):
            predict_files([tmp_path / "a.png"], tmp_path / "m.pt", tmp_path / "out", device="cpu", outputs=OutputOptions(replace_sky=tmp_path / name))
        assert not list((tmp_path / "out").iterdir())
    with pytest.raises(IsplabError, match="unknown alpha format 'tif'"):
        predict_files([tmp_path / "a.png"], tmp_path / "m.pt", tmp_path / "out", device="cpu", outputs=OutputOptions(alpha="tif"))
