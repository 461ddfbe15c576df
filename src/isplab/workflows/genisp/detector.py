"""The object detector GenISP is trained through: any torchvision detection model, frozen.

- :func:`build_detector` makes a torchvision detection model by name (``torchvision.models.get_model``;
  :func:`detector_names` lists them) or one of isplab's small CPU detectors (:data:`SMALL_DETECTORS`,
  a ResNet-18 FPN with 64 channels under RetinaNet or FCOS heads), with random weights, torchvision's
  weights enum (``weights="DEFAULT"``, downloaded by torchvision) or a local state-dict file.
- :func:`freeze` makes it a fixed loss function: no parameter needs a gradient, every BatchNorm becomes
  a :class:`~torchvision.ops.misc.FrozenBatchNorm2d` (its running statistics, whatever the mode), and
  the model is left in training mode so that ``detector(images, targets)`` returns the detector's own
  losses (focal + box regression for RetinaNet). :func:`detection_loss` returns their sum in either mode.
- Detector files (``isplab genisp detector train``) are ``{"detector_config": {...}, "state_dict": ...}``
  (:func:`save_detector`, :func:`load_detector`).

The detector normalises its input itself (its ``GeneralizedRCNNTransform`` mean/std): it is given
images in [0, 1]-like RGB, the normal-light renders or GenISP's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from isplab.errors import IsplabError
from isplab.models.checkpoint import load_model, save_model

DEFAULT_DETECTOR = "retinanet_resnet50_fpn"
#: isplab's small detectors (ResNet-18 backbone, 64-channel FPN P3-P7, random init): train on a CPU in minutes.
SMALL_DETECTORS = ("retinanet_resnet18_fpn", "fcos_resnet18_fpn")
SMALL_FPN_CHANNELS = 64
CONFIG_KEY = "detector_config"


def detector_names() -> list[str]:
    """Every name :func:`build_detector` accepts: isplab's small detectors, then torchvision's."""
    return [*SMALL_DETECTORS, *torchvision.models.list_models(module=torchvision.models.detection)]


def _small_detector(name: str, num_classes: int, min_size: int, max_size: int) -> nn.Module:
    from torchvision.models import resnet18
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    ch = SMALL_FPN_CHANNELS
    backbone = BackboneWithFPN(resnet18(weights=None), {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], ch,
                               extra_blocks=LastLevelP6P7(ch, ch))
    if name.startswith("retinanet"):
        # anchors 16-256 px (torchvision's are 32-512, for 800-pixel COCO images)
        sizes = tuple((s, round(s * 2 ** (1 / 3)), round(s * 2 ** (2 / 3))) for s in (16, 32, 64, 128, 256))
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        return RetinaNet(backbone, num_classes=num_classes, anchor_generator=anchors, min_size=min_size, max_size=max_size)
    return FCOS(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size)


def build_detector(
    name: str = DEFAULT_DETECTOR,
    *,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    min_size: int = 800,
    max_size: int = 1333,
) -> nn.Module:
    """A detection model in training mode (not frozen: see :func:`freeze`).

    Args:
        name: one of :func:`detector_names`.
        num_classes: labels are ``0 .. num_classes - 1`` (COCO category ids, 0 unused); ``None``
            with ``weights="DEFAULT"`` keeps the weights' own classes (91 COCO ids).
        weights: ``None`` (random), ``"DEFAULT"`` (torchvision's weights enum; needs a download)
            or a local file: a torchvision state dict or an isplab detector file.
        min_size, max_size: the detector's resize (shorter side, cap on the longer one).

    Raises:
        IsplabError: unknown name, missing or unreadable weights file, weights of another
            architecture or class count, or weights that cannot be downloaded.
    """
    names = detector_names()
    if name not in names:
        raise IsplabError(f"unknown detector {name!r}: expected a torchvision detection model such as {', '.join(names[:6])}, ...")
    default = isinstance(weights, str) and weights.upper() == "DEFAULT"
    if num_classes is None and not default:
        raise IsplabError(f"detector {name!r} needs num_classes unless weights='DEFAULT'")
    if name in SMALL_DETECTORS:
        if default:
            raise IsplabError(f"detector {name!r} has no torchvision weights: use weights=None or a local file")
        model = _small_detector(name, int(num_classes), min_size, max_size)
    else:
        kwargs: dict[str, Any] = {"weights_backbone": None}
        if num_classes is not None:
            kwargs["num_classes"] = int(num_classes)
        if not name.startswith("ssd"):  # SSD models have a fixed input size instead
            kwargs.update(min_size=min_size, max_size=max_size)
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT" if default else None, **kwargs)
        except ValueError as e:  # e.g. num_classes disagreeing with the weights' categories
            raise IsplabError(f"cannot build detector {name!r}: {e}") from None
        except (OSError, RuntimeError) as e:  # download failures (URLError is an OSError)
            raise IsplabError(f"cannot get torchvision's DEFAULT weights for {name!r} ({type(e).__name__}: {e}); "
                              "pass a local state-dict file instead") from None
    if weights is not None and not default:
        _load_weights(model, Path(weights), name)
    return model.train()


def _load_weights(model: nn.Module, path: Path, name: str) -> None:
    if not path.is_file():
        raise IsplabError(f"detector weights file {path} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch.load raises many types for files that are not (safe) PyTorch files
        raise IsplabError(f"{path} is not a detector weights file: PyTorch cannot read it as a state dict") from None
    if isinstance(saved, dict) and "state_dict" in saved and isinstance(saved["state_dict"], dict):
        saved = saved["state_dict"]
    if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise IsplabError(f"{path} is not a detector weights file: expected a state dict of tensors")
    try:
        model.load_state_dict(saved)
    except RuntimeError:
        raise IsplabError(f"{path} holds weights for another architecture or class count: they do not fit detector {name!r}") from None


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.running_mean is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for child_name, child in module.named_children():
        replaced = _freeze_batchnorm(child)
        if replaced is not child:
            setattr(module, child_name, replaced)
    return module


def freeze(detector: nn.Module) -> nn.Module:
    """Freeze ``detector`` in place and return it, in training mode so that it returns its losses.

    Its parameters stop requiring gradients (they still pass gradients to the input), its
    BatchNorm layers are replaced by :class:`~torchvision.ops.misc.FrozenBatchNorm2d` with the
    same statistics (so ``train()``, which Lightning calls, changes nothing), and dropout is
    switched off. Nothing in it changes when it is used as a loss.
    """
    _freeze_batchnorm(detector)
    for parameter in detector.parameters():
        parameter.requires_grad_(False)
    for module in detector.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    detector.isplab_frozen = True
    return detector.train()


def detection_loss(detector: nn.Module, images: list[torch.Tensor] | torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, dict]:
    """The detector's own training loss (sum of its loss terms) and the terms, in any mode.

    ``images``: a list of ``(3, H, W)`` tensors or a ``(B, 3, H, W)`` batch; ``targets``: dicts with
    ``boxes`` (xyxy pixels) and ``labels``.
    """
    was_training = detector.training
    detector.train()
    try:
        terms = detector(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    finally:
        detector.train(was_training)
    return sum(terms.values()), {k: v.detach() for k, v in terms.items()}


class _Detector(nn.Module):
    """Holder so that :func:`isplab.models.checkpoint.save_model` can store a detector with its config."""


def save_detector(detector: nn.Module, path: str | Path, config: dict) -> Path:
    """Write ``detector``'s weights with the :func:`build_detector` arguments ``config`` (name,
    num_classes, min_size, max_size)."""
    detector.detector_config = dict(config)
    return save_model(detector, path, CONFIG_KEY, "isplab.workflows.genisp.detector.build_detector")


def load_detector(path: str | Path, *, frozen: bool = True) -> nn.Module:
    """A detector file of :func:`save_detector` (frozen by default), or a plain torchvision state
    dict when ``path`` is a directory's ``detector.pt``. The config is kept as ``detector_config``.

    Raises:
        IsplabError: missing file or not an isplab detector file.
    """
    def build(config: dict) -> nn.Module:
        model = build_detector(config["name"], num_classes=config["num_classes"], min_size=config["min_size"], max_size=config["max_size"])
        model.detector_config = dict(config)
        return model

    path = Path(path)
    if path.is_dir():
        path = path / "detector.pt"
    model = load_model(path, CONFIG_KEY, build, "detector file")
    return freeze(model) if frozen else model


def predict_detections(detector: nn.Module, images: list[torch.Tensor]) -> list[dict]:
    """Eval-mode detections (``boxes``, ``scores``, ``labels``) for a list of ``(3, H, W)`` images,
    without gradients; the detector's mode is restored afterwards."""
    was_training = detector.training
    detector.eval()
    try:
        with torch.no_grad():
            return detector(list(images))
    finally:
        detector.train(was_training)
