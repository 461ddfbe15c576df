"""The block table: struct layouts (versions, sizes, offsets of darktable 4.2.1 as listed in
../shared/docs/darktable.md), packing, and the -p parameter syntax. The comparison with the
installed darktable's own introspection is in test_darktable.py."""

from __future__ import annotations

import struct

import pytest

from isplab.errors import IsplabError
from isplab.workflows.proxy.blocks import BLOCKS, get_block, parse_param_specs

# darktable.md: module -> (version, bytes) in 4.2.1
DARKTABLE_MD = {
    "exposure": (6, 24),
    "temperature": (3, 16),
    "colorbalancergb": (5, 132),
    "sharpen": (1, 12),
    "hazeremoval": (1, 8),
    "lowpass": (4, 28),
    "denoiseprofile": (11, 412),
}


def test_versions_and_sizes_are_darktable_4_2s():
    assert set(BLOCKS) == set(DARKTABLE_MD)
    for name, (version, size) in DARKTABLE_MD.items():
        block = BLOCKS[name]
        assert (block.modversion, block.struct_bytes, len(block.pack())) == (version, size, size)


def test_exposure_struct_is_the_one_verified_against_darktable():
    assert get_block("exposure").pack({"exposure": 1.0}) == struct.pack("<iffffi", 0, 0.0, 1.0, 50.0, -4.0, 0)
    assert get_block("exposure").pack({"black": -0.05}) == struct.pack("<iffffi", 0, -0.05, 0.0, 50.0, -4.0, 0)


def test_offsets_of_the_learned_fields():
    cb = get_block("colorbalancergb")
    assert cb.offset("contrast") == 124 and cb.offset("saturation_formula") == 128
    assert (cb.offset("chroma_global"), cb.offset("saturation_global"), cb.offset("vibrance")) == (68, 76, 116)
    data = cb.pack({"contrast": 0.25, "vibrance": -0.5})
    assert struct.unpack_from("<f", data, 124)[0] == 0.25 and struct.unpack_from("<f", data, 116)[0] == -0.5
    assert struct.unpack_from("<i", data, 128)[0] == 1  # darktable UCS saturation, darktable's default
    lowpass = get_block("lowpass").pack({"radius": 3.0, "saturation": -1.0})
    assert struct.unpack("<iffffii", lowpass) == (0, 3.0, 1.0, 0.0, -1.0, 0, 1)
    assert struct.unpack("<fff", get_block("sharpen").pack({"amount": 1.5})) == (2.0, 1.5, 0.5)
    assert struct.unpack("<ff", get_block("hazeremoval").pack({"distance": 0.75})) == pytest.approx((0.2, 0.75))


def test_temperature_writes_the_second_green_equal_to_green():
    data = get_block("temperature").pack({"red": 2.0, "green": 1.25, "blue": 0.5})
    assert struct.unpack("<ffff", data) == (2.0, 1.25, 0.5, 1.25)


def test_unpack_inverts_pack_and_checks_the_size():
    block = get_block("sharpen")
    assert block.unpack(block.pack({"radius": 4.0})) == {"radius": 4.0, "amount": 0.5, "threshold": 0.5}
    with pytest.raises(IsplabError, match=r"sharpen params are 8 bytes: expected 12 \(version 1\)"):
        block.unpack(b"\0" * 8)


def test_values_outside_darktables_range_are_refused():
    with pytest.raises(IsplabError, match=r"exposure.exposure = 19 is outside darktable's range \[-18, 18\] EV"):
        get_block("exposure").pack({"exposure": 19.0})


def test_unknown_block_and_parameter_name_the_known_ones():
    with pytest.raises(IsplabError, match=r"unknown block 'filmic': expected one of exposure, temperature, colorbalancergb"):
        get_block("filmic")
    with pytest.raises(IsplabError, match=r"unknown parameter 'ev' of block exposure: expected one of exposure, black"):
        parse_param_specs(get_block("exposure"), ["ev"])


def test_param_specs():
    exposure = get_block("exposure")
    every = parse_param_specs(exposure, None)
    assert (every["exposure"].low, every["exposure"].high) == (-3.0, 4.0)  # the GUI's soft range
    assert (every["black"].low, every["black"].high) == (-0.1, 0.1)
    specs = parse_param_specs(exposure, ["exposure=-2:2.5"])
    assert (specs["exposure"].low, specs["exposure"].high, specs["exposure"].varied) == (-2.0, 2.5, True)
    assert (specs["black"].low, specs["black"].high, specs["black"].varied) == (0.0, 0.0, False)  # default
    fixed = parse_param_specs(exposure, ["exposure,black=0.01"])
    assert fixed["exposure"].varied and (fixed["black"].low, fixed["black"].varied) == (0.01, False)
    cb = parse_param_specs(get_block("colorbalancergb"), ["contrast", "vibrance=-1:1"])
    assert [n for n, s in cb.items() if s.varied] == ["contrast", "vibrance"]
    assert (cb["saturation_global"].low, cb["saturation_global"].high) == (0.0, 0.0)
    # denoiseprofile: the GUI's soft ranges (gui_init) for strength and bias; shadows has none
    dn = parse_param_specs(get_block("denoiseprofile"), None)
    assert {n: (s.low, s.high) for n, s in dn.items()} == {"strength": (0.001, 4.0), "shadows": (0.0, 1.8), "bias": (-10.0, 10.0)}


def test_sharpen_threshold_is_sampled_where_sharpen_acts():
    """Sharpen's threshold (hard range [0, 100], no soft range) is sampled over [0, 10] by default
    and by ``-p threshold``; ``-p threshold=0:100`` still gives the whole range; the dataset's
    description records both ranges."""
    sharpen = get_block("sharpen")
    every = parse_param_specs(sharpen, None)
    assert (every["threshold"].low, every["threshold"].high) == (0.0, 10.0)
    assert (every["radius"].low, every["radius"].high) == (0.0, 8.0)  # the soft range where no override
    assert (parse_param_specs(sharpen, ["threshold"])["threshold"].high) == 10.0
    assert (parse_param_specs(sharpen, ["threshold=0:100"])["threshold"].high) == 100.0
    described = sharpen.param("threshold").as_dict()
    assert (described["soft_min"], described["soft_max"], described["sample_min"], described["sample_max"]) == (0.0, 100.0, 0.0, 10.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("exposure=-20:2", r"exposure.exposure: -20 is outside darktable's range \[-18, 18\] EV"),
        ("exposure=2:1", r"bad range 'exposure=2:1': expected LO:HI with LO < HI"),
        ("exposure=abc", r"bad parameter 'exposure=abc': expected NAME, NAME=LO:HI or NAME=VALUE"),
        ("exposure,exposure=1", r"parameter 'exposure' of block exposure is given twice"),
        ("black=0.5:1.5", r"exposure.black: 1.5 is outside darktable's range \[-1, 1\]"),
    ],
)
def test_bad_param_specs_are_refused(text, message):
    with pytest.raises(IsplabError, match=message):
        parse_param_specs(get_block("exposure"), [text])


def test_default_heads_are_proxy_heads_and_listed_in_the_help():
    """Every block's default head exists; exposure's is the global head (benchmarks/proxy.py:
    47.4 dB on held-out images against 28.5 for affine), colorbalancergb's the pointwise head
    (44.6 against 38.3 for global), lowpass's the blur head (28.7 against 20.4 for global),
    sharpen's the unsharp head (62.0 dB on the changed held-out-image samples against 29.7 for
    affine), denoiseprofile's the add head (37.5 dB on held-out images against 32.9 for affine), and
    `proxy train --help` lists the blocks whose default is not affine."""
    from typer.testing import CliRunner

    from isplab.cli import app
    from isplab.models.proxy import PROXY_HEADS

    assert all(b.default_head in PROXY_HEADS for b in BLOCKS.values())
    assert BLOCKS["exposure"].default_head == "global" and BLOCKS["colorbalancergb"].default_head == "pointwise" and BLOCKS["lowpass"].default_head == "blur"
    assert BLOCKS["temperature"].default_head == "global" and BLOCKS["sharpen"].default_head == "unsharp"
    assert BLOCKS["denoiseprofile"].default_head == "add" and BLOCKS["hazeremoval"].default_head == "affine"
    text = " ".join(CliRunner().invoke(app, ["proxy", "train", "--help"], env={"COLUMNS": "400"}).output.split())
    for b in BLOCKS.values():
        if b.default_head != "affine":
            assert f"{b.name}: {b.default_head}" in text
    # and the blocks whose default loss is not L1 (denoiseprofile's MSE: 37.5 dB where L1 stayed at 32.7)
    from isplab.workflows.proxy.train import DEFAULT_LOSS

    assert DEFAULT_LOSS == {"sharpen": "l1+grad", "denoiseprofile": "mse"}
    for block, loss in DEFAULT_LOSS.items():
        assert f"{loss} for {block}" in text
