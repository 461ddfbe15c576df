"""The `isplab` command as a user runs it: exit codes, one-line errors, unfinished groups."""

import json

import rawpy


def test_version(isplab_cli):
    result = isplab_cli("--version")
    assert result.returncode == 0 and result.stdout.strip().startswith("isplab ")


def test_data_synth_writes_dngs_rawpy_opens(tmp_path, isplab_cli):
    result = isplab_cli("data", "synth", str(tmp_path / "x"), "--count", "4", "--size", "64x48")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert len(manifest["samples"]) == 4
    for sample in manifest["samples"]:
        for key in ("black_level", "white_level", "cfa_pattern", "as_shot_neutral", "xyz_to_camera"):
            assert key in sample
        with rawpy.imread(str(tmp_path / "x" / sample["file"])) as raw:
            assert raw.raw_image_visible.shape == (48, 64)


def test_errors_are_one_line_without_traceback(tmp_path, isplab_cli):
    bad = tmp_path / "not_raw.dng"
    bad.write_text("hello")
    result = isplab_cli("data", "inspect", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "not_raw.dng" in result.stderr

    result = isplab_cli("data", "synth", str(tmp_path / "y"), "--size", "31x30")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "bad size" in result.stderr


def test_debug_shows_the_traceback(tmp_path, isplab_cli):
    result = isplab_cli("--debug", "data", "synth", str(tmp_path / "y"), "--size", "31x30")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_unfinished_workflows_say_so(isplab_cli):
    result = isplab_cli("sky")
    assert result.returncode == 1 and "not yet available" in result.stderr
