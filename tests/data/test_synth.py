import json

import numpy as np
import pytest
import rawpy

from isplab.data.synth import MANIFEST_CSV, SensorSpec, parse_size, synthesize_dataset
from isplab.errors import IsplabError
from isplab.io.raw import read_raw


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return synthesize_dataset(out, 3, seed=4, size=(64, 48), sensor=SensorSpec(pattern="GRBG"), progress=False)


def test_writes_dngs_that_rawpy_reads_with_the_manifest_metadata(dataset):
    manifest = json.loads(dataset.manifest.read_text())
    assert len(manifest["samples"]) == 3 and manifest["failures"] == []
    for sample in manifest["samples"]:
        with rawpy.imread(str(dataset.out_dir / sample["file"])) as raw:
            assert raw.raw_image_visible.shape == (48, 64)
            assert raw.white_level == sample["white_level"]
            assert list(raw.black_level_per_channel) == [int(v) for v in sample["black_level"]]
            desc = raw.color_desc.decode()
            assert "".join(desc[i] for i in raw.raw_pattern.ravel()) == "GRBG"
            wb = np.array(raw.camera_whitebalance[:3])
            np.testing.assert_allclose(wb / wb[1], sample["wb_gains"], rtol=1e-3)
        # rawpy leaves rgb_xyz_matrix empty for cameras outside LibRaw's tables; read_raw parses the DNG's own tags
        frame = read_raw(dataset.out_dir / sample["file"])
        np.testing.assert_allclose(frame.color_matrix, sample["xyz_to_camera"], atol=1e-4)
        # the exposure travels in the DNG (BaselineExposure, EV): a renderer needs no manifest
        assert frame.baseline_exposure == pytest.approx(np.log2(sample["brightness_gain"]), abs=1e-6)
        assert frame.exposure_gain == pytest.approx(sample["brightness_gain"], rel=1e-6)
        assert sample["baseline_exposure"] == pytest.approx(frame.baseline_exposure, abs=1e-6)
        assert (dataset.out_dir / sample["target"]).is_file()
    header = (dataset.out_dir / MANIFEST_CSV).read_text().splitlines()[0]
    assert "illuminant_cct" in header and "xyz_to_camera_8" in header


def test_same_seed_same_files(dataset, tmp_path):
    again = synthesize_dataset(tmp_path, 2, seed=4, size=(64, 48), sensor=SensorSpec(pattern="GRBG"), progress=False)
    for name in ("synth_00000.dng", "synth_00001.dng"):
        with rawpy.imread(str(again.out_dir / name)) as a, rawpy.imread(str(dataset.out_dir / name)) as b:
            np.testing.assert_array_equal(a.raw_image_visible, b.raw_image_visible)


def test_refuses_to_overwrite_an_existing_dataset(dataset):
    before = {p.name: p.stat().st_mtime_ns for p in dataset.out_dir.iterdir()}
    with pytest.raises(IsplabError, match=r"dataset folder .* already holds manifest.csv, manifest.json, synth_00000.dng.*--overwrite"):
        synthesize_dataset(dataset.out_dir, 1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in dataset.out_dir.iterdir()} == before


def test_overwrite_replaces_the_previous_dataset_and_keeps_other_files(tmp_path):
    synthesize_dataset(tmp_path, 3, size=(32, 32), progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    synthesize_dataset(tmp_path, 1, size=(32, 32), seed=5, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.csv", "manifest.json", "notes.txt", "synth_00000.dng", "synth_00000_target.png"
    ]


def test_a_half_written_dataset_also_counts_as_one(tmp_path):
    (tmp_path / "synth_00003.dng").write_bytes(b"left by an interrupted run")
    with pytest.raises(IsplabError, match="already holds synth_00003.dng"):
        synthesize_dataset(tmp_path, 1, size=(32, 32), progress=False)


@pytest.mark.parametrize("sources, message", [
    (["chart", "nosuch"], r"unknown source 'nosuch': expected one of training, heldout, deadleaves, chart"),
    (["missing.png"], r"unknown source 'missing.png'"),
])
def test_bad_sources_are_refused_before_anything_is_written(tmp_path, sources, message):
    with pytest.raises(IsplabError, match=message):
        synthesize_dataset(tmp_path / "out", 2, size=(32, 32), sources=sources, progress=False)
    assert not (tmp_path / "out").exists()
    # ...so the same folder works as soon as the sources are right.
    assert len(synthesize_dataset(tmp_path / "out", 1, size=(32, 32), sources=["chart"], progress=False).samples) == 1


def test_a_failing_sample_is_reported_and_the_rest_written(tmp_path):
    import imageio.v3 as iio

    grey = tmp_path / "grey.png"
    iio.imwrite(grey, np.zeros((40, 40), np.uint8))  # exists, but is not an RGB image
    result = synthesize_dataset(tmp_path / "out", 3, size=(32, 32), sources=["chart", str(grey)], progress=False)
    assert [s["index"] for s in result.samples] == [0, 2]
    assert [f["index"] for f in result.failures] == [1]
    assert "grey.png" in result.failures[0]["error"] and "expected an RGB image" in result.failures[0]["error"]
    assert json.loads(result.manifest.read_text())["failures"] == result.failures


@pytest.mark.parametrize("text", ["512", "0x10", "33x32", "axb"])
def test_bad_size_is_explained(text):
    with pytest.raises(IsplabError, match="bad size"):
        parse_size(text)


def test_generated_scenes_get_training_cameras_and_photographs_held_out_ones(tmp_path):
    from isplab.data.cameras import TEST_CAMERAS, camera_split

    train = synthesize_dataset(tmp_path / "train", 3, size=(64, 48), sources=["training"], progress=False)
    heldout = synthesize_dataset(tmp_path / "test", 3, size=(64, 48), sources=["heldout"], progress=False)
    legacy = synthesize_dataset(tmp_path / "legacy", 1, size=(64, 48), progress=False)
    assert [s["source"] for s in train.samples] == ["deadleaves", "chart", "deadleaves"]
    assert [s["source"] for s in heldout.samples] == ["astronaut", "chelsea", "coffee"]
    train_cameras = set(camera_split("train"))
    for sample in train.samples:
        first, second = (part.rsplit(" x ", 1)[0] for part in sample["camera"].split(" + "))
        assert {first, second} <= train_cameras
    assert all(s["camera"] in TEST_CAMERAS for s in heldout.samples)
    assert legacy.samples[0]["camera"] == "legacy mix"
    settings = json.loads(heldout.manifest.read_text())["settings"]
    assert settings["camera_split"] == "test" and settings["sources"][:2] == ["astronaut", "chelsea"]
    # the DNG records the held-out camera's own matrix and the sample's ISO
    sample = heldout.samples[0]
    raw = read_raw(heldout.out_dir / sample["file"])
    np.testing.assert_allclose(raw.color_matrix, sample["xyz_to_camera"], atol=1e-4)
    assert raw.iso == pytest.approx(round(sample["iso"]))


def test_real_camera_samples_render_back_to_their_target():
    """render() with the sample's metadata reproduces the (clipping-aware) target of a smooth scene."""
    import torch

    from isplab.data.synth import synthesize_sample
    from isplab.isp.pipeline import render

    sensor = SensorSpec()
    for index in range(3):
        mosaic, target, params, _, _ = synthesize_sample(index, 0, (96, 64), sensor, ("gradient",), noise=False,
                                                         camera_split="test")
        raw = (torch.from_numpy(mosaic.astype(np.float64)) - sensor.black_level) / (sensor.white_level - sensor.black_level)
        gains = torch.from_numpy(params.wb_gains * params.brightness_gain)
        out = render(raw[None, None], sensor.pattern, gains, torch.from_numpy(params.ccm))[0].permute(1, 2, 0).numpy()
        assert np.abs(out - target)[4:-4, 4:-4].mean() < 2e-3, params.camera


def test_cli_synth_defaults_to_generated_scenes_and_offers_deadleaves_and_heldout(tmp_path):
    from typer.testing import CliRunner

    from isplab.cli import app
    from isplab.data.cameras import TEST_CAMERAS
    from isplab.data.sources import TRAINING_SOURCES

    runner = CliRunner()
    for name, extra in (("default", []), ("leaves", ["--source", "deadleaves"]), ("heldout", ["--source", "heldout"])):
        result = runner.invoke(app, ["data", "synth", str(tmp_path / name), "-n", "2", "--size", "64x48", *extra])
        assert result.exit_code == 0, result.output
    load = lambda name: json.loads((tmp_path / name / "manifest.json").read_text())
    assert [s["source"] for s in load("default")["samples"]] == list(TRAINING_SOURCES[:2])
    assert load("default")["settings"]["camera_split"] == "train"
    assert [s["source"] for s in load("leaves")["samples"]] == ["deadleaves", "deadleaves"]
    assert all(s["camera"] in TEST_CAMERAS for s in load("heldout")["samples"])
    help_text = runner.invoke(app, ["data", "synth", "--help"]).output
    assert "heldout" in help_text and "deadleaves" in help_text
