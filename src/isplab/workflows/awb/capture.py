"""``isplab awb capture``: gather raw scenes on a Raspberry Pi, as the seed's ``snapper.py``.

Each scene is saved as ``<user>,<sensor>,<id>.dng`` (the raw, for labelling with ``isplab awb
annotate``) and ``<user>,<sensor>,<id>.jpg`` (the camera's own rendering). Ids count up from
``initial_id``, skipping every id the folder already uses in any form (a DNG, a JPEG, or a DNG
already renamed by labelling), so nothing is ever overwritten. The camera code is a thin use of
picamera2, which exists only on a Pi.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from isplab.errors import IsplabError

__all__ = ["NEEDS_PICAMERA2", "ScenePaths", "capture", "next_scene_name", "used_scene_ids"]

NEEDS_PICAMERA2 = "isplab awb capture needs picamera2 and a camera (run it on a Raspberry Pi)"
_QUIT = ("q", "quit", "exit")


class ScenePaths(NamedTuple):
    """Where one scene goes: its ``id`` and the ``dng`` and ``jpg`` paths."""

    id: int
    dng: Path
    jpg: Path


def _check_name_part(value: str, what: str) -> str:
    if not value or any(c in value for c in ",/\\\0") or value in (".", ".."):
        raise IsplabError(f"{what} {value!r} cannot be part of a file name <user>,<sensor>,<id>: use no commas or slashes")
    return value


def used_scene_ids(output: str | Path, user: str, sensor: str) -> set[int]:
    """Ids of ``<user>,<sensor>,<id>...`` files already in ``output`` (any extension, labelled or not)."""
    output = Path(output)
    if not output.is_dir():
        return set()
    ids = set()
    for path in output.iterdir():
        parts = path.name.split(".")[0].split(",") if "," in path.name else []
        if len(parts) >= 3 and parts[:2] == [user, sensor] and parts[2].isdigit():
            ids.add(int(parts[2]))
    return ids


def next_scene_name(output: str | Path, user: str, sensor: str, initial_id: int = 0) -> ScenePaths:
    """The first id ``>= initial_id`` that no file in ``output`` uses, with its DNG and JPEG paths.

    Raises:
        IsplabError: ``user`` or ``sensor`` would break the name (commas, slashes), negative id.
    """
    _check_name_part(user, "user")
    _check_name_part(sensor, "sensor")
    if initial_id < 0:
        raise IsplabError(f"the initial scene id must be 0 or more, got {initial_id}")
    used = used_scene_ids(output, user, sensor)
    scene = initial_id
    while scene in used:
        scene += 1
    stem = Path(output) / f"{user},{sensor},{scene}"
    return ScenePaths(scene, stem.with_name(stem.name + ".dng"), stem.with_name(stem.name + ".jpg"))


def _open_camera():
    """``(Picamera2 instance, picamera2 module)``, or IsplabError off a Pi."""
    try:
        module = importlib.import_module("picamera2")
    except ImportError:
        raise IsplabError(NEEDS_PICAMERA2) from None
    try:
        return module.Picamera2(), module
    except Exception as e:  # no camera: picamera2 raises IndexError/RuntimeError depending on version
        raise IsplabError(f"{NEEDS_PICAMERA2}: {e}") from e


def capture(
    output: str | Path,
    user: str,
    *,
    initial_id: int = 0,
    count: int | None = None,
    preview: bool = False,
    prompt: Callable[[str], str] = input,
    log: Callable[[str], None] = print,
) -> list[ScenePaths]:
    """Capture scenes into ``output``: one DNG and one JPEG each time ``prompt`` returns (Enter).

    Args:
        user: first part of the names (e.g. who or where, to group scenes).
        initial_id: first id to try (used ids are skipped).
        count: stop after this many scenes (default: until ``q`` or end of input).
        preview: show the camera's preview window (a Pi with a display).
        prompt: asks before each capture; answering ``q`` stops.

    Returns:
        The scenes written.

    Raises:
        IsplabError: picamera2 or the camera is missing, bad ``user``.
    """
    _check_name_part(user, "user")
    camera, module = _open_camera()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written: list[ScenePaths] = []
    try:
        sensor = camera.camera_properties["Model"]
        camera.configure(camera.create_still_configuration(raw={}))
        if preview:
            camera.start_preview(module.Preview.QTGL)
        camera.start()
        scene_id = initial_id
        while count is None or len(written) < count:
            scene = next_scene_name(output, user, sensor, scene_id)
            try:
                answer = prompt(f"Enter: capture scene {scene.id}, q: quit > ")
            except EOFError:
                break
            if answer.strip().lower() in _QUIT:
                break
            request = camera.capture_request()
            try:
                request.save_dng(str(scene.dng))
                request.save("main", str(scene.jpg))
            finally:
                request.release()
            written.append(scene)
            log(f"saved {scene.dng.name} and {scene.jpg.name}")
            scene_id = scene.id + 1
    finally:
        camera.stop()
        camera.close()
    return written
