"""``isplab awb capture``: scene naming that never overwrites, and the capture loop on a stand-in camera."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from isplab.errors import IsplabError
from isplab.workflows.awb.capture import NEEDS_PICAMERA2, capture, next_scene_name, used_scene_ids


def test_names_count_up_from_the_initial_id(tmp_path):
    scene = next_scene_name(tmp_path, "alice", "imx708", 0)
    assert scene == (0, tmp_path / "alice,imx708,0.dng", tmp_path / "alice,imx708,0.jpg")
    assert next_scene_name(tmp_path, "alice", "imx708", 7).id == 7
    assert next_scene_name(tmp_path / "not-yet-made", "alice", "imx708", 3).id == 3


def test_ids_in_use_in_any_form_are_skipped(tmp_path):
    for name in (
        "alice,imx708,0.dng",               # a capture
        "alice,imx708,1.jpg",               # its DNG moved elsewhere: the JPEG still holds the id
        "alice,imx708,2,1.8500,1.6200.dng",  # labelled by isplab awb annotate
        "alice,imx708,4.dng",
        "bob,imx708,3.dng",                 # another user's id 3 does not count
        "alice,imx477,3.dng",               # nor another sensor's
        "alice,imx708,x.dng",
    ):
        (tmp_path / name).write_bytes(b"")
    assert used_scene_ids(tmp_path, "alice", "imx708") == {0, 1, 2, 4}
    assert next_scene_name(tmp_path, "alice", "imx708").id == 3
    assert next_scene_name(tmp_path, "alice", "imx708", 4).id == 5
    assert next_scene_name(tmp_path, "bob", "imx708").id == 0


@pytest.mark.parametrize(("user", "sensor", "initial", "match"), [
    ("a,b", "imx708", 0, "user 'a,b' cannot be part of a file name"),
    ("../x", "imx708", 0, "user '../x' cannot be part"),
    ("", "imx708", 0, "user '' cannot be part"),
    ("alice", "imx/708", 0, "sensor 'imx/708' cannot be part"),
    ("alice", "imx708", -1, "initial scene id must be 0 or more"),
])
def test_bad_name_parts_are_refused(tmp_path, user, sensor, initial, match):
    with pytest.raises(IsplabError, match=match):
        next_scene_name(tmp_path, user, sensor, initial)


def test_without_picamera2_it_says_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    with pytest.raises(IsplabError, match=r"^isplab awb capture needs picamera2 and a camera \(run it on a Raspberry Pi\)$"):
        capture(tmp_path, "alice", prompt=lambda text: "")
    assert not list(tmp_path.iterdir())


class _FakeRequest:
    def __init__(self, log: list) -> None:
        self.log = log

    def save_dng(self, path: str) -> None:
        assert not Path(path).exists()
        Path(path).write_bytes(b"raw")
        self.log.append(("dng", Path(path).name))

    def save(self, stream: str, path: str) -> None:
        assert stream == "main" and not Path(path).exists()
        Path(path).write_bytes(b"jpeg")
        self.log.append(("jpg", Path(path).name))

    def release(self) -> None:
        self.log.append(("release",))


def _fake_picamera2(log: list, model: str = "imx708", fail: bool = False) -> types.ModuleType:
    class Picamera2:
        camera_properties = {"Model": model}

        def __init__(self) -> None:
            if fail:
                raise IndexError("list index out of range")

        def create_still_configuration(self, **options):
            assert options == {"raw": {}}  # the raw stream is what the DNG needs
            return {"still": options}

        def configure(self, config) -> None:
            log.append(("configure",))

        def start_preview(self, kind) -> None:
            log.append(("preview", kind))

        def start(self) -> None:
            log.append(("start",))

        def capture_request(self) -> _FakeRequest:
            return _FakeRequest(log)

        def stop(self) -> None:
            log.append(("stop",))

        def close(self) -> None:
            log.append(("close",))

    return types.SimpleNamespace(Picamera2=Picamera2, Preview=types.SimpleNamespace(QTGL="qtgl"))


def test_capture_loop_writes_dng_and_jpeg_pairs_without_overwriting(tmp_path, monkeypatch):
    log: list = []
    monkeypatch.setitem(sys.modules, "picamera2", _fake_picamera2(log))
    (tmp_path / "alice,imx708,1,2.0000,1.5000.dng").write_bytes(b"labelled")
    answers = iter(["", "", "", "q", ""])
    messages: list[str] = []
    scenes = capture(tmp_path, "alice", preview=True, prompt=lambda text: next(answers), log=messages.append)
    assert [s.id for s in scenes] == [0, 2, 3]
    assert ("preview", "qtgl") in log and log[-2:] == [("stop",), ("close",)]
    assert [entry for entry in log if entry[0] in ("dng", "jpg")] == [
        ("dng", "alice,imx708,0.dng"), ("jpg", "alice,imx708,0.jpg"),
        ("dng", "alice,imx708,2.dng"), ("jpg", "alice,imx708,2.jpg"),
        ("dng", "alice,imx708,3.dng"), ("jpg", "alice,imx708,3.jpg"),
    ]
    assert log.count(("release",)) == 3
    assert (tmp_path / "alice,imx708,1,2.0000,1.5000.dng").read_bytes() == b"labelled"
    assert messages[0] == "saved alice,imx708,0.dng and alice,imx708,0.jpg"

    # A second session continues after what is there; count stops it, end of input too.
    log.clear()
    assert [s.id for s in capture(tmp_path, "alice", initial_id=2, count=2, prompt=lambda text: "")] == [4, 5]

    def end_of_input(text):
        raise EOFError

    assert capture(tmp_path, "alice", prompt=end_of_input) == []
    assert log[-2:] == [("stop",), ("close",)]


def test_no_camera_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", _fake_picamera2([], fail=True))
    with pytest.raises(IsplabError, match=f"^{NEEDS_PICAMERA2.replace('(', '.').replace(')', '.')}: list index"):
        capture(tmp_path, "alice", prompt=lambda text: "")
