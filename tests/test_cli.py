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


def test_genisp_is_wired_in(isplab_cli):
    result = isplab_cli("genisp", "--help")
    assert result.returncode == 0 and all(verb in result.stdout for verb in ("synth", "detector", "train", "test", "run", "export"))


def test_synth_with_an_unknown_source_writes_nothing_and_the_retry_works(tmp_path, isplab_cli):
    out = tmp_path / "x"
    result = isplab_cli("data", "synth", str(out), "--source", "chart", "--source", "nosuch", "-n", "2")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: unknown source 'nosuch': expected one of training, heldout, deadleaves, chart, gradient, texture, "
        "astronaut, chelsea, coffee, rocket, motorcycle, hubble, china, flower or an image file"
    )
    assert not out.exists()
    result = isplab_cli("data", "synth", str(out), "--source", "chart", "-n", "1", "--size", "64x48")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.csv", "manifest.json", "synth_00000.dng", "synth_00000_target.png"
    ]


def test_synth_refuses_an_existing_dataset_and_an_unwritable_folder(tmp_path, isplab_cli):
    out = tmp_path / "x"
    assert isplab_cli("data", "synth", str(out), "-n", "1", "--size", "64x48").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = isplab_cli("data", "synth", str(out), "-n", "1", "--size", "64x48", "--seed", "3")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: dataset folder {out} already holds manifest.csv, manifest.json, ")
    assert "--overwrite" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = isplab_cli("data", "synth", str(blocker / "sub"), "-n", "1")
    assert result.returncode == 1
    assert result.stderr == f"error: cannot create folder {blocker / 'sub'}: Not a directory\n"
    assert blocker.read_text() == "not a folder"


def test_inspect_a_folder_says_it_is_a_folder(tmp_path, isplab_cli):
    result = isplab_cli("data", "inspect", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path} is a folder: expected a camera raw file such as .dng\n"


def test_an_uncaught_os_error_is_one_line_naming_the_file(tmp_path):
    """Whatever command lets an OSError escape, the user sees the file and the reason, not a repr."""
    import subprocess
    import sys

    script = (
        "import sys, isplab.cli as cli\n"
        "@cli.app.command('boom')\n"
        "def boom(path: str):\n"
        "    open(path, 'w')\n"
        "sys.argv = ['isplab', *sys.argv[1:]]\n"
        "cli.main()\n"
    )
    target = tmp_path / "missing" / "out.txt"
    result = subprocess.run([sys.executable, "-c", script, "boom", str(target)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot read/write {target}: No such file or directory (run with --debug for the traceback)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, "--debug", "boom", str(target)], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" in result.stderr and "FileNotFoundError" in result.stderr
