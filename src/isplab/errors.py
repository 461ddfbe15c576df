"""Exceptions raised by isplab.

Every error a user can cause derives from :class:`IsplabError`; the CLI prints its message as
one line (``--debug`` shows the traceback). Messages name the offending file or value and say
what was expected.
"""

from __future__ import annotations


class IsplabError(Exception):
    """Base class of isplab's user-facing errors."""


class RawReadError(IsplabError, OSError):
    """A file could not be read as a camera raw (missing, truncated, unsupported or not raw)."""


class ParityError(IsplabError):
    """An exported model's outputs differ from the source model's beyond the stated tolerance."""


class MissingDependencyError(IsplabError, ImportError):
    """An optional dependency (e.g. the ``tflite`` extra) is not installed."""


def check_at_least_one(options: object, names: tuple[str, ...] | list[str]) -> None:
    """Refuse an option below 1: ``names`` are attributes of ``options`` (a config dataclass);
    ``None`` means "not set" and passes.

    Raises:
        IsplabError: ``"<name> must be at least 1, got <value>"`` for the first offending option.
    """
    for name in names:
        value = getattr(options, name)
        if value is not None and value < 1:
            raise IsplabError(f"{name} must be at least 1, got {value}")
