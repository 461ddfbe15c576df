"""A classical prior for learned ISPs: the model is ``classical(x) + net(x) - 0.5``.

``isplab isp train --prior classical`` (``build_isp_model(..., prior="classical")``) wraps an
architecture of :mod:`isplab.models.isp` in :class:`PriorISP`: the output is a classical
rendering of the packed raw plus the network's correction. The network's last layer starts at
zero, so its sigmoid/tanh head outputs exactly 0.5 and the model **equals** the classical render
at initialisation; training can only learn corrections (denoising, demosaicking detail, colour,
exposure) instead of gamma, tone curve and colour matrix from scratch.

The classical render (:class:`ClassicalPrior`) works on packed ``(B, 4, h, w)`` planes in the
canonical R, Gr, Gb, B order of an **RGGB** layout and returns ``(B, 3, 2h, 2w)`` sRGB. Metadata-aware
input is RGGB whatever the sensor (:func:`isplab.workflows.isp.data.apply_colour` re-samples it);
blind input is the sensor's own planes, so a blind prior assumes an RGGB sensor (that of isplab's
synthetic data). It is built from differentiable ops that export to ONNX
(padding, slicing, pixel shuffle, means, matmul, clamp, power):

* metadata-aware models (input already white-balanced, colour-corrected and exposed with the
  raw's own metadata, :func:`isplab.workflows.isp.data.model_input`): bilinear demosaicking of
  the planes (:func:`demosaic_bilinear_planes`), clip to [0, 1], sRGB gamma
  (:func:`isplab.isp.gamma.linear_to_srgb`) and the smoothstep tone curve
  (:func:`isplab.isp.tone.smoothstep_tone`) the synthetic targets and the baselines use;
* blind models: first grey-world white balance from the input's own plane means, an
  auto-exposure that scales the white-balanced planes' mean to a **learnable** target
  (``exp(log_exposure_target)``, initialised to :data:`EXPOSURE_TARGET`, middle grey), clip,
  demosaic, the colour matrix of an average training camera (:func:`generic_camera_to_srgb`, the
  ``greyworld`` baseline's), clip, gamma and tone. An exposure-aware blind model
  (``auto_exposure=False``, ``isplab isp train --exposure``) gets input already brightened by the
  raw's own exposure and skips the auto-exposure: it then starts as the ``greyworld`` baseline. The means are taken over the whole input, so a
  tile of a tiled run gets its own white balance and exposure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from isplab.errors import IsplabError
from isplab.isp.gamma import linear_to_srgb
from isplab.isp.tone import smoothstep_tone

#: the ``prior`` values :func:`isplab.models.isp.build_isp_model` accepts
PRIORS = ("none", "classical")
#: the blind prior's initial auto-exposure target: mean of the white-balanced linear planes
EXPOSURE_TARGET = 0.18
#: smallest plane mean the blind prior divides by (a black frame stays black, not NaN)
MIN_PLANE_MEAN = 1e-4


def generic_xyz_to_camera() -> torch.Tensor:
    """The mean XYZ -> camera matrix of the training cameras (:mod:`isplab.data.cameras`), float64."""
    from isplab.data.cameras import camera_split, xyz_to_camera

    names = camera_split("train")
    return torch.from_numpy(sum(xyz_to_camera(name) for name in names) / len(names))


def generic_camera_to_srgb() -> torch.Tensor:
    """White-balanced camera RGB -> linear sRGB of :func:`generic_xyz_to_camera`, ``(3, 3)`` float64."""
    from isplab.isp.color import camera_to_srgb_matrix

    return camera_to_srgb_matrix(generic_xyz_to_camera())


def demosaic_bilinear_planes(planes: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaicking of packed RGGB planes: ``(B, 4, h, w)`` R, Gr, Gb, B -> ``(B, 3, 2h, 2w)``.

    Each colour is interpolated at its true sensor positions (R at the tile's top-left, Gr top-right,
    Gb bottom-left, B bottom-right): a measured site keeps its value, a missing red or blue is the
    mean of its 2 or 4 nearest same-colour sites, a missing green the mean of its 4 green
    neighbours (the textbook bilinear demosaic). Borders replicate the edge planes.
    """
    if planes.ndim != 4 or planes.shape[1] != 4:
        raise IsplabError(f"expected packed planes (B, 4, h, w), got {tuple(planes.shape)}")
    h, w = planes.shape[-2:]
    padded = F.pad(planes, (1, 1, 1, 1), mode="replicate")

    def at(index: int, dy: int, dx: int) -> torch.Tensor:  # plane ``index`` shifted by (dy, dx) planes
        return padded[:, index : index + 1, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    r, gr, gb, b = (at(i, 0, 0) for i in range(4))
    phases = [  # per colour: the 2x2 output phases (0,0), (0,1), (1,0), (1,1), pixel-shuffle order
        r, (r + at(0, 0, 1)) / 2, (r + at(0, 1, 0)) / 2, (r + at(0, 0, 1) + at(0, 1, 0) + at(0, 1, 1)) / 4,
        (gr + at(1, 0, -1) + gb + at(2, -1, 0)) / 4, gr, gb, (gb + at(2, 0, 1) + gr + at(1, 1, 0)) / 4,
        (b + at(3, -1, -1) + at(3, -1, 0) + at(3, 0, -1)) / 4, (b + at(3, -1, 0)) / 2, (b + at(3, 0, -1)) / 2, b,
    ]
    return F.pixel_shuffle(torch.cat(phases, dim=1), 2)


class ClassicalPrior(nn.Module):
    """The classical render of packed planes (see the module docstring): ``(B, 4, h, w) -> (B, 3, 2h, 2w)``.

    Args:
        metadata: the input is metadata-corrected (white balance, colour matrix, exposure applied);
            otherwise grey-world, auto-exposure and the generic colour matrix are applied first.
        exposure_target: the blind auto-exposure's initial target mean (learnable).
        auto_exposure: blind prior only; ``False`` when the input is already brightened by the
            raw's own exposure (an exposure-aware blind model, ``isplab isp train --exposure``):
            grey-world white balance only, no auto-exposure.
    """

    def __init__(self, metadata: bool, exposure_target: float = EXPOSURE_TARGET, auto_exposure: bool = True) -> None:
        super().__init__()
        self.metadata = bool(metadata)
        self.auto_exposure = bool(auto_exposure) and not self.metadata
        if not self.metadata:
            self.register_buffer("ccm", generic_camera_to_srgb().float())
        if self.auto_exposure:
            if not exposure_target > 0:
                raise IsplabError(f"exposure_target must be positive, got {exposure_target}")
            self.log_exposure_target = nn.Parameter(torch.tensor(float(exposure_target)).log())

    def white_balance_gains(self, x: torch.Tensor) -> torch.Tensor:
        """Blind prior: ``(B, 4)`` per-plane gains, grey-world (times auto-exposure when ``auto_exposure``)."""
        means = x.mean(dim=(2, 3)).clamp_min(MIN_PLANE_MEAN)  # (B, 4): R, Gr, Gb, B
        green = (means[:, 1] + means[:, 2]) / 2
        wb = torch.stack([green / means[:, 0], torch.ones_like(green), torch.ones_like(green), green / means[:, 3]], 1)
        if not self.auto_exposure:
            return wb
        balanced_mean = (means * wb).mean(dim=1).clamp_min(MIN_PLANE_MEAN)  # the white-balanced planes' mean
        return wb * (self.log_exposure_target.exp() / balanced_mean)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.metadata:
            rgb = demosaic_bilinear_planes(x).clamp(0.0, 1.0)
        else:
            planes = (x * self.white_balance_gains(x)[:, :, None, None]).clamp(0.0, 1.0)
            rgb = torch.einsum("ij,bjhw->bihw", self.ccm.to(x.dtype), demosaic_bilinear_planes(planes))
            rgb = rgb.clamp(0.0, 1.0)
        return smoothstep_tone(linear_to_srgb(rgb))

    def extra_repr(self) -> str:
        return f"metadata={self.metadata}, auto_exposure={self.auto_exposure}"


#: the last layer of each architecture, whose weights start at zero under a prior
_LAST_LAYER = {"nafnet": ("ending", 0), "lfnet": ("tail", 0), "punet": ("out",)}


def last_layer(net: nn.Module, arch: str) -> nn.Module:
    """The convolution that produces ``arch``'s output before its sigmoid/tanh head."""
    module = net
    for key in _LAST_LAYER[arch]:
        module = module[key] if isinstance(key, int) else getattr(module, key)
    return module


class PriorISP(nn.Module):
    """``prior(x) + net(x) - 0.5``: a network correcting a classical render (see the module docstring).

    ``net`` is an ISP architecture whose head outputs 0.5 for a zero pre-activation (NAFNet's and
    LFNet's sigmoid, PUNET's ``0.58 tanh + 0.5``); its last layer (:func:`last_layer`) is zeroed here,
    so at initialisation the output equals ``prior(x)`` exactly. The output is not clipped.
    """

    def __init__(self, net: nn.Module, arch: str, prior: ClassicalPrior) -> None:
        super().__init__()
        self.net, self.prior = net, prior
        self.size_multiple = int(getattr(net, "size_multiple", 1))
        layer = last_layer(net, arch)
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior(x) + (self.net(x) - 0.5)
