from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.io import write_image
from isplab.workflows.awb.dataset import (
    AWBSample,
    grouped_kfold,
    load_dataset,
    mired_error,
    parse_stats_name,
    read_duplicates,
    repeat_counts,
    write_duplicates,
)

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "awb-rpi"


def _sample(user: str, sensor: str, scene: str) -> AWBSample:
    return AWBSample(Path(f"{user},{sensor},{scene},5000,400,5100.png"), user, sensor, scene, 5000.0, 400.0, 5100.0)


def _write(folder: Path, name: str, shape: tuple[int, int], value: int = 30000) -> None:
    write_image(folder / name, np.full((*shape, 3), value, dtype=np.uint16))


def test_parse_stats_name():
    s = parse_stats_name("/x/david,imx219,D50,5292,744.5,5073.png")
    assert (s.user, s.sensor, s.id) == ("david", "imx219", "D50")
    assert (s.true_temp, s.lux, s.camera_temp) == (5292.0, 744.5, 5073.0)
    assert s.scene == "david,D50" and s.prefix == "david,imx219,D50"


@pytest.mark.parametrize("name", ["david,imx219,D50,5292,744.png", "a,b,c,warm,1,2.png", ",b,c,1,2,3.png"])
def test_parse_stats_name_rejects_bad_names(name):
    with pytest.raises(IsplabError, match=rf"{name}.*<user>,<sensor>,<id>,<true_temp>,<lux>,<camera_temp>\.png"):
        parse_stats_name(name)


def test_load_dataset_values_and_target(tmp_path):
    (tmp_path / "z_sub").mkdir()
    _write(tmp_path, "u,imx708,1,3000,100,3100.png", (12, 16), 65535)
    _write(tmp_path / "z_sub", "u,imx708,2,6000,900,5900.png", (12, 16), 13107)
    ds = load_dataset(tmp_path)
    assert ds.target == "vc4" and ds.images.shape == (2, 12, 16, 3) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[:, 0, 0, 0], [1.0, 0.2], atol=1e-6)
    np.testing.assert_array_equal(ds.true_temp, [3000, 6000])
    np.testing.assert_array_equal(ds.lux, [100, 900])
    np.testing.assert_array_equal(ds.camera_temp, [3100, 5900])
    assert [s.id for s in ds.subset([1]).samples] == ["2"]


def test_load_dataset_errors(tmp_path):
    with pytest.raises(IsplabError, match="contains no .png"):
        load_dataset(tmp_path)
    with pytest.raises(IsplabError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    _write(tmp_path, "u,imx708,1,3000,100,3100.png", (12, 16))
    with pytest.raises(IsplabError, match=r"shape \(12, 16, 3\), expected 32 wide x 32 high x 3 for target 'pisp'"):
        load_dataset(tmp_path, "pisp")
    with pytest.raises(IsplabError, match="unknown target 'foo'"):
        load_dataset(tmp_path, "foo")


def test_grouped_kfold_keeps_scenes_together_and_covers_all():
    rng = np.random.default_rng(1)
    samples = [
        _sample(f"user{rng.integers(3)}", f"imx{rng.integers(4)}", str(rng.integers(20))) for _ in range(120)
    ]
    splits = grouped_kfold(samples, 5, seed=3)
    assert len(splits) == 5
    tests = np.concatenate([test for _, test in splits])
    np.testing.assert_array_equal(np.sort(tests), np.arange(len(samples)))  # each sample tested exactly once
    for train, test in splits:
        assert not set(train) & set(test) and len(train) + len(test) == len(samples)
        assert not {samples[i].scene for i in train} & {samples[i].scene for i in test}
    assert grouped_kfold(samples, 5, seed=3)[0][1].tolist() == splits[0][1].tolist()  # deterministic
    with pytest.raises(IsplabError, match="cannot make 200 folds"):
        grouped_kfold(samples, 200)


def test_duplicates_parse_longest_prefix_and_write(tmp_path):
    path = tmp_path / "duplicates.txt"
    path.write_text("# comment\nu,imx708 2\n\nu,imx708,1 5  # the longer prefix wins\nv,imx219,7 3\n")
    counts = read_duplicates(path)
    assert counts == {"u,imx708": 2, "u,imx708,1": 5, "v,imx219,7": 3}
    samples = [_sample("u", "imx708", "1"), _sample("u", "imx708", "2"), _sample("w", "imx708", "1")]
    np.testing.assert_array_equal(repeat_counts(samples, counts), [5, 2, 1])
    write_duplicates(tmp_path / "out.txt", counts)
    assert read_duplicates(tmp_path / "out.txt") == counts
    path.write_text("u,imx708,1 many\n")
    with pytest.raises(IsplabError, match=r"duplicates.txt:1: expected '<user>,<sensor>,<id> <count>'"):
        read_duplicates(path)


def test_mired_error_clamps_true_temperature():
    np.testing.assert_allclose(
        mired_error([5000, 2800, 7600], [4000, 2000, 9000]), [50.0, 0.0, 0.0], atol=1e-9
    )


@pytest.mark.shared_data
def test_shared_dataset_loads():
    folder = SHARED / "vc4" / "train"
    if not folder.is_dir():
        pytest.skip("../shared/data/awb-rpi is absent")
    ds = load_dataset(folder, "vc4")
    assert len(ds) == 571 and ds.images.shape[1:] == (12, 16, 3)
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
