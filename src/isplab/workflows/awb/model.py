"""AWB models for a Raspberry Pi target: the generic networks of :mod:`isplab.models.awb` built for
a target's zone grid and the 2800..7600 K range, and model files that say which target they are for.

A model file (``.pt``) holds the network's ``awb_config`` (``arch``, ``size``,
``temperature_range``, ``ensemble``, ``options``) plus ``target``; :func:`load_awb_model` refuses
any ``.pt`` that is not such a model, in one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from isplab.errors import IsplabError
from isplab.models.awb import awb_net_from_config, build_awb_net, save_awb_model
from isplab.models.checkpoint import load_model
from isplab.workflows.awb.constants import REFERENCE_FILTERS, TARGET_SIZES, TEMPERATURE_RANGE

__all__ = ["build_awb_model", "load_awb_model", "model_target", "save_awb_model"]


def build_awb_model(target: str, arch: str = "reference", *, ensemble: int = 1, **options: Any) -> nn.Module:
    """Build an untrained AWB network for ``target`` (see :func:`isplab.models.awb.build_awb_net`).

    Args:
        target: ``"pisp"`` (32x32 zones) or ``"vc4"`` (16 wide x 12 high).
        arch: ``"reference"`` (Raspberry Pi's network, with its per-target conv widths),
            ``"chroma"``, ``"histogram"``, ``"small"``, ``"hybrid"`` or ``"blend"``.
        ensemble: members averaged in one model.
        **options: the architecture's keyword arguments.

    Raises:
        IsplabError: unknown target or arch, ``ensemble < 1``, or options the arch does not take.
    """
    if target not in TARGET_SIZES:
        raise IsplabError(f"unknown AWB target {target!r}: expected one of {', '.join(TARGET_SIZES)}")
    if arch == "reference":
        options.setdefault("filters", REFERENCE_FILTERS[target])
    model = build_awb_net(arch, TARGET_SIZES[target], TEMPERATURE_RANGE, ensemble=ensemble, **options)
    model.awb_config["target"] = target
    return model


def model_target(model: nn.Module) -> str:
    """The target an AWB model was built for.

    Raises:
        IsplabError: the model was not made by :func:`build_awb_model`.
    """
    target = getattr(model, "awb_config", {}).get("target")
    if target not in TARGET_SIZES:
        raise IsplabError(f"not an AWB model for a Raspberry Pi target (pisp or vc4): {type(model).__name__}")
    return target


def _from_config(config: dict) -> nn.Module:
    target = config.get("target") if isinstance(config, dict) else None
    if target not in TARGET_SIZES:
        raise IsplabError(f"no Raspberry Pi target (pisp or vc4) recorded, found {target!r}")
    config = dict(config)
    # Files written before the networks took their grid and range record only the target.
    config.setdefault("size", TARGET_SIZES[target])
    config.setdefault("temperature_range", TEMPERATURE_RANGE)
    if config.get("arch") == "reference":
        config["options"] = {"filters": REFERENCE_FILTERS[target], **config.get("options", {})}
    if tuple(config["size"]) != TARGET_SIZES[target]:
        raise IsplabError(f"its zone grid {tuple(config['size'])} is not {target}'s {TARGET_SIZES[target]}")
    return awb_net_from_config(config)


def load_awb_model(path: str | Path) -> nn.Module:
    """Load an AWB model file (CPU, eval mode); ``model.awb_config["target"]`` says its target.

    Raises:
        IsplabError: missing file, or a file that is not an isplab AWB model for pisp or vc4 (random
            bytes, another kind of PyTorch file, an ISP model...), naming the file.
    """
    return load_model(path, "awb_config", _from_config, "AWB model")
