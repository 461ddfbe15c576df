"""GenISP (Morawski et al., CVPR Workshops 2022): a minimal neural ISP in front of a detector.

Input and output are ``(B, 3, H, W)`` float32 images, any ``H`` and ``W`` (odd sizes too) and any
batch size. The input is the raw converted to CIE XYZ (black level subtracted, divided by the white
level, greens averaged, camera -> XYZ; :mod:`isplab.workflows.genisp.preprocess`); the output is the
image a detector sees. Three stages:

1. :class:`ConvWB` looks at the image shrunk to ``subnet_size`` x ``subnet_size`` (256 by default)
   and regresses 3 gains, applied as a diagonal matrix to every pixel of the **full-resolution**
   image: ``wb[c] = gain[c] * x[c]``.
2. :class:`ConvCC` looks at the white-balanced image, shrunk the same way, and regresses a 3x3
   matrix applied to every full-resolution pixel: ``cc[c] = sum_k M[c, k] * wb[k]``.
3. :class:`ShallowConvNet`: conv 3x3 -> 16, InstanceNorm, LeakyReLU, conv 3x3 -> 64,
   InstanceNorm, LeakyReLU, conv 1x1 -> 3 (padding keeps the size).

Each image-to-parameter net is conv 7x7 -> 16, 5x5 -> 32, 3x3 -> 128 (each followed by LeakyReLU
and 2x2 max-pooling), adaptive average pooling to 1x1 and a linear layer to 3 gains (ConvWB) or 9
matrix entries (ConvCC). The linear layer has no output activation, as in the paper.

Initialisation: the last linear layer of ConvWB has zero weights and bias (1, 1, 1), and that of
ConvCC zero weights and the identity matrix as bias, so the two colour stages start as the identity
(:meth:`GenISP.color` returns its input unchanged before training) and training starts from the
plain XYZ image; the ConvNet has PyTorch's default initialisation.

Shrinking for the sub-nets (``resize_mode``): ``"area"`` (default) averages ``k x k`` blocks with
``k = floor(side / subnet_size)`` per axis, then resizes bilinearly to ``subnet_size`` (a box
prefilter, so noise in a dark image is averaged rather than aliased; ONNX-exportable, with ``k``
fixed at the traced size); ``"bilinear"`` resizes bilinearly without a prefilter.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from isplab.errors import IsplabError
from isplab.models.checkpoint import load_model, save_model

CONFIG_KEY = "genisp_config"
FACTORY = "isplab.models.genisp.genisp"
RESIZE_MODES = ("area", "bilinear")

__all__ = ["ConvCC", "ConvWB", "GenISP", "ShallowConvNet", "genisp", "load_genisp", "save_genisp", "shrink"]


def shrink(x: torch.Tensor, size: int, mode: str = "area") -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to ``(B, C, size, size)`` for the image-to-parameter nets.

    ``"area"``: average ``floor(H / size) x floor(W / size)`` blocks (when that is more than 1),
    then bilinear to ``size``; ``"bilinear"``: bilinear only (``align_corners=False``).
    """
    if mode not in RESIZE_MODES:
        raise IsplabError(f"unknown GenISP resize mode {mode!r}: expected one of {', '.join(RESIZE_MODES)}")
    if mode == "area":
        kh, kw = max(1, x.shape[-2] // size), max(1, x.shape[-1] // size)
        if kh > 1 or kw > 1:
            x = F.avg_pool2d(x, (kh, kw), stride=(kh, kw))
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class _ImageToParams(nn.Module):
    """Shrink, three conv + LeakyReLU + max-pool stages, global average pool, linear head."""

    def __init__(
        self,
        out_features: int,
        *,
        channels: tuple[int, int, int] = (16, 32, 128),
        size: int = 256,
        resize_mode: str = "area",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if resize_mode not in RESIZE_MODES:
            raise IsplabError(f"unknown GenISP resize mode {resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")
        c1, c2, c3 = channels
        self.size = int(size)
        self.resize_mode = resize_mode
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 7, padding=3),
            nn.LeakyReLU(negative_slope),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.LeakyReLU(negative_slope),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.LeakyReLU(negative_slope),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.head = nn.Linear(c3, out_features)

    def regress(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, out_features)``."""
        return self.head(self.features(shrink(x, self.size, self.resize_mode)))


class ConvWB(_ImageToParams):
    """White balance: ``(B, 3, H, W)`` -> 3 gains per image, applied to the full-resolution image."""

    def __init__(self, **kwargs) -> None:
        super().__init__(3, **kwargs)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.fill_(1.0)

    def gains(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3)`` gains (R, G, B order of the input's channels)."""
        return self.regress(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, H, W)``: each channel times its gain."""
        return x * self.gains(x)[:, :, None, None]


class ConvCC(_ImageToParams):
    """Colour correction: ``(B, 3, H, W)`` -> a 3x3 matrix per image, applied to every pixel."""

    def __init__(self, **kwargs) -> None:
        super().__init__(9, **kwargs)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.eye(3).reshape(9))

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 3)``, rows = output channels."""
        return self.regress(x).reshape(-1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, H, W)``: ``out[c] = sum_k M[c, k] * x[k]``."""
        return torch.einsum("bck,bkhw->bchw", self.matrix(x), x)


class ShallowConvNet(nn.Module):
    """conv 3x3 -> 16, IN, LReLU, conv 3x3 -> 64, IN, LReLU, conv 1x1 -> 3; keeps ``(H, W)``."""

    def __init__(self, channels: tuple[int, int] = (16, 64), negative_slope: float = 0.01) -> None:
        super().__init__()
        c1, c2 = channels
        self.layers = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            nn.InstanceNorm2d(c1, affine=True),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.InstanceNorm2d(c2, affine=True),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(c2, 3, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, H, W)``."""
        return self.layers(x)


class GenISP(nn.Module):
    """ConvWB -> ConvCC -> shallow ConvNet (see the module docstring).

    ``forward(x)``: ``(B, 3, H, W)`` camera-XYZ float -> ``(B, 3, H, W)`` float for the detector.
    """

    def __init__(
        self,
        *,
        subnet_channels: tuple[int, int, int] = (16, 32, 128),
        convnet_channels: tuple[int, int] = (16, 64),
        subnet_size: int = 256,
        resize_mode: str = "area",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        sub = {"channels": tuple(subnet_channels), "size": subnet_size, "resize_mode": resize_mode, "negative_slope": negative_slope}
        self.conv_wb = ConvWB(**sub)
        self.conv_cc = ConvCC(**sub)
        self.convnet = ShallowConvNet(tuple(convnet_channels), negative_slope)

    def color(self, x: torch.Tensor) -> torch.Tensor:
        """The two colour stages only: ``ConvCC(ConvWB(x))``, ``(B, 3, H, W)``."""
        return self.conv_cc(self.conv_wb(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, H, W)``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise IsplabError(f"GenISP expects a (B, 3, H, W) image, got shape {tuple(x.shape)}")
        return self.convnet(self.color(x))


def genisp(**config) -> GenISP:
    """Build a :class:`GenISP`; the arguments are kept as ``model.genisp_config`` (saved with it).

    Keywords: ``subnet_channels`` (16, 32, 128), ``convnet_channels`` (16, 64), ``subnet_size``
    (256), ``resize_mode`` (``"area"`` or ``"bilinear"``), ``negative_slope`` (0.01).

    Raises:
        IsplabError: an unknown keyword or a bad value.
    """
    defaults = {
        "subnet_channels": [16, 32, 128],
        "convnet_channels": [16, 64],
        "subnet_size": 256,
        "resize_mode": "area",
        "negative_slope": 0.01,
    }
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise IsplabError(f"unknown GenISP option(s) {', '.join(unknown)}: expected {', '.join(defaults)}")
    merged = {**defaults, **config}
    merged["subnet_channels"] = [int(c) for c in merged["subnet_channels"]]
    merged["convnet_channels"] = [int(c) for c in merged["convnet_channels"]]
    merged["subnet_size"] = int(merged["subnet_size"])
    merged["negative_slope"] = float(merged["negative_slope"])
    if len(merged["subnet_channels"]) != 3 or len(merged["convnet_channels"]) != 2:
        raise IsplabError("GenISP subnet_channels needs 3 numbers and convnet_channels 2")
    if min(merged["subnet_channels"] + merged["convnet_channels"]) < 1 or merged["subnet_size"] < 8:
        raise IsplabError(f"GenISP channel counts must be positive and subnet_size at least 8, got {merged}")
    model = GenISP(**merged)
    model.genisp_config = merged
    return model


def save_genisp(model: nn.Module, path: str | Path) -> Path:
    """Save a model built by :func:`genisp` (weights + its config)."""
    return save_model(model, path, CONFIG_KEY, FACTORY)


def load_genisp(path: str | Path) -> GenISP:
    """Load a model written by :func:`save_genisp` (CPU, eval mode).

    Raises:
        IsplabError: missing file, or not an isplab GenISP model (one line naming the file).
    """
    return load_model(path, CONFIG_KEY, lambda c: genisp(**c), "GenISP model")
