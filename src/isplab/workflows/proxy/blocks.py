"""The block table: each darktable processing block a proxy can learn, with its parameters.

One :class:`Block` per block, in code. Each names darktable's module (``operation``), the version
and byte size of the module's params struct in darktable 4.2 (``modversion``, ``struct_bytes``),
every field of that struct in order (name, C type, the value isplab writes when the field is not a
proxy parameter), and the proxy parameters: the struct fields a proxy learns, with their unit,
darktable's hard range (the ``$MIN``/``$MAX`` of the struct, also what the installed darktable's
introspection reports), the GUI slider's soft range where darktable sets one (``soft``; otherwise
the hard range) and the default.

Sampling uses the soft range unless ``-p NAME=LO:HI`` asks for another one inside the hard range.

``tests/workflows/proxy/test_blocks.py`` checks every layout, hard range and default against the
installed darktable's own introspection data when darktable is present.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from isplab.errors import IsplabError

__all__ = [
    "SUPPORTED_DARKTABLE",
    "Param",
    "Field",
    "Block",
    "BLOCKS",
    "get_block",
    "ParamSpec",
    "parse_param_specs",
    "IOP_ORDER_V30",
    "pipeline_order",
]

#: darktable releases whose struct layouts this table describes (major.minor).
SUPPORTED_DARKTABLE = ("4.2",)

_CTYPES = {"float": "f", "int": "i", "enum": "i", "bool": "i"}


@dataclass(frozen=True)
class Param:
    """A proxy parameter: one float field of the module's params struct."""

    name: str
    unit: str
    min: float  # darktable's hard minimum ($MIN)
    max: float  # darktable's hard maximum ($MAX)
    default: float
    description: str
    soft: tuple[float, float] | None = None  # the GUI slider's soft range, when darktable sets one
    #: isplab's default sampling range where darktable's soft (or hard) range is mostly a no-op:
    #: the range over which the render measurably depends on the parameter (benchmarks/proxy.py).
    sample: tuple[float, float] | None = None

    @property
    def soft_range(self) -> tuple[float, float]:
        """The GUI's soft range, else the hard range."""
        return self.soft if self.soft is not None else (self.min, self.max)

    @property
    def sample_range(self) -> tuple[float, float]:
        """The default sampling range: ``sample`` where set, else :attr:`soft_range`."""
        return self.sample if self.sample is not None else self.soft_range

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "unit": self.unit,
            "min": self.min,
            "max": self.max,
            "soft_min": self.soft_range[0],
            "soft_max": self.soft_range[1],
            "sample_min": self.sample_range[0],
            "sample_max": self.sample_range[1],
            "default": self.default,
            "description": self.description,
        }


@dataclass(frozen=True)
class Field:
    """One field of a darktable params struct, in declaration order."""

    name: str
    ctype: str  # float, int, enum or bool: all 4 bytes, little-endian
    value: float | int | tuple  # what isplab writes when the field is not being sampled (arrays: every element)
    count: int = 1  # elements of an array field (float a[3] -> 3); 1 for a scalar

    @property
    def size(self) -> int:
        return 4 * self.count


@dataclass(frozen=True)
class Block:
    """A darktable block: its module, params struct layout and proxy parameters."""

    name: str
    operation: str  # darktable's module name in the XMP history
    modversion: int
    struct_bytes: int
    fields: tuple[Field, ...]
    params: tuple[Param, ...]
    space: str  # the colour space darktable runs the module in
    before_demosaic: bool = False  # darktable applies it to the raw mosaic
    notes: str = ""
    ties: tuple[tuple[str, str], ...] = ()  # (field, parameter): the field is written equal to the parameter
    builtin: bool = True  # isplab's builtin backend has an op for it
    default_head: str = "affine"  # the proxy head `proxy train` uses without --head (benchmarks/proxy.py measured it)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        for p in self.params:
            if p.name not in names:
                raise AssertionError(f"block {self.name}: parameter {p.name} is not a field of its struct")
        size = struct.calcsize(self.struct_format)
        if size != self.struct_bytes:
            raise AssertionError(f"block {self.name}: fields pack to {size} bytes, table says {self.struct_bytes}")

    @property
    def struct_format(self) -> str:
        return "<" + "".join((str(f.count) if f.count > 1 else "") + _CTYPES[f.ctype] for f in self.fields)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise IsplabError(
            f"unknown parameter {name!r} of block {self.name}: expected one of {', '.join(self.param_names)}"
        )

    def offset(self, name: str) -> int:
        """Byte offset of a field in the struct."""
        offset = 0
        for f in self.fields:
            if f.name == name:
                return offset
            offset += f.size
        raise KeyError(name)

    def defaults(self) -> dict[str, float]:
        """Every proxy parameter at its default."""
        return {p.name: p.default for p in self.params}

    def check_values(self, values: dict[str, float]) -> dict[str, float]:
        """Complete ``values`` with defaults and check each against darktable's hard range.

        Raises:
            IsplabError: an unknown name or a value outside ``[min, max]``.
        """
        full = self.defaults()
        for name, value in values.items():
            p = self.param(name)
            value = float(value)
            if not (p.min <= value <= p.max):
                raise IsplabError(
                    f"{self.name}.{name} = {value:g} is outside darktable's range [{p.min:g}, {p.max:g}] {p.unit}".rstrip()
                )
            full[name] = value
        return full

    def pack(self, values: dict[str, float] | None = None) -> bytes:
        """The module's params struct for ``values`` (others at the table's values), packed as
        darktable stores it: little-endian, 4 bytes per field, no padding."""
        full = self.check_values(values or {})
        full.update({target: full[source] for target, source in self.ties})
        row = []
        for f in self.fields:
            value = full.get(f.name, f.value)
            if f.count > 1:
                row.extend(float(v) if f.ctype == "float" else int(v) for v in value)
            else:
                row.append(float(value) if f.ctype == "float" else int(value))
        data = struct.pack(self.struct_format, *row)
        assert len(data) == self.struct_bytes
        return data

    def unpack(self, data: bytes) -> dict[str, float | int]:
        """Every field of a packed params struct, by name.

        Raises:
            IsplabError: ``data`` is not ``struct_bytes`` long.
        """
        if len(data) != self.struct_bytes:
            raise IsplabError(
                f"{self.operation} params are {len(data)} bytes: expected {self.struct_bytes} (version {self.modversion})"
            )
        values = list(struct.unpack(self.struct_format, data))
        out: dict = {}
        for f in self.fields:
            out[f.name] = tuple(values[: f.count]) if f.count > 1 else values[0]
            del values[: f.count]
        return out

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "operation": self.operation,
            "modversion": self.modversion,
            "struct_bytes": self.struct_bytes,
            "space": self.space,
            "before_demosaic": self.before_demosaic,
            "params": [p.as_dict() for p in self.params],
            "fixed_fields": {f.name: f.value for f in self.fields if f.name not in self.param_names},
        }


def _floats(names: str, value: float = 0.0) -> list[Field]:
    return [Field(n, "float", value) for n in names.split()]


# darktable 4.2 src/iop/exposure.c, dt_iop_exposure_params_t (v6, 24 bytes). Manual mode; the
# deflicker fields only matter in automatic mode.
_EXPOSURE = Block(
    name="exposure",
    operation="exposure",
    modversion=6,
    struct_bytes=24,
    fields=(
        Field("mode", "enum", 0),
        Field("black", "float", 0.0),
        Field("exposure", "float", 0.0),
        Field("deflicker_percentile", "float", 50.0),
        Field("deflicker_target_level", "float", -4.0),
        Field("compensate_exposure_bias", "bool", 0),
    ),
    params=(
        Param("exposure", "EV", -18.0, 18.0, 0.0, "exposure correction: linear values x 2^EV", soft=(-3.0, 4.0)),
        Param("black", "", -1.0, 1.0, 0.0, "black level correction, subtracted before the exposure scale", soft=(-0.1, 0.1)),
    ),
    space="linear camera RGB (after demosaic, before input colour profile)",
    notes="out = (in - black) / (2^-exposure - black)",
    default_head="global",  # one gain per render: 47.4 dB on held-out images against 28.5 for affine (benchmarks/proxy.py)
)

# src/iop/temperature.c, dt_iop_temperature_params_t (v3, 16 bytes): raw channel multipliers.
# darktable's own default is the camera's as-shot white balance; the proxy's neutral default is 1.
_TEMPERATURE = Block(
    name="temperature",
    operation="temperature",
    modversion=3,
    struct_bytes=16,
    fields=tuple(_floats("red green blue g2", 1.0)),
    params=(
        Param("red", "x", 0.0, 8.0, 1.0, "red channel multiplier on the raw mosaic"),
        Param("green", "x", 0.0, 8.0, 1.0, "green channel multiplier (both greens of the Bayer tile)"),
        Param("blue", "x", 0.0, 8.0, 1.0, "blue channel multiplier"),
    ),
    space="raw camera RGB mosaic (before demosaic)",
    before_demosaic=True,
    default_head="global",  # with cfa_phase: 41.3 dB on held-out images against 40.9 for affine (benchmarks/proxy.py)
    notes="g2 (the second green) is written equal to green",
    ties=(("g2", "green"),),
)

# src/iop/colorbalancergb.c, dt_iop_colorbalancergb_params_t (v5, 132 bytes): 32 floats then the
# saturation formula (1 = darktable UCS 2022, the default).
_CBRGB_FIELDS = (
    _floats("shadows_Y shadows_C shadows_H midtones_Y midtones_C midtones_H highlights_Y highlights_C")
    + _floats("highlights_H global_Y global_C global_H")
    + [Field("shadows_weight", "float", 1.0), Field("white_fulcrum", "float", 0.0), Field("highlights_weight", "float", 1.0)]
    + _floats("chroma_shadows chroma_highlights chroma_global chroma_midtones")
    + _floats("saturation_global saturation_highlights saturation_midtones saturation_shadows hue_angle")
    + _floats("brilliance_global brilliance_highlights brilliance_midtones brilliance_shadows")
    + [Field("mask_grey_fulcrum", "float", 0.1845), Field("vibrance", "float", 0.0)]
    + [Field("grey_fulcrum", "float", 0.1845), Field("contrast", "float", 0.0)]
    + [Field("saturation_formula", "enum", 1)]
)
_COLORBALANCERGB = Block(
    name="colorbalancergb",
    operation="colorbalancergb",
    modversion=5,
    struct_bytes=132,
    fields=tuple(_CBRGB_FIELDS),
    params=(
        Param("contrast", "", -1.0, 1.0, 0.0, "contrast around the grey fulcrum (18.45 %)", soft=(-0.5, 0.5)),
        Param("chroma_global", "", -1.0, 1.0, 0.0, "global chroma: -1 removes all colour", soft=(-0.5, 0.5)),
        Param("saturation_global", "", -1.0, 1.0, 0.0, "global perceptual saturation"),
        Param("vibrance", "", -1.0, 1.0, 0.0, "chroma boost of low-chroma colours", soft=(-0.5, 0.5)),
    ),
    space="linear Rec.2020 (the working profile), scene-referred",
    default_head="pointwise",  # a per-pixel colour map: 44.6 dB on held-out images against 38.3 for global (benchmarks/proxy.py)
)

# src/iop/sharpen.c, dt_iop_sharpen_params_t (v1, 12 bytes): unsharp mask of Lab L.
_SHARPEN = Block(
    name="sharpen",
    operation="sharpen",
    modversion=1,
    struct_bytes=12,
    fields=(Field("radius", "float", 2.0), Field("amount", "float", 0.5), Field("threshold", "float", 0.5)),
    params=(
        Param("radius", "px", 0.0, 99.0, 2.0, "Gaussian sigma of the unsharp mask", soft=(0.0, 8.0)),
        Param("amount", "", 0.0, 2.0, 0.5, "strength of the sharpening"),
        # Above ~10 the threshold leaves the image alone: at radius 8, amount 2 every probe render was
        # bit-identical to sharpen off from threshold 64 up (one texture from 32), and 56.5 % of
        # samples over [0, 100] equalled their input (benchmarks/proxy.py, --fid-source texture deadleaves).
        Param("threshold", "L", 0.0, 100.0, 0.5, "detail below this (Lab L units) is left alone", sample=(0.0, 10.0)),
    ),
    space="CIE Lab (L channel)",
    # darktable's unsharp mask built in, whole images, pre-fitted: 62.0 dB on the changed held-out-image
    # samples against 29.7 for affine, regression error 0.37 % against 16.3 % (benchmarks/proxy.py)
    default_head="unsharp",
)

# src/iop/hazeremoval.c, dt_iop_hazeremoval_params_t (v1, 8 bytes): dark-channel dehazing.
_HAZEREMOVAL = Block(
    name="hazeremoval",
    operation="hazeremoval",
    modversion=1,
    struct_bytes=8,
    fields=(Field("strength", "float", 0.2), Field("distance", "float", 0.2)),
    params=(
        Param("strength", "", -1.0, 1.0, 0.2, "amount of haze removed (negative adds haze)"),
        Param("distance", "", 0.0, 1.0, 0.2, "how far into the scene haze is removed"),
    ),
    space="linear RGB",
)

# src/iop/lowpass.c, dt_iop_lowpass_params_t (v4, 28 bytes): Gaussian (order 0) low-pass in Lab.
_LOWPASS = Block(
    name="lowpass",
    operation="lowpass",
    modversion=4,
    struct_bytes=28,
    fields=(
        Field("order", "enum", 0),
        Field("radius", "float", 10.0),
        Field("contrast", "float", 1.0),
        Field("brightness", "float", 0.0),
        Field("saturation", "float", 1.0),
        Field("lowpass_algo", "enum", 0),  # 0 = gaussian, 1 = bilateral
        Field("unbound", "int", 1),
    ),
    params=(
        Param("radius", "px", 0.1, 500.0, 10.0, "blur radius"),
        Param("contrast", "", -3.0, 3.0, 1.0, "contrast of the blurred image (1 keeps it, -1 inverts it)"),
        Param("brightness", "", -3.0, 3.0, 0.0, "brightness (a gamma on L)"),
        Param("saturation", "", -3.0, 3.0, 1.0, "colour saturation of the blurred image"),
    ),
    space="CIE Lab",
    default_head="blur",  # whole images, pre-fitted: 36.6 dB on held-out images against 20.4 for global (benchmarks/proxy.py)
)

# src/iop/denoiseprofile.c, dt_iop_denoiseprofile_params_t (v11, 412 bytes): profiled denoising,
# wavelets mode (darktable's default), Y0U0V0 colour mode. a[0] = -1 asks darktable to pick the
# noise profile for the image itself; the
# wavelet-band curves x[6][7], y[6][7] are written flat, as darktable initialises them (x = band / 6,
# y = 0.5). The soft ranges are gui_init's (dt_bauhaus_slider_set_soft_max(strength, 4),
# set_soft_range(bias, -10, 10); shadows has none). isplab's builtin backend has no denoiser.
_DENOISEPROFILE = Block(
    name="denoiseprofile",
    operation="denoiseprofile",
    modversion=11,
    struct_bytes=412,
    fields=(
        Field("radius", "float", 1.0),
        Field("nbhood", "float", 7.0),
        Field("strength", "float", 1.0),
        Field("shadows", "float", 1.0),
        Field("bias", "float", 0.0),
        Field("scattering", "float", 0.0),
        Field("central_pixel_weight", "float", 0.1),
        Field("overshooting", "float", 1.0),
        Field("a", "float", (-1.0, -1.0, -1.0), 3),
        Field("b", "float", (-1.0, -1.0, -1.0), 3),
        Field("mode", "enum", 1),  # MODE_WAVELETS
        Field("x", "float", tuple(band / 6.0 for _ in range(6) for band in range(7)), 42),
        Field("y", "float", (0.5,) * 42, 42),
        Field("wb_adaptive_anscombe", "bool", 1),
        Field("fix_anscombe_and_nlmeans_norm", "bool", 1),
        Field("use_new_vst", "bool", 1),
        Field("wavelet_color_mode", "enum", 1),  # MODE_Y0U0V0
    ),
    params=(
        Param("strength", "", 0.001, 1000.0, 1.0, "denoising strength (1 = matched to the profiled noise)", soft=(0.001, 4.0)),
        Param("shadows", "", 0.0, 1.8, 1.0, "preserve shadows: lower smooths dark areas more"),
        Param("bias", "", -1000.0, 100.0, 0.0, "bias correction of the variance-stabilising transform", soft=(-10.0, 10.0)),
    ),
    space="linear camera RGB (after demosaic, before input colour profile)",
    notes="a[0] = -1: darktable's noise profile for the image",
    builtin=False,
    # a residual added to the input, trained with MSE (train.DEFAULT_LOSS): 37.5 dB on held-out
    # images against 32.9 for affine with L1 at 3000 steps (identity 31.8; benchmarks/proxy.py)
    default_head="add",
)

#: Every block a proxy can learn, by name.
BLOCKS: dict[str, Block] = {
    b.name: b for b in (_EXPOSURE, _TEMPERATURE, _COLORBALANCERGB, _SHARPEN, _HAZEREMOVAL, _LOWPASS, _DENOISEPROFILE)
}


#: Where darktable runs each block in the pixelpipe: the module's position in darktable's default
#: "v3.0" module order for raw files (``v30_order`` in darktable 4.2's ``src/common/iop_order.c``,
#: used unless the display-referred workflow asks for the legacy order). darktable applies the
#: modules of a history in this order, whatever order the XMP lists them in.
IOP_ORDER_V30: dict[str, float] = {
    "rawprepare": 1.0,
    "temperature": 3.0,
    "highlights": 4.0,
    "demosaic": 8.0,
    "denoiseprofile": 9.0,
    "hazeremoval": 14.0,
    "exposure": 21.0,
    "colorin": 28.0,
    "lowpass": 33.0,
    "sharpen": 35.0,
    "colorbalancergb": 41.5,
    "colorout": 70.0,
}


def pipeline_order(names) -> list[str]:
    """``names`` (blocks) sorted by darktable's pipeline order (:data:`IOP_ORDER_V30` of their
    modules).

    Raises:
        IsplabError: an unknown block.
    """
    blocks = [get_block(n) for n in names]
    return [b.name for b in sorted(blocks, key=lambda b: IOP_ORDER_V30[b.operation])]


def get_block(name: str) -> Block:
    """The block called ``name``.

    Raises:
        IsplabError: no such block, listing the known ones.
    """
    try:
        return BLOCKS[name]
    except KeyError:
        raise IsplabError(f"unknown block {name!r}: expected one of {', '.join(BLOCKS)}") from None


@dataclass(frozen=True)
class ParamSpec:
    """How one parameter is chosen for a dataset: sampled over ``[low, high]``, or fixed."""

    name: str
    low: float
    high: float

    @property
    def varied(self) -> bool:
        return self.high > self.low


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_param_specs(block: Block, texts: list[str] | None) -> dict[str, ParamSpec]:
    """Parse ``-p`` values into one :class:`ParamSpec` per parameter of ``block``.

    Each text is a comma-separated list of ``NAME`` (sample over its :attr:`Param.sample_range`),
    ``NAME=LO:HI`` (sample over ``[LO, HI]``) or ``NAME=VALUE`` (fix it). Parameters not named stay
    at their default; with no ``-p`` at all, every parameter is sampled over its sample range.

    Raises:
        IsplabError: an unknown name, a malformed item, a parameter given twice, ``LO >= HI``, or
            a value or range outside darktable's hard range.
    """
    items = [item.strip() for text in (texts or []) for item in text.split(",") if item.strip()]
    specs = {p.name: ParamSpec(p.name, p.default, p.default) for p in block.params}
    if not items:
        return {p.name: ParamSpec(p.name, *p.sample_range) for p in block.params}
    seen: set[str] = set()
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        p = block.param(name)
        if name in seen:
            raise IsplabError(f"parameter {name!r} of block {block.name} is given twice in -p")
        seen.add(name)
        value = value.strip()
        if not value:
            low, high = p.sample_range
        elif re.fullmatch(rf"{_NUMBER}:{_NUMBER}", value):
            low, high = (float(v) for v in value.split(":"))
            if not low < high:
                raise IsplabError(f"bad range {item!r}: expected LO:HI with LO < HI")
        elif re.fullmatch(_NUMBER, value):
            low = high = float(value)
        else:
            raise IsplabError(f"bad parameter {item!r}: expected NAME, NAME=LO:HI or NAME=VALUE (numbers)")
        for v in {low, high}:
            if not p.min <= v <= p.max:
                raise IsplabError(
                    f"{block.name}.{name}: {v:g} is outside darktable's range [{p.min:g}, {p.max:g}]"
                    + (f" {p.unit}" if p.unit else "")
                )
        specs[name] = ParamSpec(name, low, high)
    return specs
