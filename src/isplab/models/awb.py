"""Neural auto white balance networks: zone statistics + lux -> kelvin.

Every model here has libcamera's ``rpi.nn.awb`` contract: ``forward(image, lux)`` with ``image`` the
``(B, H, W, 3)`` float32 zone statistics (NHWC, after the 5000 K gains and CCM, ~``[0, 1]``) and
``lux`` ``(B,)`` float32, returning ``(B,)`` float32 colour temperature in kelvin. All
normalisation happens inside, so the exported TFLite file drops into libcamera unchanged.

The networks are generic: the zone grid ``size = (H, W)`` and the predicted ``temperature_range``
are arguments (:func:`build_awb_net`). Raspberry Pi's targets (``pisp`` 32x32, ``vc4`` 12x16) and
range (2800..7600 K) are the AWB workflow's (:mod:`isplab.workflows.awb.model` builds by target).

Architectures (``arch``):

* ``"reference"``: Raspberry Pi's network exactly (see ``docs`` / the reference TFLite models):
  clipped log R/G and B/G with log(lux)/10 as the middle channel, 'valid' 3x3 conv + ReLU layers
  (``filters``: PiSP 16/32/64, VC4 32/64) with 2x2 max-pooling between, dropout 0.1, a dense
  softmax over 10 classes spanning the temperature range and temperature = sum(p^2 T_i) / sum(p^2).
* ``"chroma"``: grids taller than 16 zones averaged 2x2 first, unclipped log-chroma features plus
  brightness, 'same' convs, global average and max pooling (a scene's colours matter more than
  its layout), lux fed to the head, and a regression in mireds bounded to the temperature range.
* ``"histogram"``: a CNN over the zones' 2-D log-chroma histogram plus lux (the colour
  constancy literature's representation); measured worse than ``"chroma"`` on held-out scenes.
* ``"small"``: ``"chroma"``'s features, pooling and head with depthwise-separable convs and a
  narrower head; with its defaults 4673 parameters, 7x fewer than the reference's PiSP network, and
  a float32 TFLite file smaller than Raspberry Pi's (``tests/models/test_awb_small.py`` checks both).
* ``"hybrid"``: ``"chroma"``'s CNN with the 40 hand-crafted colour-constancy features of
  :func:`isplab.models.awb_features.colour_constancy_features` (grey world, shades of grey, grey
  edge, max-RGB, bright-zone means, log-chroma quantiles...) computed from the zones and lux
  inside the network, standardised by a batch norm's running statistics (:class:`FeatureNorm`)
  and fed to the head next to the pooled conv features and lux: one model and one TFLite file
  instead of a blend of the CNN with an MLP on the features.
* ``"blend"``: that blend in one model (:class:`BlendAWBNet`): ``ensemble`` ``"chroma"`` CNNs and
  as many MLPs on the normalised colour-constancy features (computed once), each member trained on
  its own loss, the prediction the mean of all members' mireds (equal weight on the CNNs and the
  MLPs). Always an ensemble, even with ``ensemble=1`` (one CNN, one MLP).

``ensemble=N`` (any arch) builds :class:`AWBEnsemble`: N independently initialised members whose
mireds are averaged, still one module and one TFLite file.

:func:`with_sensor_embedding` wraps any of them in :class:`SensorAWB`, one network trained jointly
on several sensors with a learned vector per sensor (``awb_config["sensors"]`` lists them);
:func:`select_sensor` fixes the sensor, giving back the two-input contract for export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.models.awb_features import FEATURE_NAMES, colour_constancy_features
from isplab.models.checkpoint import load_model, save_model

ARCHS = ("reference", "chroma", "histogram", "small", "hybrid", "blend")


def reference_features(image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
    """The reference network's input normalisation.

    Args:
        image: ``(B, H, W, 3)`` zone statistics.
        lux: ``(B,)``.

    Returns:
        ``(B, H, W, 3)``: ``(log(clip(R/G, 0.01, 1)) + 1) / 2``, ``log(lux) / 10``,
        ``(log(clip(B/G, 0.01, 1)) + 1) / 2`` with G clipped to ``[0.1, 1]``, all clipped to ``[0, 1]``.
    """
    green = image[..., 1].clamp(0.1, 1.0)
    red = (torch.log((image[..., 0] / green).clamp(0.01, 1.0)) + 1.0) * 0.5
    blue = (torch.log((image[..., 2] / green).clamp(0.01, 1.0)) + 1.0) * 0.5
    light = (torch.log(lux) / 10.0).reshape(-1, 1, 1) * torch.ones_like(green)
    return torch.stack([red, light, blue], dim=-1).clamp(0.0, 1.0)


def chroma_features(image: torch.Tensor) -> torch.Tensor:
    """Log-chroma and brightness per zone, without the reference's clipping of R/G, B/G at 1.

    Args:
        image: ``(B, H, W, 3)`` zone statistics.

    Returns:
        ``(B, 3, H, W)``: ``log(R/G) / 2``, ``log(B/G) / 2`` (ratios clipped to ``[e^-4, e^4]``)
        and ``log(G) / 8`` (G clipped to ``[e^-8, 1]``; the network learns to trust dark zones less).
    """
    eps = 3.4e-4  # ~e^-8: keeps logs of black zones finite
    rgb = image.clamp(eps, 1.0)
    log_rgb = torch.log(rgb)
    red = (log_rgb[..., 0] - log_rgb[..., 1]).clamp(-4.0, 4.0) * 0.5
    blue = (log_rgb[..., 2] - log_rgb[..., 1]).clamp(-4.0, 4.0) * 0.5
    return torch.stack([red, blue, log_rgb[..., 1] * 0.125], dim=1)


def _check_input(image: torch.Tensor, lux: torch.Tensor, size: tuple[int, int]) -> None:
    height, width = size
    if image.ndim != 4 or tuple(image.shape[1:]) != (height, width, 3):
        raise IsplabError(
            f"AWB model for {width} wide x {height} high zones expects image (B, {height}, {width}, 3) "
            f"NHWC zone statistics, got {tuple(image.shape)}"
        )
    if lux.ndim != 1 or lux.shape[0] != image.shape[0]:
        raise IsplabError(f"lux must have shape ({image.shape[0]},), got {tuple(lux.shape)}")


class ReferenceAWBNet(nn.Module):
    """Raspberry Pi's reference AWB network (see the module docstring).

    The flatten is in NHWC order, like Keras, so the dense weights line up with the reference's.

    Args:
        size: zone grid ``(H, W)``.
        temperature_range: ``(low, high)`` kelvin spanned by the ``classes`` output temperatures.
        filters: widths of the conv layers (Raspberry Pi's: 16, 32, 64 on PiSP; 32, 64 on VC4).
    """

    def __init__(
        self,
        size: tuple[int, int],
        temperature_range: tuple[float, float],
        filters: tuple[int, ...] = (16, 32, 64),
        dropout: float = 0.1,
        classes: int = 10,
    ) -> None:
        super().__init__()
        self.size = tuple(size)
        layers: list[nn.Module] = []
        channels = 3
        height, width = self.size
        for i, width_out in enumerate(filters):
            if i:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            layers += [nn.Conv2d(channels, width_out, 3), nn.ReLU()]
            channels, height, width = width_out, height - 2, width - 2
        if height < 1 or width < 1:
            raise IsplabError(
                f"a {self.size[1]} wide x {self.size[0]} high zone grid is too small for {len(filters)} 'valid' conv layers"
            )
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(channels * height * width, classes)
        self.register_buffer("class_temps", torch.linspace(*temperature_range, classes))

    def forward(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)``, ``(B,)`` -> ``(B,)`` kelvin."""
        _check_input(image, lux, self.size)
        x = self.features(reference_features(image, lux).permute(0, 3, 1, 2))
        x = self.dropout(x.permute(0, 2, 3, 1).flatten(1))
        p2 = torch.softmax(self.dense(x), dim=1) ** 2
        return (p2 * self.class_temps).sum(dim=1) / p2.sum(dim=1)


class ChromaAWBNet(nn.Module):
    """Log-chroma CNN with global pooling and a bounded mired regression (see module docstring).

    Args:
        size: zone grid ``(H, W)``.
        temperature_range: ``(low, high)`` kelvin the prediction is bounded to.
        width: channels of the first conv block (the second has twice as many).
        hidden: size of the head's hidden layer.
        dropout: dropout before the output layer.
    """

    def __init__(
        self,
        size: tuple[int, int],
        temperature_range: tuple[float, float],
        width: int = 24,
        hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.size = tuple(size)

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]

        # PiSP's 32x32 zones are averaged to 16x16 first (zone means of 2x2 zones, before taking
        # logs): four times cheaper, and VC4's 12x16 grid shows that resolution is enough.
        self.pool_input = nn.AvgPool2d(2) if self.size[0] > 16 else nn.Identity()
        self.features = nn.Sequential(
            *conv(3, width), *conv(width, width), nn.MaxPool2d(2),
            *conv(width, 2 * width), nn.MaxPool2d(2), *conv(2 * width, 2 * width),
        )
        self.head = nn.Sequential(
            nn.Linear(4 * width + 1, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )
        low, high = (1e6 / t for t in reversed(temperature_range))
        self.mired_low, self.mired_span = low, high - low

    def head_input(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(B, 4 width + 1)``: the conv features' global average and max pooling and ``log(lux) / 10``."""
        image = self.pool_input(image.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.features(chroma_features(image))
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3)), (torch.log(lux.clamp(min=1.0)) / 10.0)[:, None]], 1)

    def mireds(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)``, ``(B,)`` -> ``(B,)`` predicted mireds within the temperature range."""
        _check_input(image, lux, self.size)
        return self.mired_low + self.mired_span * torch.sigmoid(self.head(self.head_input(image, lux))[:, 0])

    def forward(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)``, ``(B,)`` -> ``(B,)`` kelvin."""
        return 1e6 / self.mireds(image, lux)


def log_chroma_histogram(image: torch.Tensor, bins: int = 32, extent: float = 1.5) -> torch.Tensor:
    """Soft 2-D histogram of the zones' (log(R/G), log(B/G)), weighted by how usable a zone is.

    A change of illuminant shifts the histogram (approximately) without changing its shape, which
    is what makes histogram methods (Barron's CCC/FFCC) generalise across scenes.

    Args:
        image: ``(B, H, W, 3)`` zone statistics.
        bins: bins per axis, centred evenly on ``[-extent, extent]`` (log units).

    Returns:
        ``(B, 1, bins, bins)``: square root of the histogram normalised to sum 1 (rows: log R/G,
        columns: log B/G). Zones count in proportion to their brightness up to G = 0.02, and
        not at all when dark (G < 0.001) or when a channel is saturated (>= 0.98).
    """
    features = chroma_features(image)  # (B, 3, H, W): log ratios / 2, log G / 8
    u = (features[:, 0] * 2).flatten(1)
    v = (features[:, 1] * 2).flatten(1)
    green = image[..., 1].flatten(1)
    usable = (image.amax(dim=-1).flatten(1) < 0.98).to(image.dtype)
    weight = ((green - 0.001) / 0.019).clamp(0.0, 1.0) * usable  # (B, Z)
    step = 2 * extent / (bins - 1)
    centres = torch.linspace(-extent, extent, bins, dtype=image.dtype, device=image.device)
    # Triangular (linear-interpolation) binning: each zone spreads over its 2 nearest bins per axis.
    pu = (1 - (u[..., None] - centres).abs() / step).clamp(min=0.0) * weight[..., None]  # (B, Z, bins)
    pv = (1 - (v[..., None] - centres).abs() / step).clamp(min=0.0)
    hist = torch.bmm(pu.transpose(1, 2), pv)  # (B, bins, bins)
    hist = hist / (hist.sum(dim=(1, 2), keepdim=True) + 1e-6)
    return torch.sqrt(hist + 1e-8)[:, None]


class HistogramAWBNet(nn.Module):
    """CNN over the log-chroma histogram (:func:`log_chroma_histogram`) plus lux, regressing mireds.

    Args:
        size: zone grid ``(H, W)``.
        temperature_range: ``(low, high)`` kelvin the prediction is bounded to.
        bins, extent: histogram size and half-range (log units).
        width: channels of the first conv layer (then 2x).
        hidden: size of the head's hidden layer.
        dropout: dropout before the output layer.
    """

    def __init__(
        self,
        size: tuple[int, int],
        temperature_range: tuple[float, float],
        bins: int = 32,
        extent: float = 1.5,
        width: int = 8,
        hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.size, self.bins, self.extent = tuple(size), bins, extent
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        )
        # Flatten rather than global pooling: where the histogram lies in chroma space is the answer.
        self.head = nn.Sequential(
            nn.Linear(2 * width * (bins // 4) ** 2 + 1, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )
        low, high = (1e6 / t for t in reversed(temperature_range))
        self.mired_low, self.mired_span = low, high - low

    def mireds(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)``, ``(B,)`` -> ``(B,)`` predicted mireds within the temperature range."""
        _check_input(image, lux, self.size)
        x = self.features(log_chroma_histogram(image, self.bins, self.extent)).flatten(1)
        x = torch.cat([x, (torch.log(lux.clamp(min=1.0)) / 10.0)[:, None]], dim=1)
        return self.mired_low + self.mired_span * torch.sigmoid(self.head(x)[:, 0])

    def forward(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)``, ``(B,)`` -> ``(B,)`` kelvin."""
        return 1e6 / self.mireds(image, lux)


class SmallAWBNet(ChromaAWBNet):
    """``"chroma"`` made small: one full 3x3 conv, then depthwise-separable blocks (a 3x3 conv per
    channel followed by a 1x1 conv mixing channels); the input pooling, global average and max
    pooling, lux and bounded mired regression are :class:`ChromaAWBNet`'s.

    Args:
        size: zone grid ``(H, W)``.
        temperature_range: ``(low, high)`` kelvin the prediction is bounded to.
        width: channels of the first conv (the second separable block has twice as many).
        hidden: size of the head's hidden layer.
        dropout: dropout before the output layer.
    """

    def __init__(
        self,
        size: tuple[int, int],
        temperature_range: tuple[float, float],
        width: int = 16,
        hidden: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(size, temperature_range, width=width, hidden=hidden, dropout=dropout)

        def separable(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, cout, 1), nn.ReLU()]

        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            *separable(width, 2 * width), nn.MaxPool2d(2),
            *separable(2 * width, 2 * width),
        )


class FeatureNorm(nn.BatchNorm1d):
    """Per-feature standardisation learned as running statistics: :class:`torch.nn.BatchNorm1d`
    without an affine part, except that a training batch of one image uses the running
    statistics (batch norm cannot standardise a single row). In eval mode, and so in an exported
    TFLite file, it is a fixed per-feature scale and offset."""

    def __init__(self, features: int) -> None:
        super().__init__(features, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(x)


class HybridAWBNet(ChromaAWBNet):
    """``"chroma"``'s CNN with the hand-crafted colour-constancy features of
    :func:`isplab.models.awb_features.colour_constancy_features` (computed from the full zone grid
    and lux inside the network) fed to its head next to the pooled conv features and lux.

    The features are standardised inside the network by :class:`FeatureNorm` (batch norm without
    an affine part: in eval mode and in the exported TFLite file a fixed per-feature scale and
    offset from running statistics over the training batches), which is what the feature MLP's
    standardisation does with the training set's statistics. A LayerNorm over each image's 40
    features was not used: 34 of them are log-chroma estimates that a change of illuminant shifts
    together, and the LayerNorm's centring (subtracting the image's mean feature) alone takes 85 %
    of such a shift out of each of them (``tests/models/test_awb_hybrid.py``), removing much of
    the signal the features carry. Only the batch norm was trained and measured
    (``benchmarks/awb_rpi.py``'s docstring).

    Takes :class:`ChromaAWBNet`'s arguments.
    """

    def __init__(self, size: tuple[int, int], temperature_range: tuple[float, float], width: int = 24,
                 hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__(size, temperature_range, width=width, hidden=hidden, dropout=dropout)
        self.feature_norm = FeatureNorm(len(FEATURE_NAMES))
        self.head = nn.Sequential(
            nn.Linear(4 * width + 1 + len(FEATURE_NAMES), hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def head_input(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(B, 4 width + 1 + 40)``: ``"chroma"``'s head input, then the normalised features."""
        features = self.feature_norm(colour_constancy_features(image, lux))
        return torch.cat([super().head_input(image, lux), features], dim=1)


class AWBEnsemble(nn.Module):
    """Average of several AWB models' predictions, taken in mireds."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_mireds(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(M, B)`` mireds of each member (training gives each member its own loss)."""
        return torch.stack([1e6 / member(image, lux) for member in self.members])

    def forward(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)``, ``(B,)`` -> ``(B,)`` kelvin."""
        return 1e6 / self.member_mireds(image, lux).mean(dim=0)


class BlendAWBNet(AWBEnsemble):
    """``ensemble`` ``"chroma"`` CNNs and as many MLPs on the colour-constancy features, averaged
    in mireds: the out-of-fold blend that ``benchmarks/awb_rpi.py --features`` measured, as one
    module (and one TFLite file).

    The 40 features of :func:`isplab.models.awb_features.colour_constancy_features` are computed
    once per image, standardised by one :class:`FeatureNorm`, and fed to each MLP (two hidden ReLU
    layers of ``feature_hidden`` units, output bounded to the temperature range as in ``"chroma"``).
    :meth:`member_mireds` gives the CNNs' rows first, then the MLPs': training gives each its own
    loss. With ``ensemble`` members of each kind the mean weighs the two kinds equally.

    Training weighs the MLPs' losses by :attr:`FEATURE_LOSS_WEIGHT` (:meth:`member_loss_weights`).
    The two kinds share no parameter and Adam's steps do not depend on the scale of a parameter's
    gradient, so each member learns as it would with weight 1, while the loss that the learning-rate
    schedule and early stopping watch is the CNNs': the MLPs' larger training loss would otherwise
    halve the rate for the CNNs too early. The MLPs are initialised from a fork of the random
    state, so the CNNs start, and draw their dropout, as a ``"chroma"`` ensemble of the same seed
    does: four epochs of both give the same CNN weights to a relative 1e-4
    (``tests/workflows/awb/test_train.py``).

    Args:
        size: zone grid ``(H, W)``.
        temperature_range: ``(low, high)`` kelvin of the predictions.
        ensemble: CNNs, and MLPs, in the model (at least one of each).
        width, hidden, dropout: the CNNs' options (:class:`ChromaAWBNet`).
        feature_hidden: units of each of the MLPs' two hidden layers.
        histogram_bins: also give the MLPs the ``bins x bins`` log-chroma histogram
            (:func:`log_chroma_histogram`), standardised with the features (0: not).
    """

    def __init__(
        self,
        size: tuple[int, int],
        temperature_range: tuple[float, float],
        ensemble: int = 3,
        width: int = 24,
        hidden: int = 64,
        dropout: float = 0.1,
        feature_hidden: int = 64,
        histogram_bins: int = 0,
    ) -> None:
        super().__init__([ChromaAWBNet(size, temperature_range, width=width, hidden=hidden, dropout=dropout)
                          for _ in range(ensemble)])
        self.size = tuple(size)
        low, high = (1e6 / t for t in reversed(temperature_range))
        self.mired_low, self.mired_span = low, high - low
        if histogram_bins < 0 or histogram_bins == 1:
            raise IsplabError(f"bad histogram_bins {histogram_bins}: expected 0 (none) or 2 or more")
        self.histogram_bins = int(histogram_bins)
        inputs = len(FEATURE_NAMES) + self.histogram_bins**2
        self.feature_norm = FeatureNorm(inputs)
        with torch.random.fork_rng(devices=[]):
            self.feature_heads = nn.ModuleList(
                nn.Sequential(
                    nn.Linear(inputs, feature_hidden), nn.ReLU(),
                    nn.Linear(feature_hidden, feature_hidden), nn.ReLU(), nn.Linear(feature_hidden, 1),
                )
                for _ in range(ensemble)
            )

    #: Weight of each feature MLP's loss against a CNN's 1 (see the class docstring).
    FEATURE_LOSS_WEIGHT = 1e-3

    def member_loss_weights(self) -> torch.Tensor:
        """``(2 M,)`` training-loss weights of the rows of :meth:`member_mireds`."""
        return torch.tensor([1.0] * len(self.members) + [self.FEATURE_LOSS_WEIGHT] * len(self.feature_heads))

    def feature_mireds(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(M, B)`` mireds of the feature MLPs."""
        _check_input(image, lux, self.size)
        features = colour_constancy_features(image, lux)
        if self.histogram_bins:
            histogram = log_chroma_histogram(image, bins=self.histogram_bins).flatten(1)
            features = torch.cat([features, histogram], dim=1)
        features = self.feature_norm(features)
        logits = torch.stack([head(features)[:, 0] for head in self.feature_heads])
        return self.mired_low + self.mired_span * torch.sigmoid(logits)

    def member_mireds(self, image: torch.Tensor, lux: torch.Tensor) -> torch.Tensor:
        """``(2 M, B)``: the CNNs' mireds, then the feature MLPs'."""
        return torch.cat([super().member_mireds(image, lux), self.feature_mireds(image, lux)])


class CalibratedAWB(nn.Module):
    """Test-time augmentation and calibration around an AWB network, in one module (and so in one
    exported TFLite file).

    ``flip``: the prediction is the mean, in mireds, of the network's on the statistics and on
    their horizontal mirror image (a mirrored scene has the same illuminant); both run as one
    batch of two. ``scale``, ``offset``: an affine map of the (averaged) mireds, ``offset +
    scale * mireds``, fitted on the training images (:func:`fit_calibration`); the result is kept
    above 1 mired.

    Args:
        net: an AWB network (``forward(image, lux) -> kelvin``), e.g. from :func:`build_awb_net`.
        flip: average with the mirrored statistics.
        scale, offset: the calibration (1, 0: none).
    """

    def __init__(self, net: nn.Module, flip: bool = True, scale: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.flip = bool(flip)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("offset", torch.tensor(float(offset)))

    def raw_mireds(self, image: torch.Tensor, lux: torch.Tensor, sensor: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` mireds before the calibration (flip-averaged when ``flip``); ``sensor``: per-image
        sensor indices for a :class:`SensorAWB` network (``None``: its selected sensor, or none)."""
        extra = {} if sensor is None else {"sensor": sensor}
        if not self.flip:
            return 1e6 / self.net(image, lux, **extra)
        if sensor is not None:
            extra = {"sensor": torch.cat([sensor, sensor])}
        both = 1e6 / self.net(torch.cat([image, image.flip(2)]), torch.cat([lux, lux]), **extra)
        return 0.5 * (both[: image.shape[0]] + both[image.shape[0] :])

    def forward(self, image: torch.Tensor, lux: torch.Tensor, sensor: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, W, 3)``, ``(B,)`` -> ``(B,)`` kelvin."""
        return 1e6 / (self.offset + self.scale * self.raw_mireds(image, lux, sensor)).clamp(min=1.0)


class SensorAWB(nn.Module):
    """One AWB network trained jointly on several sensors, with a learned vector per sensor.

    Each sensor ``s`` has per-channel log gains ``g_s`` applied to the statistics before the
    network (``image * exp(g_s)``: a sensor's spectral response shifts its zone chroma after the
    5000 K gains and CCM) and an affine map of the network's mireds, ``exp(a_s) * mireds + 50 b_s``
    (kept above 1 mired). All start at the identity, so an untrained embedding changes nothing.

    ``forward(image, lux, sensor)`` takes ``(B,)`` sensor indices into ``sensors``; without them the
    ``selected`` sensor is used (:func:`select_sensor`), which is how one exported TFLite file per
    sensor keeps libcamera's two-input contract (the index is a constant of the graph).

    Args:
        net: an AWB network of :func:`build_awb_net` (ensembles included).
        sensors: the sensor names, in index order.
    """

    def __init__(self, net: nn.Module, sensors: list[str]) -> None:
        super().__init__()
        if not sensors or len(set(sensors)) != len(sensors):
            raise IsplabError(f"a sensor embedding needs distinct sensor names, got {list(sensors)}")
        self.net = net
        self.sensors = [str(s) for s in sensors]
        self.log_gain = nn.Parameter(torch.zeros(len(sensors), 3))
        self.log_scale = nn.Parameter(torch.zeros(len(sensors)))
        self.offset = nn.Parameter(torch.zeros(len(sensors)))
        self.selected: int | None = None

    def _vectors(self, sensor: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if sensor is None:
            if self.selected is None:
                raise IsplabError(
                    f"this AWB model was trained jointly on sensors {', '.join(self.sensors)}: "
                    "say which sensor the statistics come from (sensors=..., or a file exported with awb export --sensor S)"
                )
            i = self.selected  # a constant of an exported graph
            return self.log_gain[i].reshape(1, 1, 1, 3), self.log_scale[i].reshape(1), self.offset[i].reshape(1)
        sensor = sensor.long()
        return self.log_gain[sensor][:, None, None, :], self.log_scale[sensor], self.offset[sensor]

    def member_mireds(self, image: torch.Tensor, lux: torch.Tensor, sensor: torch.Tensor | None = None) -> torch.Tensor:
        """``(M, B)`` mireds of each member of the network, with the sensors' gains and affine map."""
        gain, log_scale, offset = self._vectors(sensor, image.shape[0])
        mireds = member_mireds(self.net, image * torch.exp(gain), lux)
        return (torch.exp(log_scale) * mireds + 50.0 * offset).clamp(min=1.0)

    def forward(self, image: torch.Tensor, lux: torch.Tensor, sensor: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, W, 3)``, ``(B,)`` (and ``(B,)`` sensor indices) -> ``(B,)`` kelvin."""
        return 1e6 / self.member_mireds(image, lux, sensor).mean(dim=0)


def with_sensor_embedding(net: nn.Module, sensors: list[str]) -> SensorAWB:
    """Wrap a network of :func:`build_awb_net` in a :class:`SensorAWB` for ``sensors``; its
    ``awb_config`` records the sensor list, so :func:`save_awb_model` / :func:`load_awb_model`
    round-trip it."""
    model = SensorAWB(net, list(sensors))
    model.awb_config = {**net.awb_config, "sensors": list(model.sensors)}
    return model


def sensor_part(model: nn.Module) -> SensorAWB | None:
    """The :class:`SensorAWB` of ``model`` (itself, or inside a :class:`CalibratedAWB`), else ``None``."""
    inner = base_net(model)
    return inner if isinstance(inner, SensorAWB) else None


def model_sensors(model: nn.Module) -> list[str] | None:
    """The sensors a jointly trained model knows, ``None`` for a model without a sensor embedding."""
    part = sensor_part(model)
    return None if part is None else list(part.sensors)


def sensor_index(model: nn.Module, sensor: str) -> int:
    """``sensor``'s index in a jointly trained model.

    Raises:
        IsplabError: the model has no sensor embedding, or does not know ``sensor`` (naming those it knows).
    """
    known = model_sensors(model)
    if known is None:
        raise IsplabError(f"this AWB model has no sensor embedding, so --sensor {sensor} does not apply to it")
    if sensor not in known:
        raise IsplabError(f"unknown sensor {sensor!r}: this AWB model knows {', '.join(known)}")
    return known.index(sensor)


def select_sensor(model: nn.Module, sensor: str) -> nn.Module:
    """A copy of a jointly trained model with ``sensor`` fixed: ``forward(image, lux)`` then has
    libcamera's contract (what ``awb export --sensor`` exports).

    Raises:
        IsplabError: as :func:`sensor_index`.
    """
    import copy

    index = sensor_index(model, sensor)
    model = copy.deepcopy(model)
    sensor_part(model).selected = index
    return model


def fit_calibration(predicted_mireds, true_mireds) -> tuple[float, float]:
    """Least-squares ``(scale, offset)`` with ``true ~ offset + scale * predicted`` (mireds).

    Returns ``(1, 0)`` (no calibration) for fewer than 2 images or predictions that do not vary.
    """
    x = torch.as_tensor(predicted_mireds, dtype=torch.float64).flatten()
    y = torch.as_tensor(true_mireds, dtype=torch.float64).flatten()
    if x.numel() < 2 or float(x.std()) < 1e-6:
        return 1.0, 0.0
    xc, yc = x - x.mean(), y - y.mean()
    scale = float((xc * yc).sum() / (xc * xc).sum())
    return scale, float(y.mean() - scale * x.mean())


def member_mireds(model: nn.Module, image: torch.Tensor, lux: torch.Tensor, sensor: torch.Tensor | None = None) -> torch.Tensor:
    """``(M, B)`` mireds of each ensemble member, ``M = 1`` for a single model; ``sensor``: the
    images' sensor indices for a :class:`SensorAWB`."""
    if isinstance(model, SensorAWB):
        return model.member_mireds(image, lux, sensor)
    if isinstance(model, AWBEnsemble):
        return model.member_mireds(image, lux)
    return (1e6 / model(image, lux))[None]


def member_loss_weights(model: nn.Module) -> torch.Tensor | None:
    """``(M,)`` training-loss weights of the rows of :func:`member_mireds` (through a
    :class:`CalibratedAWB` or :class:`SensorAWB` wrapper), or ``None``: all equal."""
    while isinstance(model, (CalibratedAWB, SensorAWB)):
        model = model.net
    return model.member_loss_weights() if isinstance(model, BlendAWBNet) else None


#: The network class of each arch (``"blend"`` and ensembles of the others: :func:`build_awb_net`).
ARCH_CLASSES: dict[str, type[nn.Module]] = {
    "reference": ReferenceAWBNet, "chroma": ChromaAWBNet, "histogram": HistogramAWBNet, "small": SmallAWBNet,
    "hybrid": HybridAWBNet, "blend": BlendAWBNet,
}


def build_awb_net(
    arch: str,
    size: tuple[int, int],
    temperature_range: tuple[float, float],
    *,
    ensemble: int = 1,
    **options: Any,
) -> nn.Module:
    """Build an AWB network by architecture name (see the module docstring for the contract).

    Args:
        arch: ``"reference"``, ``"chroma"``, ``"histogram"``, ``"small"``, ``"hybrid"`` or ``"blend"``.
        size: zone grid ``(H, W)`` of the statistics the network takes.
        temperature_range: ``(low, high)`` kelvin of its predictions.
        ensemble: number of independently initialised members averaged (1: a single model);
            ``"blend"``: CNNs, and as many feature MLPs.
        **options: the architecture's keyword arguments (reference: ``filters``, ``dropout``,
            ``classes``; chroma, small and hybrid: ``width``, ``hidden``, ``dropout``; histogram: ``bins``,
            ``extent``, ``width``, ``hidden``, ``dropout``; blend: chroma's and ``feature_hidden``).

    Returns:
        The network, with ``awb_config`` (``arch``, ``size``, ``temperature_range``, ``ensemble``,
        ``options``): what :func:`awb_net_from_config` and :func:`save_awb_model` need.

    Raises:
        IsplabError: unknown arch, a bad size or range, ``ensemble < 1``, or options the arch does not take.
    """
    if arch not in ARCHS:
        raise IsplabError(f"unknown AWB arch {arch!r}: expected one of {', '.join(ARCHS)}")
    size = tuple(int(n) for n in size)
    low, high = (float(t) for t in temperature_range)
    if len(size) != 2 or min(size) < 1:
        raise IsplabError(f"bad AWB zone grid {size}: expected (height, width) of at least one zone")
    if not 0 < low < high:
        raise IsplabError(f"bad AWB temperature range {temperature_range}: expected 0 < low < high kelvin")
    if ensemble < 1:
        raise IsplabError(f"ensemble must be >= 1, got {ensemble}")
    if "filters" in options:
        options["filters"] = tuple(options["filters"])
    if arch == "blend":
        try:
            model = BlendAWBNet(size, (low, high), ensemble=ensemble, **options)
        except TypeError as e:
            raise IsplabError(f"bad options {options} for AWB arch 'blend': {e}") from None
        model.awb_config = {
            "arch": arch, "size": size, "temperature_range": (low, high), "ensemble": ensemble, "options": dict(options),
        }
        return model
    cls = ARCH_CLASSES[arch]
    try:
        members = [cls(size, (low, high), **options) for _ in range(ensemble)]
    except TypeError as e:
        raise IsplabError(f"bad options {options} for AWB arch {arch!r}: {e}") from None
    model = members[0] if ensemble == 1 else AWBEnsemble(members)
    model.awb_config = {
        "arch": arch, "size": size, "temperature_range": (low, high), "ensemble": ensemble, "options": dict(options),
    }
    return model


def awb_net_from_config(config: dict) -> nn.Module:
    """Rebuild the untrained network an ``awb_config`` describes; other keys of it (e.g. the
    workflow's ``target``) are kept in the new model's ``awb_config``.

    Raises:
        IsplabError: the config lacks ``arch``, ``size`` or ``temperature_range``, or is invalid.
    """
    missing = [key for key in ("arch", "size", "temperature_range") if key not in config]
    if missing:
        raise IsplabError(f"AWB model config lacks {', '.join(missing)}")
    model = build_awb_net(
        config["arch"], config["size"], config["temperature_range"],
        ensemble=config.get("ensemble", 1), **config.get("options", {}),
    )
    model.awb_config = {k: v for k, v in {**config, **model.awb_config}.items()
                        if k not in ("calibration", "flip_average", "sensors")}
    if "sensors" in config:  # a SensorAWB: the embedding comes with the state dict
        model = with_sensor_embedding(model, config["sensors"])
    if "calibration" in config:  # a CalibratedAWB: the buffers come with the state dict
        model = calibrated(model, flip=bool(config.get("flip_average", False)))
    return model


def calibrated(net: nn.Module, flip: bool = True, scale: float = 1.0, offset: float = 0.0) -> CalibratedAWB:
    """Wrap ``net`` (a network of :func:`build_awb_net`, or a :class:`CalibratedAWB`, whose network
    is taken) in a :class:`CalibratedAWB` whose ``awb_config`` records the wrapping, so
    :func:`save_awb_model` / :func:`load_awb_model` round-trip it."""
    if isinstance(net, CalibratedAWB):
        net = net.net
    model = CalibratedAWB(net, flip=flip, scale=scale, offset=offset)
    model.awb_config = {**net.awb_config, "flip_average": bool(flip), "calibration": True}
    return model


def base_net(model: nn.Module) -> nn.Module:
    """The network inside a :class:`CalibratedAWB`, or ``model`` itself."""
    return model.net if isinstance(model, CalibratedAWB) else model


def save_awb_model(model: nn.Module, path: str | Path) -> Path:
    """Save a model built by :func:`build_awb_net` as a ``.pt`` file (state dict + ``awb_config``)."""
    return save_model(model, path, "awb_config", "build_awb_net")


def load_awb_model(path: str | Path) -> nn.Module:
    """Load a model written by :func:`save_awb_model` (on the CPU, in eval mode).

    Raises:
        IsplabError: missing file, or not an isplab AWB model file.
    """
    return load_model(path, "awb_config", awb_net_from_config, "AWB model")
