"""Output safety: check where a command will write *before* it starts its work.

Every command that writes follows one rule (``docs/conventions.md``): an output that already
exists is refused unless the user passed ``--overwrite`` (or ``--resume`` for a training run), and
an output that cannot be written is refused with one line naming it — before minutes of training
or conversion, never after. These helpers are that rule, so the wording is the same everywhere.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from isplab.errors import IsplabError

__all__ = ["check_writable_dir", "prepare_output_file", "prepare_output_dir", "existing_outputs"]


def check_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) if needed and prove a file can be written in it.

    Raises:
        IsplabError: the folder cannot be created or written, naming it and the reason.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise IsplabError(f"cannot write into {folder}: it exists and is not a folder") from None
    except OSError as error:
        raise IsplabError(f"cannot create folder {folder}: {error.strerror or error}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".isplab-write-check-", dir=folder)
    except OSError as error:
        raise IsplabError(f"cannot write into {folder}: {error.strerror or error}") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def prepare_output_file(path: str | Path, *, overwrite: bool = False, what: str = "output") -> Path:
    """Check that a single output file may be written: refuse an existing one without ``overwrite``.

    The parent folder is created and checked for writing; the file itself is not created.

    Args:
        path: the file the command will write.
        overwrite: the user passed ``--overwrite``.
        what: a word for the message (``"model"``, ``"tuning file"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        IsplabError: ``path`` exists (and ``overwrite`` is false), is a folder, or its folder
            cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsplabError(f"{what} {path} is a folder: expected a file path")
    if path.exists() and not overwrite:
        raise IsplabError(f"{what} {path} already exists: pass --overwrite to replace it, or choose another path")
    check_writable_dir(path.parent if str(path.parent) else Path("."))
    return path


def existing_outputs(folder: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """What a run would overwrite in ``folder``: the given ``names`` that exist, or (``names``
    ``None``) every entry of the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if names is None:
        return sorted(folder.iterdir())
    return [folder / name for name in names if (folder / name).exists()]


def remove_outputs(folder: str | Path, names: Iterable[str]) -> None:
    """Delete the entries ``names`` of ``folder`` that exist (files, or folders with their contents;
    a link is removed, not followed): what ``--overwrite`` replaces, called once every check has passed."""
    import shutil

    for path in existing_outputs(folder, names):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def prepare_output_dir(
    folder: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    names: Iterable[str] | None = None,
    what: str = "output folder",
) -> Path:
    """Check that a command may write its outputs into ``folder``; create it.

    A folder that does not exist or is empty is always fine. A non-empty one is refused unless
    ``overwrite`` (the user's ``--overwrite``: its outputs will be replaced) or ``resume`` (a
    training run continues the one already there). With ``names``, only those entries count as
    the command's outputs, so a folder that merely holds other files is fine.

    Raises:
        IsplabError: the folder holds outputs and neither flag was given, is a file, or cannot be
            written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise IsplabError(f"{what} {folder} is a file: expected a folder")
    found = existing_outputs(folder, names)
    if found and not (overwrite or resume):
        shown = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise IsplabError(
            f"{what} {folder} already holds {shown}: pass --overwrite to replace "
            f"{'them' if len(found) > 1 else 'it'}, or choose another folder"
        )
    return check_writable_dir(folder)
