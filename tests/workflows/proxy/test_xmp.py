"""XMP sidecars: darktable's two params encodings and the history stack a render uses.
(darktable itself reading both encodings is checked in test_darktable.py.)"""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.workflows.proxy.blocks import get_block
from isplab.workflows.proxy.darktable import base_history, block_history
from isplab.workflows.proxy.xmp import HistoryItem, decode_params, encode_params, read_history, sidecar, write_sidecar


def test_hex_encoding_is_the_little_endian_struct():
    data = get_block("exposure").pack({"exposure": 1.0})
    assert encode_params(data) == "00000000" "00000000" "0000803f" "00004842" "000080c0" "00000000"
    assert decode_params(encode_params(data)) == data


def test_gz_encoding_is_darktables():
    data = get_block("colorbalancergb").pack({"contrast": 0.3})
    text = encode_params(data, compress=True)
    packed = zlib.compress(data, 9)
    assert text == f"gz{min(len(data) // len(packed) + 1, 99):02d}" + base64.b64encode(packed).decode()
    assert text.startswith("gz") and text[2:4].isdigit() and int(text[2:4]) >= 2  # 132 mostly-zero bytes compress
    assert decode_params(text) == data


def test_bad_params_text_is_refused():
    with pytest.raises(IsplabError, match="bad darktable:params 'zz"):
        decode_params("zz12")


def test_sidecar_round_trip(tmp_path):
    items = [
        HistoryItem("temperature", 3, get_block("temperature").pack({"red": 2.0})),
        HistoryItem("exposure", 6, get_block("exposure").pack({"exposure": 0.5}), enabled=False),
    ]
    for compress in (False, True):
        path = write_sidecar(tmp_path / "a.xmp", items, compress=compress)
        assert read_history(path) == items
    text = sidecar(items)
    assert 'darktable:history_end="2"' in text and 'darktable:auto_presets_applied="1"' in text


def test_a_render_history_is_base_pipeline_plus_the_block():
    gains = np.array([2.0, 1.0, 1.5])
    exposure = get_block("exposure")
    on = [*base_history(exposure, gains), block_history(exposure, {"exposure": 1.0})]
    assert [(i.operation, i.enabled) for i in on] == [("temperature", True), ("highlights", False), ("exposure", True)]
    assert get_block("temperature").unpack(on[0].params) == {"red": 2.0, "green": 1.0, "blue": 1.5, "g2": 1.0}
    assert exposure.unpack(on[2].params)["exposure"] == 1.0
    off = block_history(exposure, None)
    assert not off.enabled and exposure.unpack(off.params)["exposure"] == 0.0
    # the temperature block's own renders have no base white balance
    temperature = get_block("temperature")
    assert [i.operation for i in base_history(temperature, gains)] == ["highlights"]


def test_not_a_sidecar_is_refused(tmp_path):
    bad = tmp_path / "bad.xmp"
    bad.write_text("<x:xmpmeta garbage")
    with pytest.raises(IsplabError, match=r"cannot parse XMP .*bad.xmp"):
        read_history(bad)
    with pytest.raises(IsplabError, match="XMP file not found"):
        read_history(tmp_path / "none.xmp")
