"""Model files: a state dict saved with the configuration its factory rebuilds the model from.

Each model family stores its factory arguments in an attribute (:data:`MODEL_KINDS`: ``awb_config``,
``isp_config``, ``proxy_config``, ``sky_config``); the ``.pt`` file holds
``{<that attribute>: config, "state_dict": weights}`` and loads with ``weights_only=True`` (no pickled
code runs).
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


_LIGHTNING = "pytorch-lightning_version"  # a key of every Lightning checkpoint

#: Every isplab model file's config key and what it is called, so that a model given to the wrong
#: command is named ("it is an isplab proxy model; expected an isplab ISP model ...").
MODEL_KINDS = {
    "awb_config": "AWB model",
    "isp_config": "ISP model",
    "proxy_config": "proxy model",
    "sky_config": "sky model",
    "genisp_config": "GenISP model",
}


def load_model(path: str | Path, key: str, build: Callable[[dict], nn.Module], kind: str) -> nn.Module:
    """Rebuild a model from a file written by :func:`save_model` (CPU, eval mode).

    Args:
        key: the config attribute the file was saved with.
        build: makes the untrained model from that config.
        kind: what the file should be, for error messages (e.g. ``"AWB model"``).

    Raises:
        IsplabError: missing file, or not such a model file; one line naming the file, what it
            is (when recognisable) and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise IsplabError(f"{kind} file '{path}' does not exist")
    expected = f"expected an isplab {kind} (.pt saved by isplab)"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch.load raises many types for files that are not (safe) PyTorch files
        raise IsplabError(f"'{path}' is not an isplab {kind}: PyTorch cannot read it as a weights file; {expected}") from None
    if not isinstance(saved, dict) or key not in saved or "state_dict" not in saved or _LIGHTNING in saved:
        raise IsplabError(f"'{path}' is not an isplab {kind}: it is {_describe(saved)}; {expected}")
    try:
        model = build(saved[key])
    except Exception as e:
        reason = str(e) if isinstance(e, IsplabError) else type(e).__name__
        raise IsplabError(f"'{path}' is not an isplab {kind}: its configuration is unusable ({reason}); {expected}") from None
    try:
        model.load_state_dict(saved["state_dict"])
    except Exception:
        raise IsplabError(
            f"'{path}' is not an isplab {kind}: its weights do not fit the network its configuration describes; {expected}"
        ) from None
    return model.eval()


def _describe(saved: object) -> str:
    """What a loaded ``.pt`` holds, in a few words, for error messages."""
    if not isinstance(saved, dict):
        return f"a PyTorch file holding a {type(saved).__name__}"
    if _LIGHTNING in saved:
        return "a Lightning training checkpoint (use the run's model file instead)"
    for config_key, name in MODEL_KINDS.items():
        if config_key in saved:
            return f"an isplab {name}"
    if saved and all(isinstance(v, torch.Tensor) for v in saved.values()):
        return "a bare state dict without isplab's model configuration"
    keys = ", ".join(sorted(map(str, saved))[:4]) + (", ..." if len(saved) > 4 else "")
    return f"a PyTorch file holding a dict with keys {keys}" if saved else "a PyTorch file holding an empty dict"
