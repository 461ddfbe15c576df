"""A classical, differentiable camera pipeline from normalised raw to display sRGB.

Order (the lead's unprocessing inverts it step by step, in reverse):

1. white balance on the mosaic (:func:`~isplab.isp.white_balance.apply_wb_mosaic`)
2. clip to [0, 1] (a saturated sensor site stays white after white balance)
3. demosaic (:func:`~isplab.isp.demosaic.demosaic`)
4. colour correction, camera RGB -> linear sRGB (:func:`~isplab.isp.color.apply_color_matrix`)
5. clip to [0, 1]
6. sRGB transfer function (:func:`~isplab.isp.gamma.linear_to_srgb`)
7. optionally the smoothstep tone curve (:func:`~isplab.isp.tone.smoothstep_tone`)
"""

from __future__ import annotations

import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.isp.bayer import check_pattern
from isplab.isp.color import apply_color_matrix
from isplab.isp.demosaic import METHODS, demosaic
from isplab.isp.gamma import linear_to_srgb
from isplab.isp.tone import smoothstep_tone
from isplab.isp.white_balance import apply_wb_mosaic


def render(
    raw: torch.Tensor,
    pattern: str,
    wb_gains,
    ccm,
    *,
    demosaic_method: str = "malvar",
    tone: bool = True,
    clip: bool = True,
) -> torch.Tensor:
    """Render a normalised Bayer mosaic to sRGB (see the module docstring for the order).

    Args:
        raw: ``(B, 1, H, W)`` mosaic normalised to [0, 1] (black 0, white 1).
        pattern: CFA pattern, e.g. ``"RGGB"``.
        wb_gains: ``(3,)`` or ``(B, 3)`` R, G, B white-balance gains.
        ccm: ``(3, 3)`` or ``(B, 3, 3)`` camera RGB -> linear sRGB matrix (applied after white balance,
            e.g. :func:`~isplab.isp.color.camera_to_srgb_matrix`).
        demosaic_method: ``"malvar"`` or ``"bilinear"``.
        tone: apply :func:`~isplab.isp.tone.smoothstep_tone` after the gamma.
        clip: clip to [0, 1] after white balance and after the CCM; without it the output may
            leave [0, 1].

    Returns:
        ``(B, 3, H, W)`` sRGB, in [0, 1] when ``clip``.
    """
    x = apply_wb_mosaic(raw, wb_gains, pattern)
    if clip:
        x = x.clamp(0.0, 1.0)
    x = apply_color_matrix(demosaic(x, pattern, demosaic_method), ccm)
    if clip:
        x = x.clamp(0.0, 1.0)
    x = linear_to_srgb(x)
    return smoothstep_tone(x) if tone else x


class ClassicalISP(nn.Module):
    """:func:`render` as a module: fixed pattern and options, per-call gains and CCM.

    ``forward(raw (B, 1, H, W), wb_gains (3,)|(B, 3), ccm (3, 3)|(B, 3, 3)) -> (B, 3, H, W)``.
    It has no parameters; it exists to be composed with learned modules and exported.
    """

    def __init__(self, pattern: str, demosaic_method: str = "malvar", tone: bool = True, clip: bool = True) -> None:
        super().__init__()
        if demosaic_method not in METHODS:
            raise IsplabError(f"unknown demosaic method {demosaic_method!r}: expected one of {', '.join(METHODS)}")
        self.pattern = check_pattern(pattern)
        self.demosaic_method = demosaic_method
        self.tone = tone
        self.clip = clip

    def forward(self, raw: torch.Tensor, wb_gains: torch.Tensor, ccm: torch.Tensor) -> torch.Tensor:
        return render(
            raw, self.pattern, wb_gains, ccm, demosaic_method=self.demosaic_method, tone=self.tone, clip=self.clip
        )

    def extra_repr(self) -> str:
        return f"pattern={self.pattern!r}, demosaic_method={self.demosaic_method!r}, tone={self.tone}, clip={self.clip}"
