"""`isplab proxy generate`: sampling, split by image, resume, shards, output safety, bad input,
and the darktable backend end to end (real darktable-cli renders)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from isplab.cli import app
from isplab.errors import IsplabError
from isplab.io.image import read_image
from isplab.workflows.proxy.dataset import load_dataset
from isplab.workflows.proxy.generate import GenerateOptions, generate, latin_hypercube, parse_shard
from isplab.workflows.proxy.xmp import read_history

FAST = dict(backend="builtin", size=(64, 48), workers=1, progress=False)


def _opts(out, **kw):
    return GenerateOptions(**{"block": "exposure", "output": out, "count": 8, "synth_images": 4, **FAST, **kw})


def test_latin_hypercube_fills_every_stratum_once():
    u = latin_hypercube(10, 3, np.random.default_rng(0))
    assert u.shape == (10, 3) and ((u >= 0) & (u < 1)).all()
    for column in u.T:
        assert sorted(np.floor(column * 10).astype(int)) == list(range(10))
    assert np.array_equal(u, latin_hypercube(10, 3, np.random.default_rng(0)))


def test_parse_shard():
    assert parse_shard(None) == (1, 1) and parse_shard("3/8") == (3, 8)
    for bad in ("0/4", "5/4", "1-4", "a/b"):
        with pytest.raises(IsplabError, match=r"bad --shard .*: expected I/N with 1 <= I <= N"):
            parse_shard(bad)


@pytest.fixture(scope="module")
def builtin_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "ds"
    result = generate(_opts(out, params=["exposure=-2:2,black=0.01"]))
    return out, result


def test_builtin_dataset_samples_ranges_and_split_by_image(builtin_dataset):
    out, result = builtin_dataset
    assert len(result.rendered) == 8 and result.skipped == 0 and not result.failures
    ds = load_dataset(out)
    assert ds.block == "exposure" and ds.varied == ["exposure"] and len(ds.samples) == 8
    ev = np.array([s["params"]["exposure"] for s in ds.samples])
    assert sorted(np.floor((ev + 2) / 4 * 8).astype(int)) == list(range(8))  # Latin hypercube over [-2, 2]
    assert all(s["params"]["black"] == pytest.approx(0.01) for s in ds.samples)  # fixed by -p
    assert [s["unit"]["exposure"] for s in ds.samples] == pytest.approx(list((ev + 2) / 4), abs=1e-6)
    images = {im["id"]: im["split"] for im in ds.info["images"]}
    assert len(images) == 4 and sorted(images.values()).count("val") == 1
    assert all(s["split"] == images[s["image"]] for s in ds.samples)  # one split per image, never per sample
    assert [s["image"] for s in ds.samples] == [f"synth_{i % 4:05d}" for i in range(8)]
    assert {s["image"] for s in ds.split("val")}.isdisjoint({s["image"] for s in ds.split("train")})


def test_builtin_outputs_are_the_block_applied_to_the_inputs(builtin_dataset):
    out, _ = builtin_dataset
    for s in load_dataset(out).samples[:3]:
        x, y = read_image(out / s["input"]), read_image(out / s["output"])
        assert x.shape == y.shape == (48, 64, 3) and x.dtype == np.float32
        ev, black = s["params"]["exposure"], s["params"]["black"]
        np.testing.assert_allclose(y, (x - black) / (2.0**-ev - black), rtol=1e-5, atol=1e-6)
        assert s["backend"] == "builtin" and s["darktable_version"] is None and s["render_seconds"] > 0


def test_manifest_json_and_csv_agree(builtin_dataset):
    out, _ = builtin_dataset
    document = json.loads((out / "manifest.json").read_text())
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[0].startswith("id,index,image,split,input,output,xmp,param.exposure,param.black,backend")
    assert len(rows) == 9 and document["complete"] and len(document["samples"]) == 8
    first = rows[1].split(",")
    assert first[:4] == ["000000", "0", "synth_00000", document["samples"][0]["split"]]
    assert float(first[7]) == pytest.approx(document["samples"][0]["params"]["exposure"])


def test_rerun_completes_a_partial_dataset_and_a_different_command_is_refused(tmp_path, refused):
    out = tmp_path / "ds"
    first = generate(_opts(out, count=6))
    before = {p.name: p.stat().st_mtime_ns for p in (out / "outputs").iterdir()}
    (out / "outputs" / "000004.json").unlink()  # as if the run had been killed before sample 4 finished
    (out / "outputs" / "000004.tif").unlink()
    again = generate(_opts(out, count=6))
    assert [r["id"] for r in again.rendered] == ["000004"] and again.skipped == 5
    after = {p.name: p.stat().st_mtime_ns for p in (out / "outputs").iterdir()}
    assert all(after[name] == t for name, t in before.items() if not name.startswith("000004"))  # nothing redone
    assert [s["params"] for s in load_dataset(out).samples] == [r["params"] for r in first.rendered]

    message = refused("proxy", "generate", "exposure", str(out), "-n", "7", "--backend", "builtin", "--no-progress")
    assert message.startswith(f"dataset folder {out} already holds") and "pass --overwrite" in message
    assert sorted(after) == sorted(p.name for p in (out / "outputs").iterdir())  # nothing lost
    replaced = generate(_opts(out, count=3, overwrite=True))
    assert len(replaced.rendered) == 3 and len(list((out / "outputs").glob("*.tif"))) == 3


def test_shards_split_the_work_and_load_as_one_dataset(tmp_path, builtin_dataset):
    out = tmp_path / "ds"
    kw = dict(params=["exposure=-2:2,black=0.01"])
    a = generate(_opts(out, shard=(1, 3), **kw))
    b = generate(_opts(out, shard=(2, 3), **kw))
    assert [r["index"] for r in a.rendered] == [0, 3, 6] and [r["index"] for r in b.rendered] == [1, 4, 7]
    assert sorted(p.name for p in out.glob("manifest*.json")) == ["manifest-shard-1-of-3.json", "manifest-shard-2-of-3.json"]
    assert len(load_dataset(out).samples) == 6
    generate(_opts(out, shard=(3, 3), **kw))
    merged = load_dataset(out)
    whole = load_dataset(builtin_dataset[0])  # the same command without shards
    assert [s["params"] for s in merged.samples] == [s["params"] for s in whole.samples]
    assert [s["split"] for s in merged.samples] == [s["split"] for s in whole.samples]


def test_a_manifest_that_does_not_match_its_files_is_refused(tmp_path, refused):
    out = tmp_path / "ds"
    generate(_opts(out, count=2))
    (out / "outputs" / "000001.tif").unlink()
    with pytest.raises(IsplabError, match=r"the manifest lists outputs/000001.tif \(sample 000001\) but the file does not exist"):
        load_dataset(out)
    with pytest.raises(IsplabError, match=r"is not a proxy dataset: dataset.json not found"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["filmic"], r"unknown block 'filmic': expected one of exposure, temperature, colorbalancergb, sharpen, hazeremoval, lowpass"),
        (["exposure", "-p", "gain"], r"unknown parameter 'gain' of block exposure: expected one of exposure, black"),
        (["exposure", "-p", "exposure=-30:1"], r"exposure.exposure: -30 is outside darktable's range \[-18, 18\] EV"),
        (["exposure", "-n", "0"], r"-n must be at least 1, got 0"),
        (["exposure", "--shard", "4/3"], r"bad --shard '4/3'"),
        (["exposure", "--backend", "gimp"], r"unknown --backend 'gimp': expected one of darktable, builtin"),
        (["exposure", "--size", "100x75"], r"bad size '100x75': width and height must be positive and even"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, args, message, refused):
    out = tmp_path / "ds"
    block, rest = args[0], args[1:]
    assert re.search(message, refused("proxy", "generate", block, str(out), "--backend", "builtin", *rest))
    assert not out.exists()


def test_a_corrupt_dng_is_refused_naming_it(tmp_path, texture_dng, refused):
    images = tmp_path / "raws"
    images.mkdir()
    shutil.copy(texture_dng, images / "good.dng")
    (images / "broken.dng").write_bytes(Path(texture_dng).read_bytes()[:2000])
    message = refused("proxy", "generate", "exposure", str(tmp_path / "ds"), "--images", str(images), "--backend", "builtin")
    assert "broken.dng" in message and "truncated or corrupt" in message
    assert not (tmp_path / "ds").exists()


def test_missing_and_unsupported_darktable_are_one_line_errors(tmp_path, isplab_cli, refused):
    result = isplab_cli("proxy", "generate", "exposure", str(tmp_path / "ds"), "--darktable-cli", str(tmp_path / "none"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--backend builtin" in lines[0]
    fake = tmp_path / "darktable-cli"
    fake.write_text("#!/bin/sh\necho 'this is darktable-cli 4.6.0'\n")
    os.chmod(fake, 0o755)
    message = refused("proxy", "generate", "exposure", str(tmp_path / "ds"), "--darktable-cli", str(fake))
    assert "darktable 4.6.0" in message and "not supported" in message
    assert not (tmp_path / "ds").exists()


def test_darktable_backend_end_to_end(darktable, tmp_path):
    out = tmp_path / "ds"
    result = generate(
        GenerateOptions(block="exposure", output=out, count=2, synth_images=1, size=(128, 96), workers=2,
                        params=["exposure=-1:1"], progress=False)  # fmt: skip
    )
    assert not result.failures and len(result.rendered) == 2
    ds = load_dataset(out)
    assert ds.info["darktable"]["version"] == darktable.version and ds.info["modversion"] == 6
    for s in ds.samples:
        assert s["darktable_version"] == darktable.version and s["render_seconds"] > 0.1
        x, y = read_image(out / s["input"]), read_image(out / s["output"])
        lit = np.abs(x) > 0.01
        assert np.median(y[lit] / x[lit]) == pytest.approx(2.0 ** s["params"]["exposure"], rel=1e-3)
        history = read_history(out / s["xmp"])
        assert [(i.operation, i.enabled) for i in history] == [("temperature", True), ("highlights", False), ("exposure", True)]
    assert [i.enabled for i in read_history(out / "xmp" / "synth_00000.xmp")][-1] is False  # the input: block off


def test_a_render_darktable_rejects_is_reported_and_skipped(darktable, tmp_path):
    """A darktable-cli that gets sample 000001's XMP with a wrong modversion: darktable ignores
    the item and says so; that sample fails with darktable's message, the others are kept."""
    wrapper = tmp_path / "darktable-cli"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && exec {darktable.cli} --version\n'
        'case "$2" in *000001.xmp) sed \'s/modversion="6"/modversion="99"/\' "$2" > "$2.bad"; '
        f'xmp="$2.bad";; *) xmp="$2";; esac\nin="$1"; shift 2\nexec {darktable.cli} "$in" "$xmp" "$@"\n'
    )
    os.chmod(wrapper, 0o755)
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        app,
        ["proxy", "generate", "exposure", str(out), "-n", "2", "--synth-images", "1", "--size", "128x96", "--workers", "1",
         "--darktable-cli", str(wrapper), "--no-progress"],  # fmt: skip
    )
    assert result.exit_code == 1
    assert "failed sample 000001 (synth_00000): darktable-cli exit 0" in result.output
    assert "version mismatch: history is 99, darktable is 6" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["id"] for s in manifest["samples"]] == ["000000"] and not manifest["complete"]
    assert manifest["failures"][0]["id"] == "000001" and "version mismatch" in manifest["failures"][0]["error"]
    assert not (out / "outputs" / "000001.tif").exists()


def test_render_workers_do_not_import_torch():
    """A spawned darktable worker imports the worker module and the darktable backend only: torch
    (about 0.7 GB resident per worker) stays unloaded; the builtin backend loads it when it renders."""
    import subprocess
    import sys

    code = ("import sys, isplab.workflows.proxy.render_worker as w, isplab.workflows.proxy.darktable; "
            "w._worker_init('.', 1, 'darktable'); print('torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]
    from isplab.workflows.proxy import generate as generate_module
    from isplab.workflows.proxy import render_worker

    assert generate_module._run_task is render_worker._run_task  # the pool submits the light module's function
