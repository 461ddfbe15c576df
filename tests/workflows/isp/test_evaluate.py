"""Testing a learned ISP: the two PSNR definitions, SSIM, MS-SSIM on small images, outputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isplab.errors import IsplabError
from isplab.models.isp import build_isp_model
from isplab.workflows.isp import evaluate
from isplab.workflows.isp.data import open_pairs


class HalfRGB(nn.Module):
    """Stand-in ISP: challenge-packed planes -> RGB (greens averaged), nearest x2 upsampling."""

    size_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = torch.stack([x[:, 2], (x[:, 1] + x[:, 3]) / 2, x[:, 0]], dim=1) * self.gain
        return F.interpolate(rgb, scale_factor=2, mode="nearest")


def write_mai(root: Path, count: int, side: int) -> Path:
    rng = np.random.default_rng(7)
    for folder in ("mediatek_raw", "fujifilm"):
        (root / "test" / folder).mkdir(parents=True)
    for i in range(count):
        raw = rng.integers(0, 1024, (side, side), dtype=np.uint16)
        # targets near the stand-in's output so PSNRs differ per image
        out = np.stack([raw[0::2, 0::2], (raw[0::2, 1::2].astype(float) + raw[1::2, 0::2]) / 2, raw[1::2, 1::2]], -1) / 1020
        out = np.clip(out.repeat(2, 0).repeat(2, 1) + rng.normal(0, 0.02 * (i + 1), (side, side, 3)), 0, 1)
        cv2.imwrite(str(root / "test/mediatek_raw" / f"{i}.png"), raw)
        cv2.imwrite(str(root / "test/fujifilm" / f"{i}.png"), np.round(out * 255).astype(np.uint8)[..., ::-1])
    return root


def numpy_outputs(root: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for i in range(count):
        raw = cv2.imread(str(root / "test/mediatek_raw" / f"{i}.png"), cv2.IMREAD_UNCHANGED).astype(np.float64) / 1020
        rgb = np.stack([raw[0::2, 0::2], (raw[0::2, 1::2] + raw[1::2, 0::2]) / 2, raw[1::2, 1::2]], -1)
        pred = np.clip(rgb.repeat(2, 0).repeat(2, 1), 0, 1)
        target = cv2.imread(str(root / "test/fujifilm" / f"{i}.png"))[..., ::-1] / 255.0
        pairs.append((pred, target))
    return pairs


def test_both_psnr_definitions_against_numpy(tmp_path: Path):
    root = write_mai(tmp_path / "mai", 5, 64)
    result = evaluate.test_isp(HalfRGB(), open_pairs(root, "test"), batch_size=2)
    mses = [np.mean((p - t) ** 2) for p, t in numpy_outputs(root, 5)]
    per_image = [10 * np.log10(1 / m) for m in mses]
    # challenge: MSE pooled over batches of 2 (the last has 1 image), PSNR per batch, averaged
    pooled = np.mean([20 * np.log10(1 / np.sqrt(np.mean(mses[i : i + 2]))) for i in (0, 2, 4)])
    assert result.psnr_mean == pytest.approx(np.mean(per_image), abs=1e-3)
    assert result.psnr_pooled == pytest.approx(pooled, abs=1e-3)
    assert abs(result.psnr_pooled - result.psnr_mean) > 0.05  # the definitions really differ here
    assert [row["psnr"] for row in result.rows] == pytest.approx(per_image, abs=1e-3)
    assert result.rows[0]["ssim"] > result.rows[4]["ssim"]  # noisier targets score lower
    assert result.images == 5 and result.batch_size == 2
    # 64 px images allow 3 MS-SSIM scales (64 > 10 * 2**2), not 5
    assert result.ms_ssim_note.startswith("3 scales") and 0 < result.ms_ssim <= 1
    text = result.summary()
    assert "psnr_pooled (challenge, batch-pooled MSE, batch=2)" in text and "psnr_mean (per-image)" in text
    assert evaluate.test_isp(HalfRGB(), open_pairs(root, "test"), max_images=2).images == 2


def test_ms_ssim_scales_and_skip(tmp_path: Path):
    assert [evaluate.ms_ssim_scales(s, s) for s in (20, 22, 43, 44, 81, 161, 175, 176)] == [1, 2, 2, 3, 3, 4, 4, 5]
    image = torch.rand(1, 3, 176, 176, generator=torch.Generator().manual_seed(0))
    assert evaluate.ms_ssim(image, image, 5).item() == pytest.approx(1.0, abs=1e-5)
    root = write_mai(tmp_path / "small", 2, 20)
    result = evaluate.test_isp(HalfRGB(), open_pairs(root, "test"))
    assert result.ms_ssim is None and result.ms_ssim_note.startswith("skipped")
    # every size ms_ssim_scales allows passes torchmetrics' checks
    for side in (22, 44, 81, 161):
        scales = evaluate.ms_ssim_scales(side, side)
        assert 0 < evaluate.ms_ssim(image[..., :side, :side], image[..., :side, :side].flip(-1), scales).item() < 1
    line = next(line for line in result.summary().splitlines() if line.startswith("ms_ssim"))
    assert line.startswith("ms_ssim (skipped") and line.endswith(": skipped")


def test_outputs_side_by_side_and_report(tmp_path: Path):
    root = write_mai(tmp_path / "mai", 3, 48)
    out = tmp_path / "out"
    result = evaluate.test_isp(HalfRGB(), open_pairs(root, "test"), out_dir=out)
    image = cv2.imread(str(out / "1.png"))[..., ::-1]
    assert image.shape == (48, 3 * 48, 3)
    target = cv2.imread(str(root / "test/fujifilm/1.png"))[..., ::-1]
    np.testing.assert_array_equal(image[:, 96:], target)  # right panel: the target
    html = result.report.read_text()
    assert result.report == out / "report.html"
    assert "psnr_pooled (challenge, batch-pooled MSE, batch=8) dB" in html and "psnr_mean (per-image) dB" in html
    assert 'src="0.png"' in html

    # A second run into the same folder is refused before scoring, and nothing changes.
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    class Exploding(HalfRGB):
        def forward(self, x):
            raise AssertionError("the model ran although the outputs exist")

    with pytest.raises(IsplabError, match=rf"^output folder {out} already holds report.html, 0.png, 1.png, \.\.\.: pass --overwrite"):
        evaluate.test_isp(Exploding(), open_pairs(root, "test"), out_dir=out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    half = HalfRGB()
    with torch.no_grad():
        half.gain.fill_(0.5)
    again = evaluate.test_isp(half, open_pairs(root, "test"), out_dir=out, overwrite=True)
    assert again.psnr_mean != result.psnr_mean and (out / "1.png").read_bytes() != before["1.png"]


def test_predict_pads_to_the_model_multiple():
    model = build_isp_model("punet", 4).eval()
    packed = torch.rand(1, 4, 24, 40)
    with torch.no_grad():
        out = evaluate.predict(model, packed)
        padded = model(F.pad(packed, (0, 8, 0, 8), mode="reflect"))[..., :48, :80]
    assert out.shape == (1, 3, 48, 80)
    torch.testing.assert_close(out, padded.clamp(0, 1))
    with pytest.raises(IsplabError, match="batch_size must be at least 1"):
        evaluate.test_isp(model, None, batch_size=0)


def test_delta_e2000_per_image_pooled_and_worst(tmp_path: Path):
    """ΔE2000 per image matches colour-science's CIEDE2000 on the same outputs; the worst come first."""
    import colour

    root = write_mai(tmp_path / "mai", 3, 24)
    result = evaluate.test_isp(HalfRGB(), open_pairs(root, "test"))
    expected = []
    for pred, target in numpy_outputs(root, 3):
        lab = [colour.XYZ_to_Lab(colour.sRGB_to_XYZ(image)) for image in (pred, target)]
        expected.append(colour.delta_E(*lab, method="CIE 2000").mean())
    np.testing.assert_allclose([row["delta_e2000"] for row in result.rows], expected, atol=0.05)
    assert result.delta_e2000 == pytest.approx(np.mean(expected), abs=0.05)
    assert result.delta_e2000_pooled == pytest.approx(np.mean(expected), abs=0.05)  # same sizes: same weights
    assert [row["name"] for row in result.worst(2)] == [str(i) for i in np.argsort(expected)[::-1][:2]]
    assert "worst images by ΔE2000: " + f"{result.worst(1)[0]['name']} (" in result.summary()


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    from isplab.workflows.isp.data import heldout_set

    return heldout_set(tmp_path_factory.mktemp("heldout") / "clean", 4, size=(128, 96), noise=False)


def test_heldout_set_uses_photographs_and_held_out_cameras(heldout):
    import json

    from isplab.data.cameras import TEST_CAMERAS
    from isplab.data.sources import SKIMAGE_PHOTOS

    manifest = json.loads((heldout / "manifest.json").read_text())
    assert [s["source"] for s in manifest["samples"]] == list(SKIMAGE_PHOTOS)[:4]
    assert all(s["camera"] in TEST_CAMERAS for s in manifest["samples"])
    assert manifest["settings"]["camera_split"] == "test"


def test_baselines_score_the_same_raws(heldout, tmp_path: Path):
    """On noiseless held-out raws the metadata pipelines (isplab's oracle, LibRaw) get colours right,
    grey-world with a generic matrix does not; the report tabulates all of them."""
    source = open_pairs(heldout, "test")
    model = build_isp_model("punet", 4).eval()
    result = evaluate.test_isp(model, source, baselines=evaluate.BASELINES, out_dir=tmp_path / "out")
    oracle, grey, libraw = (result.baselines[name] for name in ("oracle", "greyworld", "libraw"))
    assert oracle["delta_e2000"] < 6.0 and oracle["psnr_mean"] > 25.0
    assert abs(libraw["delta_e2000"] - oracle["delta_e2000"]) < 1.5
    assert grey["delta_e2000"] > oracle["delta_e2000"] + 3.0
    assert [row["method"] for row in result.comparison()] == ["model", "oracle", "greyworld", "libraw", "greyworld-auto"]
    for row in result.rows:
        assert row["oracle_delta_e2000"] < row["greyworld_delta_e2000"] or row["greyworld_delta_e2000"] < 8
    html = result.report.read_text()
    assert "The model and the classical baselines on the same raws" in html
    assert "The 4 worst images by ΔE2000" in html


def test_oracle_render_reproduces_a_clean_target(heldout):
    """The oracle baseline is isplab's render with the file's metadata: on a clean raw, close to the target."""
    import json

    from isplab.io.image import read_image, to_float

    sample = json.loads((heldout / "manifest.json").read_text())["samples"][0]
    rendered = evaluate.baseline_render("oracle", heldout / sample["file"], sample["brightness_gain"])
    target = torch.from_numpy(to_float(read_image(heldout / sample["target"]))).permute(2, 0, 1)
    assert (rendered - target).abs()[:, 4:-4, 4:-4].median() < 0.02
    swapped = evaluate.baseline_render("oracle", heldout / sample["file"], sample["brightness_gain"] * 2)
    assert (swapped - target).abs().mean() > 0.05  # the brightness gain is applied
    # By default every baseline takes the exposure from the raw itself (DNG BaselineExposure), not the manifest.
    for name in ("oracle", "greyworld", "libraw"):
        from_file = evaluate.baseline_render(name, heldout / sample["file"])
        given = evaluate.baseline_render(name, heldout / sample["file"], sample["brightness_gain"])
        torch.testing.assert_close(from_file, given, atol=1e-5, rtol=0)


def test_greyworld_auto_ignores_the_files_exposure_and_brings_green_to_middle_grey(heldout):
    """``greyworld-auto`` reads no metadata: the same mosaic renders the same whatever its exposure
    tag or a global scale of the raw; its gain is middle grey over the mean green."""
    import json

    from isplab.io.dng import write_dng
    from isplab.io.raw import read_raw
    from isplab.models.isp_prior import EXPOSURE_TARGET
    from isplab.workflows.isp.data import read_mosaic

    sample = json.loads((heldout / "manifest.json").read_text())["samples"][0]
    path = heldout / sample["file"]
    frame = read_raw(path)
    retagged = heldout.parent / "retagged.dng"
    write_dng(retagged, dataclasses.replace(frame, baseline_exposure=frame.baseline_exposure + 1.0), overwrite=True)
    assert read_raw(retagged).exposure_gain == pytest.approx(2 * frame.exposure_gain)
    torch.testing.assert_close(evaluate.baseline_render("greyworld-auto", retagged),
                               evaluate.baseline_render("greyworld-auto", path), atol=1e-6, rtol=0)
    # the exposure-aware grey-world does follow the tag
    assert (evaluate.baseline_render("greyworld", retagged) - evaluate.baseline_render("greyworld", path)).abs().mean() > 0.02
    mosaic, pattern = read_mosaic(path, "dng")
    gain = evaluate.auto_exposure_gain(mosaic.double(), pattern)
    green = float(mosaic.double().reshape(mosaic.shape[0] // 2, 2, mosaic.shape[1] // 2, 2).permute(1, 3, 0, 2).reshape(4, -1).mean(1)[[i for i, c in enumerate(pattern) if c == "G"]].mean())
    assert gain == pytest.approx(EXPOSURE_TARGET / green, rel=1e-6)
    torch.testing.assert_close(evaluate.baseline_render("greyworld-auto", path),
                               evaluate.baseline_render("greyworld", path, gain), atol=1e-6, rtol=0)


def test_an_untrained_metadata_prior_model_renders_like_the_oracle_baseline(heldout):
    """A metadata-aware model with the classical prior starts as the oracle pipeline (measured on the 4
    clean 128x96 held-out raws: median |difference| 0.0006-0.013, ΔE2000 0.9-5.4, PSNR 23.9-36.9 dB
    against the oracle; the prior demosaics bilinearly from the re-mosaicked input, the oracle with
    Malvar from the raw, which costs detail on small, detailed crops)."""
    from isplab.engine.metrics import delta_e2000

    from isplab.workflows.isp.infer import source_for

    torch.manual_seed(0)
    model = build_isp_model("lfnet", 4, metadata=True, prior="classical").eval()
    source = source_for(model, open_pairs(heldout, "test"))
    psnrs = []
    for i in range(len(source)):
        packed, _ = source.load(i)
        with torch.no_grad():
            out = evaluate.predict(model, packed[None])
        oracle = evaluate.baseline_render("oracle", source.raws[i])[None]
        assert (out - oracle).abs()[..., 4:-4, 4:-4].median() < 0.02
        assert float(delta_e2000(out, oracle)) < 6.0
        psnrs.append(float(evaluate.psnr(out, oracle)))
    assert sum(psnrs) / len(psnrs) > 27.0
    # with the red and blue planes exchanged it is no longer the oracle's rendering
    packed, _ = source.load(0)
    with torch.no_grad():
        swapped = evaluate.predict(model, packed[None][:, [3, 1, 2, 0]])
    assert float(delta_e2000(swapped, evaluate.baseline_render("oracle", source.raws[0])[None])) > 10.0


def test_baselines_need_metadata_and_known_names(tmp_path: Path, heldout):
    root = write_mai(tmp_path / "mai", 1, 24)
    with pytest.raises(IsplabError, match="baselines need raws with white balance and colour matrix"):
        evaluate.test_isp(HalfRGB(), open_pairs(root, "test"), baselines=("oracle",))
    with pytest.raises(IsplabError, match="unknown baseline 'dcraw': expected one of oracle, greyworld, libraw, greyworld-auto"):
        evaluate.test_isp(HalfRGB(), open_pairs(heldout, "test"), baselines=("dcraw",))


def test_an_untrained_exposure_aware_blind_prior_model_renders_like_the_greyworld_baseline(heldout, tmp_path: Path):
    """``exposure=True``: a blind model that reads only the raw's exposure starts as the ``greyworld``
    pipeline (which reads the same exposure); the input follows the file's BaselineExposure."""
    import json

    from isplab.engine.metrics import delta_e2000
    from isplab.io.dng import write_dng
    from isplab.io.raw import read_raw
    from isplab.models.isp import load_isp_model, save_isp_model, uses_exposure
    from isplab.workflows.isp.infer import load_packed, source_for

    torch.manual_seed(0)
    model = build_isp_model("lfnet", 4, exposure=True, prior="classical").eval()
    assert uses_exposure(model) and not model.prior.auto_exposure
    assert not hasattr(model.prior, "log_exposure_target")
    source = source_for(model, open_pairs(heldout, "test"))
    assert source.exposure and not source.metadata
    for i in range(len(source)):
        packed, _ = source.load(i)
        with torch.no_grad():
            out = evaluate.predict(model, packed[None])
        grey = evaluate.baseline_render("greyworld", source.raws[i])[None]
        assert (out - grey).abs()[..., 4:-4, 4:-4].median() < 0.02
        assert float(delta_e2000(out, grey)) < 6.0
    # the input is the mosaic times 2 ** BaselineExposure, read from the file
    sample = json.loads((heldout / "manifest.json").read_text())["samples"][0]
    path = heldout / sample["file"]
    frame = read_raw(path)
    brighter = tmp_path / "brighter.dng"
    write_dng(brighter, dataclasses.replace(frame, baseline_exposure=frame.baseline_exposure + 1.0))
    base = load_packed(path, exposure=True)
    torch.testing.assert_close(load_packed(brighter, exposure=True), 2 * base, atol=1e-6, rtol=0)
    torch.testing.assert_close(base, load_packed(path) * frame.exposure_gain, atol=1e-6, rtol=0)
    # isp run reads the file the same way: a path gives what the prepared planes give
    from isplab.workflows.isp.infer import run_full_resolution

    with torch.no_grad():
        from_path = run_full_resolution(model, brighter, tile=10_000)
        from_planes = run_full_resolution(model, load_packed(brighter, exposure=True), tile=10_000)
        dimmer = run_full_resolution(model, load_packed(brighter), tile=10_000)
    torch.testing.assert_close(torch.as_tensor(from_path), torch.as_tensor(from_planes), atol=1e-6, rtol=0)
    assert (torch.as_tensor(from_path) - torch.as_tensor(dimmer)).abs().mean() > 0.02
    # recorded in the model file
    loaded = load_isp_model(save_isp_model(model, tmp_path / "m.pt"))
    assert loaded.isp_config["exposure"] is True and uses_exposure(loaded)
    assert not uses_exposure(build_isp_model("lfnet", 4, prior="classical"))


def test_exposure_aware_input_needs_raws_that_carry_it(tmp_path: Path):
    root = write_mai(tmp_path / "mai", 1, 24)
    with pytest.raises(IsplabError, match="exposure-aware input needs raws that carry their exposure"):
        open_pairs(root, "test", exposure=True)
