"""Model files: a state dict saved with the configuration its factory rebuilds the model from.

Each model family stores its factory arguments in an attribute (``awb_config``, ``isp_config``);
the ``.pt`` file holds ``{<that attribute>: config, "state_dict": weights}`` and loads with
``weights_only=True`` (no pickled code runs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from isplab.errors import IsplabError


def save_model(model: nn.Module, path: str | Path, key: str, factory: str) -> Path:
    """Write ``model``'s weights and its ``key`` attribute (the build config) to ``path``."""
    config = getattr(model, key, None)
    if config is None:
        raise IsplabError(f"saving needs a model made by {factory} (it has no {key})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({key: config, "state_dict": state}, path)
    return path


def load_model(path: str | Path, key: str, build: Callable[[dict], nn.Module], kind: str) -> nn.Module:
    """Rebuild a model from a file written by :func:`save_model` (CPU, eval mode).

    Args:
        key: the config attribute the file was saved with.
        build: makes the untrained model from that config.
        kind: what the file should be, for error messages (e.g. ``"AWB model"``).

    Raises:
        IsplabError: missing file, or not such a model file.
    """
    path = Path(path)
    if not path.is_file():
        raise IsplabError(f"{kind} file '{path}' does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = build(saved[key])
        model.load_state_dict(saved["state_dict"])
    except IsplabError:
        raise
    except Exception as e:  # torch.load raises many types for non-checkpoint files
        raise IsplabError(f"'{path}' is not an isplab {kind} (.pt saved by isplab): {e}") from None
    return model.eval()
