"""The sky network: a segmentation_models_pytorch U-Net (ResNet-34 encoder by default) with one logit out.

The model file (``model.pt``, :func:`save_sky_model`) holds the build options (encoder, depth,
decoder widths) and the HDR encoding the network was trained with, so prediction feeds it the
same inputs. No weights are ever downloaded: ``encoder_weights`` is a local state-dict file or none.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.models.checkpoint import load_model, save_model
from isplab.workflows.sky.hdr import LogEncoding

CONFIG_KEY = "sky_config"
KIND = "sky model"


def build_sky_model(
    encoder: str = "resnet34",
    encoder_depth: int = 5,
    decoder_channels: tuple[int, ...] | list[int] | None = None,
    encoding: dict | None = None,
    encoder_weights: str | Path | None = None,
) -> nn.Module:
    """A U-Net with ``encoder`` (any smp encoder name), ``encoder_depth`` stages, 3 inputs, 1 logit.

    ``decoder_channels`` defaults to smp's ``(256, 128, 64, 32, 16)`` cut to the depth.
    ``encoder_weights``: a local ``.pth`` state dict for the encoder (e.g. torchvision's
    ``resnet34-b627a593.pth``; a classifier head in it is ignored). The returned model carries
    ``sky_config`` (what :func:`load_sky_model` rebuilds it from; the weights file is not part of
    it) and ``size_multiple`` (``2**encoder_depth``).

    Raises:
        IsplabError: unknown encoder, bad depth or decoder widths, or an unusable weights file.
    """
    import segmentation_models_pytorch as smp

    if encoder not in smp.encoders.get_encoder_names():
        raise IsplabError(f"unknown encoder {encoder!r}: expected a segmentation_models_pytorch encoder such as resnet34, resnet18, mobilenet_v2")
    if not 1 <= encoder_depth <= 5:
        raise IsplabError(f"encoder_depth must be 1..5, got {encoder_depth}")
    channels = tuple(decoder_channels) if decoder_channels else (256, 128, 64, 32, 16)[:encoder_depth]
    if len(channels) != encoder_depth:
        raise IsplabError(f"decoder_channels needs {encoder_depth} widths (one per encoder stage), got {list(channels)}")
    enc = LogEncoding.from_dict(encoding)
    model = smp.Unet(
        encoder_name=encoder, encoder_weights=None, encoder_depth=encoder_depth, decoder_channels=channels, in_channels=3, classes=1
    )
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights)
    model.sky_config = {"encoder": encoder, "encoder_depth": encoder_depth, "decoder_channels": list(channels), "encoding": enc.to_dict()}
    model.size_multiple = 2**encoder_depth
    return model


def load_encoder_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``model.encoder``; keys the encoder lacks (``fc.*``) are ignored.

    Raises:
        IsplabError: missing file, not a state dict, or one that leaves encoder weights unset.
    """
    path = Path(path)
    if not path.is_file():
        raise IsplabError(f"encoder weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise IsplabError(f"{path} is not a PyTorch state dict: expected encoder weights (.pth)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise IsplabError(f"{path} is not a state dict (found a {type(state).__name__}): expected encoder weights")
    own = model.encoder.state_dict()
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    missing = sorted(set(own) - set(usable))
    if missing:
        raise IsplabError(
            f"{path} does not fit the encoder: {len(missing)} of its {len(own)} weights are missing or of another shape "
            f"(e.g. {missing[0]}); expected weights of the same encoder architecture"
        )
    extra = sorted(k for k in state if k not in own and not k.startswith(_HEADS))
    if extra:
        raise IsplabError(
            f"{path} does not fit the encoder: it holds {len(extra)} weights the encoder lacks (e.g. {extra[0]}); "
            "expected weights of the same encoder architecture"
        )
    model.encoder.load_state_dict(usable)


#: classifier heads in encoder weight files, ignored
_HEADS = ("fc.", "classifier.", "head.", "last_linear.")


def save_sky_model(model: nn.Module, path: str | Path) -> Path:
    return save_model(model, path, CONFIG_KEY, "build_sky_model")


def load_sky_model(path: str | Path) -> nn.Module:
    """Rebuild a model written by :func:`save_sky_model` (CPU, eval mode).

    Raises:
        IsplabError: missing file or not an isplab sky model (one line naming it).
    """
    return load_model(path, CONFIG_KEY, lambda config: build_sky_model(**config), KIND)


def model_encoding(model: nn.Module) -> LogEncoding:
    return LogEncoding.from_dict(getattr(model, "sky_config", {}).get("encoding"))
