"""Facts of libcamera's ``rpi.nn.awb`` that the AWB workflow builds on (``../shared/docs/awb-libcamera.md``).

The network architectures in :mod:`isplab.models.awb` are generic (any zone grid, any temperature
range); these constants make them Raspberry Pi models.
"""

from __future__ import annotations

#: Raspberry Pi's ISP families: ``pisp`` (Pi 5) and ``vc4`` (Pi 4 and older).
TARGETS = ("pisp", "vc4")
#: Zone-grid size (H, W) of each target's AWB statistics: 32 x 32 on PiSP, 16 wide x 12 high on VC4.
TARGET_SIZES: dict[str, tuple[int, int]] = {"pisp": (32, 32), "vc4": (12, 16)}
#: Temperatures (K) the networks predict; the reference tools clamp true temperatures to it.
TEMPERATURE_RANGE: tuple[float, float] = (2800.0, 7600.0)
#: Conv widths of Raspberry Pi's reference network on each target.
REFERENCE_FILTERS: dict[str, tuple[int, ...]] = {"pisp": (16, 32, 64), "vc4": (32, 64)}


def describe_size(size: tuple[int, int]) -> str:
    """``"16 wide x 12 high, target vc4"`` for a zone grid ``(H, W)``."""
    if len(size) != 2:
        return f"shape {list(size)}"
    height, width = (int(n) for n in size)
    names = [target for target, hw in TARGET_SIZES.items() if hw == (height, width)]
    return f"{width} wide x {height} high" + (f", target {names[0]}" if names else "")
