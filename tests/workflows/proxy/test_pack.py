"""`isplab proxy pack`: float16 shards that `proxy train`/`test` read like the original dataset,
and the manifest checks of a packed dataset (builtin backend: runs everywhere)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from isplab.cli import app
from isplab.errors import IsplabError
from isplab.workflows.proxy.dataset import DATASET_JSON, load_dataset
from isplab.workflows.proxy.evaluate import load_proxy
from isplab.workflows.proxy.generate import GenerateOptions, generate
from isplab.workflows.proxy.pack import pack_dataset
from isplab.workflows.proxy.train import ProxyTrainConfig, cosine_factor, train_proxy


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pack") / "ds"
    threads = torch.get_num_threads()
    generate(GenerateOptions(block="exposure", output=out, count=12, synth_images=4, backend="builtin", size=(64, 48),
                             workers=1, progress=False, params=["exposure=-2:3"]))  # fmt: skip
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def packed(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("pack") / "packed"
    result = CliRunner().invoke(app, ["proxy", "pack", str(dataset), str(out), "--shard-size", "5"])
    assert result.exit_code == 0, result.output
    assert "packed 12 samples (16 images, float16) into 4 shard(s)" in result.output
    return out


def test_round_trip_within_float16_precision(dataset, packed):
    a, b = load_dataset(dataset), load_dataset(packed)
    assert b.packed is not None and a.packed is None
    assert [s["id"] for s in b.samples] == [s["id"] for s in a.samples]
    assert [s["params"] for s in b.samples] == [s["params"] for s in a.samples]
    assert b.block == "exposure" and b.varied == a.varied
    assert sorted(p.name for p in (packed / "pack").iterdir()) == [f"shard-0000{i}.npz" for i in range(4)]
    assert not (packed / "inputs").exists() and not (packed / "outputs").exists()
    biggest = 0.0
    for s in a.samples:
        for key in ("input", "output"):
            x, y = a.read(s[key]), b.read(s[key])
            assert y.dtype == torch.float32 and y.shape == x.shape
            # float16 rounds to 11 significant bits: relative error at most 2^-11 (normal numbers)
            tolerance = 2.0**-11 * x.abs() + 2.0**-24
            assert ((y - x).abs() <= tolerance).all()
            assert torch.equal(y, x.half().float())
            biggest = max(biggest, float(x.max()))
    assert biggest > 1.0  # +3 EV: values above 1 survive unclipped
    csv = (packed / "manifest.csv").read_text().splitlines()
    assert len(csv) == 13 and csv[0].startswith("id,index,image,split,input,output")


def test_packed_dataset_trains_like_the_original(dataset, packed, tmp_path, refused):
    """The same run on the original and on the packed dataset: the same losses to float16 precision."""
    config = ProxyTrainConfig(width=4, depth=1, patch=32, batch_size=4, lr=2e-3, iters=6, eval_every=3, patches_per_epoch=12,
                              device="cpu", holdout_params=0.0, head="global", schedule="cosine")  # fmt: skip
    train_proxy("exposure", dataset, tmp_path / "a", config, progress=False, report=False)
    train_proxy("exposure", packed, tmp_path / "b", config, progress=False)
    a, b = load_proxy(tmp_path / "a" / "model.pt", "exposure"), load_proxy(tmp_path / "b" / "model.pt", "exposure")
    assert b.head_kind == "global"
    x, unit = torch.rand(1, 3, 16, 16), torch.tensor([[0.7]])
    with torch.no_grad():
        torch.testing.assert_close(a(x, unit), b(x, unit), atol=2e-3, rtol=2e-3)
    assert (tmp_path / "b" / "report.html").is_file()
    # regress and sweep need the DNGs the pack leaves behind: refused, naming the original folder
    message = refused("proxy", "regress", "exposure", "-m", str(tmp_path / "b" / "model.pt"), "--sample", "3", "--dataset", str(packed))
    assert "is a packed dataset" in message and str(dataset.resolve()) in message
    result = CliRunner().invoke(app, ["proxy", "test", str(packed), "-m", str(tmp_path / "b" / "model.pt"), "-o", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "held-out images:" in result.output


def test_cosine_schedule_factor():
    assert cosine_factor(0, 100) == 1.0
    assert cosine_factor(50, 100) == pytest.approx(0.5)
    assert cosine_factor(100, 100) == pytest.approx(0.0) and cosine_factor(150, 100) == pytest.approx(0.0)
    assert cosine_factor(25, 100) == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)))


def _copy(packed, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(packed, target)
    return target, json.loads((target / DATASET_JSON).read_text())


def test_manifest_mismatches_are_refused(packed, tmp_path, refused):
    target, info = _copy(packed, tmp_path)
    first = load_dataset(packed).samples[0]
    del info["packed"]["files"][first["output"]]
    (target / DATASET_JSON).write_text(json.dumps(info))
    with pytest.raises(IsplabError, match=f"lists {first['output']} .* but the pack does not hold it"):
        load_dataset(target)

    target, info = _copy(packed, tmp_path / "2")
    info["packed"]["files"][first["input"]]["shape"] = [10, 10, 3]
    (target / DATASET_JSON).write_text(json.dumps(info))
    with pytest.raises(IsplabError, match=r"is packed as \[10, 10, 3\] but the manifest says \[48, 64, 3\]"):
        load_dataset(target)

    target, _ = _copy(packed, tmp_path / "3")
    (target / "pack" / "shard-00002.npz").unlink()
    with pytest.raises(IsplabError, match="pack shard pack/shard-00002.npz does not exist"):
        load_dataset(target)

    target, _ = _copy(packed, tmp_path / "4")
    (target / "pack" / "shard-00000.npz").write_bytes(b"not an archive")
    with pytest.raises(IsplabError, match="shard-00000.npz.*expected a proxy dataset pack shard"):
        load_dataset(target).read(first["input"])


def test_pack_refusals(dataset, packed, tmp_path, refused):
    before = sorted(p.name for p in (packed / "pack").iterdir())
    assert "already holds" in refused("proxy", "pack", str(dataset), str(packed))
    assert sorted(p.name for p in (packed / "pack").iterdir()) == before  # nothing lost
    assert "is already a packed dataset" in refused("proxy", "pack", str(packed), str(tmp_path / "again"))
    assert "is the dataset being packed" in refused("proxy", "pack", str(dataset), str(dataset))
    assert "not a proxy dataset" in refused("proxy", "pack", str(tmp_path / "missing"), str(tmp_path / "x"))
    assert "--shard-size must be at least 1" in refused("proxy", "pack", str(dataset), str(tmp_path / "y"), "--shard-size", "0")
    # generate does not render into a packed folder
    assert "holds a packed dataset" in refused("proxy", "generate", "exposure", str(packed), "-n", "12", "--backend", "builtin",
                                               "--synth-images", "4", "--size", "64x48", "-p", "exposure=-2:3", "--workers", "1")  # fmt: skip
    # --overwrite replaces a packed folder
    again = pack_dataset(dataset, packed, shard_size=16, overwrite=True)
    assert again.shards == 1 and sorted(p.name for p in (packed / "pack").iterdir()) == ["shard-00000.npz"]
    pack_dataset(dataset, packed, shard_size=5, overwrite=True)  # as the module fixture made it
