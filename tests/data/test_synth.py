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
        np.testing.assert_allclose(read_raw(dataset.out_dir / sample["file"]).color_matrix, sample["xyz_to_camera"], atol=1e-4)
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
    (["chart", "nosuch"], r"unknown source 'nosuch': expected one of chart, astronaut"),
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
