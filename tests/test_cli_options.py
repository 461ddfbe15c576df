"""The shared CLI option parsers."""

from __future__ import annotations

import pytest

from isplab.cli_options import TrainerOptions, parse_quantize, trainer_options
from isplab.errors import IsplabError


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, None), ("float32", None), ("fp16", "float16"), ("float16", "float16"), ("INT8", "int8")],
)
def test_parse_quantize(text, expected):
    assert parse_quantize(text) == expected


def test_parse_quantize_rejects_other_values():
    with pytest.raises(IsplabError, match="bad --quantize 'int4': expected float16 or int8"):
        parse_quantize("int4")


@pytest.mark.parametrize(("text", "expected"), [("auto", "auto"), ("2", 2), ("-1", -1), ("0,2", [0, 2])])
def test_devices_forms(text, expected):
    assert trainer_options("cpu", text, "ddp", 2) == TrainerOptions("cpu", expected, "ddp", 2)


def test_bad_devices_and_nodes():
    with pytest.raises(IsplabError, match="bad --devices 'two'"):
        trainer_options(devices="two")
    with pytest.raises(IsplabError, match="bad --num-nodes 0"):
        trainer_options(num_nodes=0)


def test_as_kwargs_are_build_trainer_arguments():
    import inspect

    from isplab.engine import build_trainer

    kwargs = trainer_options("cpu", "1").as_kwargs()
    assert kwargs == {"device": "cpu", "devices": 1, "strategy": "auto", "num_nodes": 1}
    assert set(kwargs) <= set(inspect.signature(build_trainer).parameters)
