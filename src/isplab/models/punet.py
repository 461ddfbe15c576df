"""PUNET: the Mobile AI 2021 learned smartphone ISP baseline (a U-Net with x2 output upsampling).

Follows the challenge's TensorFlow model (see ``docs``: ``learned-isp.md``): four 2x2 max-pool
levels of "multi-blocks" (two 3x3 conv + LeakyReLU(0.2)) with widths ``n, 2n, 4n, 8n, 16n``;
four multi-blocks at the bottleneck, the 2nd and 3rd with residual adds; a decoder of 3x3
stride-2 transposed convs + LeakyReLU, each concatenated (skip first) with the encoder output of
its level, which at levels 2 and 1 first passes through one more multi-block, and level 1 also
concatenates its first block's output a second time; a final 3x3 stride-2 transposed conv to
``n // 4`` channels (the x2 upsampling), a 3x3 conv to 3 channels and ``tanh(x) * 0.58 + 0.5``.
Initialisation as the reference: weights truncated-normal (std 0.01, cut at 2 std), conv biases
0.01, transposed convs without bias. At ``num_maps_base=16`` it has 5,725,199 parameters.

One deliberate difference: PyTorch's ``ConvTranspose2d(padding=1, output_padding=1)`` places
the 3x3 kernel one pixel off TensorFlow's ``SAME`` transposed conv (TF pads the implied forward
conv at the end, PyTorch at the start). It only matters for porting the TF weights, not for
training; the output is ``tanh(x) * 0.58 + 0.5``, so it spans ``(-0.08, 1.08)``, not ``[0, 1]``.

The transposed convs are computed unpadded (``2h + 1`` outputs) and cropped by one pixel at the
start (:class:`CroppedConvTranspose2d`): the same numbers as ``padding=1, output_padding=1``, but
the TFLite converter cannot lower a padded transposed conv with ``output_padding`` ("failed to
legalize operation 'mhlo.convolution'"), while it lowers the unpadded one and a slice.
"""

from __future__ import annotations

import torch
from torch import nn

from isplab.errors import IsplabError

#: Slope of the reference's ``tf.nn.leaky_relu`` (TensorFlow's default alpha).
LEAKY_SLOPE = 0.2


def _conv(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE))


def multi_block(cin: int, cout: int) -> nn.Sequential:
    """The reference's ``_conv_multi_block`` with ``max_size=3``: two 3x3 conv + LeakyReLU."""
    return nn.Sequential(_conv(cin, cout), _conv(cout, cout))


class CroppedConvTranspose2d(nn.ConvTranspose2d):
    """``ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False)``, exportable.

    ``(B, cin, h, w) -> (B, cout, 2h, 2w)``: the unpadded stride-2 transposed conv gives ``2h + 1``
    rows; ``padding=1`` drops the first and last, ``output_padding=1`` adds the last back, so the
    padded layer's output is the unpadded one without its first row and column. Same parameters
    (and state-dict keys) as the padded layer.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, stride=2, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[..., 1:, 1:]


def up_block(cin: int, cout: int) -> nn.Sequential:
    """3x3 stride-2 transposed conv (no bias) + LeakyReLU: ``(B, cin, h, w) -> (B, cout, 2h, 2w)``."""
    return nn.Sequential(CroppedConvTranspose2d(cin, cout), nn.LeakyReLU(LEAKY_SLOPE))


class PUNet(nn.Module):
    """PUNET: ``(B, 4, h, w)`` packed raw -> ``(B, 3, 2h, 2w)`` RGB; ``h, w`` divisible by 16.

    Args:
        num_maps_base: Width ``n`` of the first level (a multiple of 4: the last transposed
            conv has ``n // 4`` channels).
    """

    size_multiple = 16

    def __init__(self, num_maps_base: int = 16) -> None:
        super().__init__()
        n = num_maps_base
        if n < 4 or n % 4:
            raise IsplabError(f"PUNET num_maps_base must be a positive multiple of 4, got {n}")
        self.pool = nn.MaxPool2d(2)
        self.enc1 = multi_block(4, n)
        self.enc2 = multi_block(n, 2 * n)
        self.enc3 = multi_block(2 * n, 4 * n)
        self.enc4 = multi_block(4 * n, 8 * n)
        self.mid = nn.ModuleList(
            [multi_block(8 * n, 16 * n)] + [multi_block(16 * n, 16 * n) for _ in range(3)]
        )
        self.up4 = up_block(16 * n, 8 * n)
        self.dec4 = multi_block(16 * n, 8 * n)
        self.up3 = up_block(8 * n, 4 * n)
        self.dec3 = multi_block(8 * n, 4 * n)
        self.up2 = up_block(4 * n, 2 * n)
        self.skip2 = multi_block(2 * n, 2 * n)
        self.dec2 = multi_block(4 * n, 2 * n)
        self.up1 = up_block(2 * n, n)
        self.skip1 = multi_block(n, n)
        self.dec1 = multi_block(3 * n, n)
        self.up0 = up_block(n, n // 4)
        self.out = nn.Conv2d(n // 4, 3, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: truncated-normal(0.01) weights, 0.01 biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-0.02, b=0.02)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        m1 = self.mid[0](self.pool(e4))
        m2 = self.mid[1](m1) + m1
        m3 = self.mid[2](m2) + m2
        m4 = self.mid[3](m3)
        d4 = self.dec4(torch.cat([e4, self.up4(m4)], dim=1))
        d3 = self.dec3(torch.cat([e3, self.up3(d4)], dim=1))
        d2 = self.dec2(torch.cat([self.skip2(e2), self.up2(d3)], dim=1))
        d1 = self.dec1(torch.cat([self.skip1(e1), self.up1(d2), e1], dim=1))
        return torch.tanh(self.out(self.up0(d1))) * 0.58 + 0.5
