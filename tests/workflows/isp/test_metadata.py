"""Metadata-aware learned ISP (input colour-corrected with the raw's own metadata) and the cached data path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from isplab.cli import app
from isplab.data.cameras import camera_split, xyz_to_camera
from isplab.data.synth import synthesize_dataset
from isplab.errors import IsplabError
from isplab.io.dng import write_dng
from isplab.io.image import read_image, to_uint8
from isplab.io.raw import RawImage
from isplab.isp.color import camera_to_srgb_matrix
from isplab.models.isp import build_isp_model, load_isp_model, uses_metadata
from isplab.workflows.isp.data import PatchDataset, apply_colour, colour_transform, open_pairs
from isplab.workflows.isp.infer import load_packed, process_files, run_full_resolution, source_for
from isplab.workflows.isp.train import ISPTrainConfig, train_isp

from .test_data import write_challenge_folder

CAMERA = camera_split("test")[0]
#: camera-RGB response to a neutral under a warm (tungsten-like) illuminant, G = 1
WARM_NEUTRAL = np.array([0.92, 1.0, 0.31])


def test_a_grey_patch_under_a_known_illuminant_becomes_neutral():
    ccm = camera_to_srgb_matrix(xyz_to_camera(CAMERA))
    transform = colour_transform(1 / WARM_NEUTRAL, ccm, exposure_gain=2.0)
    np.testing.assert_allclose(transform.numpy(), 2.0 * ccm.numpy() / WARM_NEUTRAL[None, :], rtol=1e-6)
    # A flat grey card in a GRBG raw: each site is the grey level times the camera's response there.
    mosaic = torch.empty(8, 12)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = 0.3, 0.3 * WARM_NEUTRAL[0]  # G R
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = 0.3 * WARM_NEUTRAL[2], 0.3  # B G
    np.testing.assert_allclose(apply_colour(mosaic, "GRBG", transform).numpy(), 0.6, rtol=1e-5)  # neutral, exposed x2
    # A coloured card: each packed plane holds the corrected colour at its own site of an RGGB layout.
    colour = np.array([0.5, 0.2, 0.1])  # camera RGB
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = colour[1], colour[0]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = colour[2], colour[1]
    corrected = transform.double().numpy() @ colour
    planes = apply_colour(mosaic[None], "GRBG", transform)[0]
    assert planes.shape == (4, 4, 6)
    np.testing.assert_allclose(planes[:, 1:-1, 1:-1].mean(dim=(1, 2)).numpy(),
                               [corrected[0], corrected[1], corrected[1], corrected[2]], rtol=1e-4)
    with pytest.raises(IsplabError, match=r"expected \(3,\) white-balance gains and a \(3, 3\) colour matrix"):
        colour_transform([1, 2], ccm)
    with pytest.raises(IsplabError, match="exposure_gain must be a positive number"):
        colour_transform(1 / WARM_NEUTRAL, ccm, exposure_gain=0.0)


def grey_dng(path: Path, level: float = 0.25, exposure: float = 0.0) -> Path:
    """A flat grey card shot under WARM_NEUTRAL by CAMERA, as a DNG with that metadata."""
    black, white = 512, 16383
    mosaic = np.empty((32, 48))
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = level * WARM_NEUTRAL[0], level  # RGGB
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = level, level * WARM_NEUTRAL[2]
    raw = RawImage(mosaic=np.round(black + mosaic * (white - black)).astype(np.uint16), cfa_pattern="RGGB",
                   black_level=[black] * 4, white_level=white, as_shot_neutral=WARM_NEUTRAL,
                   color_matrix=xyz_to_camera(CAMERA), baseline_exposure=exposure)
    return write_dng(path, raw)


def test_metadata_input_of_a_dng_is_neutral_for_a_grey_card(tmp_path: Path):
    path = grey_dng(tmp_path / "grey.dng")
    blind = load_packed(path)
    aware = load_packed(path, metadata=True)
    assert blind[3].mean() == pytest.approx(0.25 * WARM_NEUTRAL[2], abs=1e-3)  # blue is dim in the raw
    np.testing.assert_allclose(aware.numpy(), 0.25, atol=1e-3)  # and equal to the others after colour correction
    exposed = grey_dng(tmp_path / "exposed.dng", exposure=-1.0)  # BaselineExposure -1 EV: half as bright
    np.testing.assert_allclose(load_packed(exposed, metadata=True).numpy(), 0.125, atol=1e-3)
    torch.testing.assert_close(load_packed(exposed), blind)  # blind input ignores the metadata


def test_metadata_is_refused_for_raws_without_metadata(tmp_path: Path):
    write_challenge_folder(tmp_path / "mai", "mediatek_raw", "fujifilm", {"train": 2, "val": 1})
    with pytest.raises(IsplabError, match="metadata-aware input needs raws with white balance and colour matrix"):
        open_pairs(tmp_path / "mai", "train", metadata=True)
    config = ISPTrainConfig(arch="lfnet", num_maps_base=4, patch=32, batch_size=2, iters=1, eval_every=1,
                            patches_per_epoch=2, metadata=True, device="cpu")
    with pytest.raises(IsplabError, match=r"^metadata-aware input needs raws .* holds mai raws without metadata$"):
        train_isp(tmp_path / "mai", tmp_path / "m", config, progress=False)
    assert not (tmp_path / "m" / "model.pt").exists()
    result = CliRunner().invoke(app, ["isp", "train", str(tmp_path / "mai"), str(tmp_path / "m2"), "--metadata",
                                      "--device", "cpu", "--no-progress"])
    assert isinstance(result.exception, IsplabError) and "without metadata" in str(result.exception)
    model = build_isp_model("lfnet", 4, metadata=True)
    with pytest.raises(IsplabError, match="metadata-aware .* not 'challenge' raws"):
        process_files([tmp_path / "mai/train/mediatek_raw/0.png"], model, tmp_path / "out", packing="challenge")
    with pytest.raises(IsplabError, match="without metadata"):
        source_for(model, open_pairs(tmp_path / "mai", "val"))


def test_a_metadata_model_trains_end_to_end_and_every_inference_path_prepares_the_same_input(tmp_path: Path):
    synthesize_dataset(tmp_path / "syn/train", 2, size=(80, 64), progress=False, sources=("deadleaves",),
                       camera_split="train")
    synthesize_dataset(tmp_path / "syn/val", 1, seed=1, size=(64, 64), progress=False, sources=("deadleaves",),
                       camera_split="val")
    config = ISPTrainConfig(arch="lfnet", num_maps_base=4, arch_options={"num_blocks": 1}, patch=32, batch_size=2,
                            iters=2, eval_every=2, patches_per_epoch=2, device="cpu", metadata=True, workers=1)
    train_isp(tmp_path / "syn", tmp_path / "m", config, progress=False)
    model = load_isp_model(tmp_path / "m/model.pt")
    assert uses_metadata(model) and model.isp_config["metadata"] is True
    assert not uses_metadata(build_isp_model("lfnet", 4)) and "metadata" not in build_isp_model("lfnet", 4).isp_config

    raw = open_pairs(tmp_path / "syn", "val").raws[0]
    blind_source = open_pairs(tmp_path / "syn", "val")
    source = source_for(model, blind_source)
    assert source.metadata and not blind_source.metadata
    prepared = load_packed(raw, metadata=True)
    torch.testing.assert_close(source.load(0)[0], prepared)  # isp test's input == isp run's input
    assert not torch.allclose(blind_source.load(0)[0], prepared)
    with torch.no_grad():
        expected = model(prepared[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(run_full_resolution(model, raw, tile=64, overlap=0), expected, atol=1e-5)

    run = CliRunner().invoke(app, ["isp", "run", str(raw), "-m", str(tmp_path / "m/model.pt"), "-o", str(tmp_path / "out"),
                                   "--device", "cpu"])
    assert run.exit_code == 0, run.output
    written = read_image(tmp_path / "out" / f"{raw.stem}.png")
    assert np.abs(written.astype(int) - to_uint8(expected).astype(int)).max() <= 1

    result = CliRunner().invoke(app, ["isp", "test", str(tmp_path / "syn"), "--split", "val", "-m",
                                      str(tmp_path / "m/model.pt"), "--device", "cpu", "--no-baselines"])
    assert result.exit_code == 0, result.output
    assert "psnr_mean (per-image) dB" in result.output


def test_the_cache_decodes_each_pair_once_within_its_bound(tmp_path: Path):
    synthesize_dataset(tmp_path / "syn", 3, size=(64, 48), progress=False)
    plain = open_pairs(tmp_path / "syn")
    cached = open_pairs(tmp_path / "syn", cache_mb=1.0, metadata=True)
    assert cached.preload() == 3
    reference = [PatchDataset(open_pairs(tmp_path / "syn", metadata=True), 32, 6, seed=3)[i] for i in range(6)]
    for raw in plain.raws:
        raw.unlink()  # served from memory from now on
    patches = PatchDataset(cached, 32, 6, seed=3)
    for (packed, target), (ref_packed, ref_target) in zip((patches[i] for i in range(6)), reference):
        torch.testing.assert_close(packed, ref_packed)
        torch.testing.assert_close(target, ref_target)
    # One pair is 64*48*4 bytes of mosaic + 64*48*3*2 of 16-bit target = 30 KiB: a 0.05 MB bound holds one.
    synthesize_dataset(tmp_path / "syn2", 3, size=(64, 48), progress=False)
    assert open_pairs(tmp_path / "syn2", cache_mb=0.05).preload() == 1
    assert open_pairs(tmp_path / "syn2", cache_mb=0).preload() == 0
    with pytest.raises(IsplabError, match="cache_mb must be >= 0"):
        open_pairs(tmp_path / "syn2", cache_mb=-1)


def test_precision_is_checked_and_passed_to_the_trainer(tmp_path: Path):
    with pytest.raises(IsplabError, match="unknown precision 'fp8'"):
        train_isp(tmp_path, tmp_path / "m", ISPTrainConfig(precision="fp8"))
    synthesize_dataset(tmp_path / "syn/train", 1, size=(64, 64), progress=False)
    synthesize_dataset(tmp_path / "syn/val", 1, seed=1, size=(64, 64), progress=False)
    config = ISPTrainConfig(arch="lfnet", num_maps_base=4, arch_options={"num_blocks": 1}, patch=32, batch_size=2,
                            iters=1, eval_every=1, patches_per_epoch=2, device="cpu", precision="bf16-mixed",
                            channels_last=True)
    train_isp(tmp_path / "syn", tmp_path / "m", config, progress=False)
    import json

    saved = json.loads((tmp_path / "m/config.json").read_text())
    assert saved["precision"] == "bf16-mixed" and saved["channels_last"] is True
    assert load_isp_model(tmp_path / "m/model.pt").isp_config["arch"] == "lfnet"


def test_a_prior_model_trains_from_the_cli_and_is_refused_for_challenge_raws(tmp_path: Path):
    """`isp train --prior classical` records the prior; the loaded model starts from the classical render."""
    synthesize_dataset(tmp_path / "syn/train", 2, size=(64, 64), progress=False, sources=("deadleaves",),
                       camera_split="train")
    synthesize_dataset(tmp_path / "syn/val", 1, seed=1, size=(64, 64), progress=False, sources=("deadleaves",),
                       camera_split="val")
    result = CliRunner().invoke(app, ["isp", "train", str(tmp_path / "syn"), str(tmp_path / "m"), "--arch", "lfnet",
                                      "--num-maps-base", "4", "--patch", "32", "--batch-size", "2", "--iters", "2",
                                      "--eval-every", "2", "--train-size", "2", "--metadata", "--prior", "classical",
                                      "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    model = load_isp_model(tmp_path / "m/model.pt")
    assert model.isp_config["prior"] == "classical" and uses_metadata(model)
    assert (tmp_path / "m/config.json").read_text().count('"prior": "classical"') == 1

    write_challenge_folder(tmp_path / "mai", "mediatek_raw", "fujifilm", {"train": 2, "val": 1})
    config = ISPTrainConfig(arch="lfnet", num_maps_base=4, patch=32, batch_size=2, iters=1, eval_every=1,
                            patches_per_epoch=2, prior="classical", device="cpu")
    with pytest.raises(IsplabError, match=r"--prior classical renders packed R, Gr, Gb, B planes of DNG raws; .* mai raws"):
        train_isp(tmp_path / "mai", tmp_path / "m2", config, progress=False)
    with pytest.raises(IsplabError, match="unknown prior 'smart'"):
        train_isp(tmp_path / "syn", tmp_path / "m3", ISPTrainConfig(prior="smart"), progress=False)
    assert not (tmp_path / "m2" / "model.pt").exists()
