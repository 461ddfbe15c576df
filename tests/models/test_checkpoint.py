"""Model files given to the wrong command are named (:mod:`isplab.models.checkpoint`)."""

from __future__ import annotations

import re

import pytest

from isplab.errors import IsplabError
from isplab.models.awb import build_awb_net, load_awb_model, save_awb_model
from isplab.models.checkpoint import MODEL_KINDS
from isplab.models.genisp import genisp, load_genisp, save_genisp
from isplab.models.isp import build_isp_model, load_isp_model, save_isp_model
from isplab.models.proxy import build_proxy_model, load_proxy_model, save_proxy_model


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """One real, tiny model file of each kind: ``{kind: (path, its loader)}``."""
    from isplab.workflows.sky.model import build_sky_model, load_sky_model, save_sky_model

    folder = tmp_path_factory.mktemp("models")
    return {
        "AWB model": (save_awb_model(build_awb_net("reference", (32, 32), (2800.0, 7600.0)), folder / "awb.pt"),
                      load_awb_model),
        "ISP model": (save_isp_model(build_isp_model("lfnet", 4, num_blocks=1), folder / "isp.pt"), load_isp_model),
        "proxy model": (save_proxy_model(build_proxy_model([(0.0, 1.0)], width=4, depth=2), folder / "proxy.pt"),
                        load_proxy_model),
        "sky model": (save_sky_model(build_sky_model("resnet18", 3, [8, 8, 8]), folder / "sky.pt"), load_sky_model),
        "GenISP model": (save_genisp(genisp(), folder / "genisp.pt"), load_genisp),
    }


def test_every_model_kind_is_known(model_files):
    assert sorted(MODEL_KINDS.values()) == sorted(model_files)


def test_a_model_given_to_another_command_is_named(model_files):
    for kind, (path, _) in model_files.items():
        for other, (_, load) in model_files.items():
            if other == kind:
                assert load(path) is not None
                continue
            expected = f"'{path}' is not an isplab {other}: it is an isplab {kind}; expected an isplab {other}"
            with pytest.raises(IsplabError, match=re.escape(expected)):
                load(path)
