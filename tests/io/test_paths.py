"""Output safety helpers: refuse existing outputs without --overwrite, refuse unwritable places first."""

from __future__ import annotations

import pytest

from isplab.errors import IsplabError
from isplab.io.paths import check_writable_dir, existing_outputs, prepare_output_dir, prepare_output_file

def test_output_file_new_is_fine_and_creates_parent(tmp_path):
    target = tmp_path / "a" / "b" / "model.pt"
    assert prepare_output_file(target) == target
    assert target.parent.is_dir() and not target.exists()


def test_output_file_existing_refused_and_untouched(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"precious")
    with pytest.raises(IsplabError, match=r"model\.pt already exists: pass --overwrite"):
        prepare_output_file(target)
    assert target.read_bytes() == b"precious"
    assert prepare_output_file(target, overwrite=True) == target


def test_output_file_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(IsplabError, match="is a folder: expected a file path"):
        prepare_output_file(tmp_path, overwrite=True)


def test_parent_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(IsplabError, match="cannot"):
        prepare_output_file(blocker / "model.pt")
    assert blocker.read_text() == "x"


def test_unwritable_folder_is_refused_before_work(tmp_path, monkeypatch):
    # Root ignores permission bits, so make mkstemp fail the way a read-only mount does.
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(IsplabError, match=r"cannot write into .*: Permission denied"):
        check_writable_dir(tmp_path)


def test_output_dir_rules(tmp_path):
    out = tmp_path / "run"
    assert prepare_output_dir(out) == out and out.is_dir()          # new: created
    assert prepare_output_dir(out) == out                           # empty: fine
    (out / "model.pt").write_bytes(b"old")
    with pytest.raises(IsplabError, match=r"already holds model\.pt: pass --overwrite to replace it"):
        prepare_output_dir(out)
    assert (out / "model.pt").read_bytes() == b"old"
    assert prepare_output_dir(out, overwrite=True) == out
    assert prepare_output_dir(out, resume=True) == out
    # only the named outputs count
    assert prepare_output_dir(out, names=["report.html"]) == out
    with pytest.raises(IsplabError, match="model.pt"):
        prepare_output_dir(out, names=["model.pt", "checkpoints"])
    assert existing_outputs(out, ["model.pt", "checkpoints"]) == [out / "model.pt"]


def test_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("keep")
    with pytest.raises(IsplabError, match="is a file: expected a folder"):
        prepare_output_dir(f, overwrite=True)
    assert f.read_text() == "keep"


def test_remove_outputs_deletes_only_the_named_entries_and_does_not_follow_links(tmp_path):
    from isplab.io.paths import remove_outputs

    kept = tmp_path / "elsewhere"
    kept.mkdir()
    (kept / "precious.txt").write_text("keep")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_text("x")
    (run / "model.pt").write_text("x")
    (run / "notes.txt").write_text("user's")
    (run / "logs").symlink_to(kept, target_is_directory=True)
    remove_outputs(run, ["checkpoints", "model.pt", "logs", "absent.json"])
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert (kept / "precious.txt").read_text() == "keep"
