"""A classical, differentiable camera pipeline from normalised raw to display sRGB.

Order (the lead's unprocessing inverts it step by step, in reverse):

1. white balance on the mosaic (:func:`~isplab.isp.white_balance.apply_wb_mosaic`)
2. clip to [0, 1] (a saturated sensor site stays white after white balance)
3. demosaic (:func:`~isplab.isp.demosaic.demosaic`)
4. colour correction, camera RGB -> linear sRGB (:func:`~isplab.isp.color.apply_color_matrix`)
5. clip to [0, 1]
6. sRGB transfer function (:func:`~isplab.isp.gamma.linear_to_srgb`)
7. optionally the smoothstep tone curve (:func:`~isplab.isp.tone.smoothstep_tone`)

:func:`render` computes exactly that composition, fused: steps 1-2 run on the packed Bayer planes
and steps 4-7 right after each chunk of demosaiced rows (:func:`~isplab.isp.demosaic.demosaic_packed`),
in place when no gradient is needed. The results agree with the step-by-step composition to
rounding (``tests/isp/test_fast_pipeline.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from isplab.errors import IsplabError
from isplab.isp._params import check_image, eager_inplace_ok, per_sample
from isplab.isp.bayer import channel_index, check_pattern
from isplab.isp.demosaic import METHODS, demosaic_packed
from isplab.isp.gamma import encode_srgb_fast_, linear_to_srgb
from isplab.isp.tone import smoothstep_tone, smoothstep_tone_


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
    check_image(raw, 1, "mosaic")
    pattern = check_pattern(pattern)
    if demosaic_method not in METHODS:
        raise IsplabError(f"unknown demosaic method {demosaic_method!r}: expected one of {', '.join(METHODS)}")
    # White balance per tile position (packed-plane order) and the colour matrix, (B', ...), B' in {1, B}.
    gains = per_sample(wb_gains, raw, (3,), "gains")[:, channel_index(pattern), None, None]
    matrix = per_sample(ccm, raw, (3, 3), "color matrix")

    def prepare(planes: torch.Tensor, inplace: bool) -> torch.Tensor:
        # Steps 1-2 on the padded packed planes (reflection keeps each site's colour, so it commutes).
        if inplace:
            planes = planes.mul_(gains)
            return planes.clamp_(0.0, 1.0) if clip else planes
        planes = planes * gains
        return planes.clamp(0.0, 1.0) if clip else planes

    # The matrix as numbers for the in-place path (read once, before any chunk: a sync on a GPU).
    coefficients = matrix.tolist() if eager_inplace_ok(raw, gains, matrix) else None

    def finish(rgb: torch.Tensor, buffer: torch.Tensor | None) -> torch.Tensor:
        # Steps 4-7 on camera RGB (B, 3, ...); in place into ``buffer`` when given.
        if buffer is None or coefficients is None:
            x = torch.matmul(matrix, rgb.reshape(rgb.shape[0], 3, -1)).reshape(rgb.shape)
            x = x.clamp(0.0, 1.0) if clip else x
            x = linear_to_srgb(x)
            return smoothstep_tone(x) if tone else x
        x = buffer
        for sample, rows in enumerate(coefficients):  # 3 x 3 scaled adds: faster than a K=3 matmul
            src, dst = (rgb, x) if len(coefficients) == 1 else (rgb[sample : sample + 1], x[sample : sample + 1])
            for channel, (m0, m1, m2) in enumerate(rows):
                target = dst[:, channel]
                torch.mul(src[:, 0], m0, out=target).add_(src[:, 1], alpha=m1).add_(src[:, 2], alpha=m2)
        if clip:
            x.clamp_(0.0, 1.0)
        x = encode_srgb_fast_(x, scratch=rgb)  # camera RGB is no longer needed: scratch space
        return smoothstep_tone_(x, scratch=rgb) if tone else x

    return demosaic_packed(
        raw, pattern, demosaic_method, prepare=prepare, finish=finish,
        needs_grad=gains.requires_grad or matrix.requires_grad,
    )


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
