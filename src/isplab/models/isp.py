"""Learned-ISP networks: factory, save/load and cost counters.

Every model maps a packed raw ``(B, 4, h, w)`` in ``[0, 1]`` to RGB ``(B, 3, 2h, 2w)`` for any
``h, w`` divisible by its ``size_multiple`` attribute, and carries an ``isp_config`` dict
(``arch``, ``num_maps_base``, ``options``) from which :func:`load_isp_model` rebuilds it.

Architectures (``arch``):

* ``"punet"``: the MAI 2021 challenge baseline (:mod:`isplab.models.punet`), ``size_multiple`` 16.
* ``"lfnet"``: a compact local-fusion-block CNN (:mod:`isplab.models.lfnet`), ``size_multiple`` 1.
* ``"nafnet"``: a small NAFNet-style U-Net (:mod:`isplab.models.nafnet`), ``size_multiple`` 16.

``prior="classical"`` wraps any of them in :class:`isplab.models.isp_prior.PriorISP`: a classical
render of the input plus the network's correction (recorded as ``isp_config["prior"]``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.models.checkpoint import load_model, save_model
from isplab.models.lfnet import LFNet
from isplab.models.nafnet import NAFNetISP
from isplab.models.isp_prior import PRIORS, ClassicalPrior, PriorISP
from isplab.models.punet import PUNet

ISP_ARCHS = ("punet", "lfnet", "nafnet")
_CLASSES: dict[str, type[nn.Module]] = {"punet": PUNet, "lfnet": LFNet, "nafnet": NAFNetISP}


def build_isp_model(arch: str, num_maps_base: int = 16, *, metadata: bool = False, prior: str = "none",
                    exposure: bool = False, **options: Any) -> nn.Module:
    """Build a learned-ISP model (see the module docstring).

    Args:
        arch: One of :data:`ISP_ARCHS`.
        num_maps_base: Base feature width.
        metadata: the model expects metadata-aware input (packed planes white-balanced and
            colour-corrected with the raw's own metadata, :func:`isplab.workflows.isp.data.model_input`);
            recorded as ``isp_config["metadata"]`` (absent for blind models).
        exposure: a blind model whose input is brightened by the raw's own exposure (DNG
            ``BaselineExposure``, :func:`isplab.workflows.isp.data.exposure_gain`) and nothing else;
            recorded as ``isp_config["exposure"]``. Metadata-aware models always get the exposure.
        prior: ``"none"`` (the network alone) or ``"classical"``: ``classical(x) + net(x) - 0.5``
            with the network's last layer zeroed, so the new model equals the classical render
            (:mod:`isplab.models.isp_prior`; metadata-aware or blind after ``metadata``); recorded
            as ``isp_config["prior"]`` (absent for ``"none"``, so older models load unchanged).
        **options: The architecture's other keyword arguments (lfnet: ``num_blocks``, ``units``,
            ``layers``; nafnet: ``enc_blocks``, ``mid_blocks``, ``dec_blocks``; punet: none).

    Raises:
        IsplabError: Unknown arch, or options/width the arch does not accept.
    """
    if arch not in _CLASSES:
        raise IsplabError(f"unknown ISP arch {arch!r}: expected one of {', '.join(ISP_ARCHS)}")
    if prior not in PRIORS:
        raise IsplabError(f"unknown ISP prior {prior!r}: expected one of {', '.join(PRIORS)}")
    try:
        model = _CLASSES[arch](num_maps_base=num_maps_base, **options)
    except TypeError as e:
        raise IsplabError(f"bad options {options} for ISP arch {arch!r}: {e}") from None
    if prior == "classical":
        model = PriorISP(model, arch, ClassicalPrior(metadata=metadata, auto_exposure=not exposure))
    model.isp_config = {"arch": arch, "num_maps_base": num_maps_base, "options": dict(options)}
    if metadata:
        model.isp_config["metadata"] = True
    elif exposure:
        model.isp_config["exposure"] = True
    if prior != "none":
        model.isp_config["prior"] = prior
    model.register_forward_pre_hook(_check_input)
    return model


def _check_input(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    # Skipped while torch.compile / torch.export trace the model: a data-independent Python
    # check on symbolic sizes would specialise the graph to the example's size.
    if torch.compiler.is_compiling():
        return
    x = inputs[0]
    m = model.size_multiple
    if x.ndim != 4 or x.shape[1] != 4 or x.shape[2] % m or x.shape[3] % m:
        raise IsplabError(
            f"{model.isp_config['arch']} expects a packed raw of shape (B, 4, h, w) with h and w "
            f"divisible by {m}, got {tuple(x.shape)}"
        )


def save_isp_model(model: nn.Module, path: str | Path) -> Path:
    """Save a model built by :func:`build_isp_model` as a ``.pt`` file (state dict + build config)."""
    return save_model(model, path, "isp_config", "build_isp_model")


def load_isp_model(path: str | Path) -> nn.Module:
    """Load a model written by :func:`save_isp_model` (on the CPU, in eval mode).

    Raises:
        IsplabError: missing file, or not an isplab ISP model file.
    """
    return load_model(path, "isp_config", _rebuild, "ISP model")


def _rebuild(config: dict) -> nn.Module:
    return build_isp_model(config["arch"], config["num_maps_base"], metadata=bool(config.get("metadata", False)),
                           prior=config.get("prior", "none"), exposure=bool(config.get("exposure", False)), **config["options"])


def uses_exposure(model: nn.Module) -> bool:
    """Whether ``model``'s input is brightened by each raw's own exposure (metadata-aware or ``isp_config["exposure"]``)."""
    config = getattr(model, "isp_config", {})
    return bool(config.get("metadata", False) or config.get("exposure", False))


def uses_metadata(model: nn.Module) -> bool:
    """Whether ``model`` was trained on metadata-aware input (``isp_config["metadata"]``)."""
    return bool(getattr(model, "isp_config", {}).get("metadata", False))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_hw: tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass on a ``(1, 4, h, w)`` input.

    Counts ``Conv2d``, ``ConvTranspose2d`` and ``Linear`` layers only (element-wise operations,
    pooling and normalisation are ignored), with a forward pass on a meta-device copy of the
    model, so it costs no memory or compute even at full resolution.

    Args:
        model: An ISP model (input with 4 channels).
        input_hw: ``(h, w)`` of the packed input, e.g. ``(544, 960)`` for a full-HD frame.
    """
    total = 0

    def conv(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        # Each output element is a dot product over (C_in / groups) * kh * kw inputs.
        total += output.numel() * (module.in_channels // module.groups) * _kernel_area(module)

    def conv_transpose(
        module: nn.ConvTranspose2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        nonlocal total
        # Each input element is scattered into (C_out / groups) * kh * kw outputs.
        total += inputs[0].numel() * (module.out_channels // module.groups) * _kernel_area(module)

    def linear(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    meta = copy.deepcopy(model).to("meta")
    hooks = {nn.Conv2d: conv, nn.ConvTranspose2d: conv_transpose, nn.Linear: linear}
    for module in meta.modules():
        # isinstance, not type(): subclasses such as PUNET's CroppedConvTranspose2d count too.
        for kind, hook in hooks.items():
            if isinstance(module, kind):
                module.register_forward_hook(hook)
    with torch.no_grad():
        meta(torch.empty(1, 4, *input_hw, device="meta"))
    return total


def _kernel_area(module: nn.Conv2d | nn.ConvTranspose2d) -> int:
    kh, kw = module.kernel_size
    return kh * kw
