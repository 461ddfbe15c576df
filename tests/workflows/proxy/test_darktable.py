"""The XMP encoding against darktable itself: real darktable-cli renders of small DNGs, checked by
the physics of each block (exposure doubles, white-balance gains are the eigenvalues of the colour
map, chroma -1 is grey, sharpen adds detail, low-pass removes it), and darktable's refusals."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from isplab.errors import IsplabError
from isplab.io.image import read_image
from isplab.io.raw import read_raw
from isplab.workflows.proxy.blocks import get_block
from isplab.workflows.proxy.darktable import (
    RenderError,
    RenderJob,
    base_history,
    block_history,
    check_layouts,
    find_darktable,
    introspect,
    render,
)
from isplab.workflows.proxy.xmp import HistoryItem, write_sidecar

EXPOSURE, TEMPERATURE = get_block("exposure"), get_block("temperature")


def _job(tmp, name, dng, block, values, *, compress=False, items=None):
    gains = read_raw(dng).wb_gains
    history = items if items is not None else [*base_history(block, gains), block_history(block, values)]
    xmp = write_sidecar(tmp / f"{name}.xmp", history, compress=compress)
    return name, RenderJob(dng, xmp, tmp / f"{name}.tif")


@pytest.fixture(scope="module")
def renders(darktable, gradient_dng, texture_dng, tmp_path_factory):
    """Every render of this module, two at a time (each darktable-cli has its own config dir)."""
    tmp = tmp_path_factory.mktemp("renders")
    cb, sharpen, lowpass, haze = (get_block(n) for n in ("colorbalancergb", "sharpen", "lowpass", "hazeremoval"))
    jobs = [
        _job(tmp, "grad_off", gradient_dng, EXPOSURE, None),
        _job(tmp, "grad_ev+1", gradient_dng, EXPOSURE, {"exposure": 1.0}),
        _job(tmp, "grad_ev-1", gradient_dng, EXPOSURE, {"exposure": -1.0}, compress=True),  # darktable's gz form
        _job(tmp, "grad_wb_off", gradient_dng, TEMPERATURE, None),
        _job(tmp, "grad_wb", gradient_dng, TEMPERATURE, {"red": 2.0, "green": 1.0, "blue": 0.5}),
        _job(tmp, "grad_grey", gradient_dng, cb, {"chroma_global": -1.0}),
        _job(tmp, "tex_off", texture_dng, sharpen, None),
        _job(tmp, "tex_sharp", texture_dng, sharpen, {"radius": 2.0, "amount": 2.0, "threshold": 0.0}),
        _job(tmp, "tex_blur", texture_dng, lowpass, {"radius": 8.0}),
        _job(tmp, "tex_haze0", texture_dng, haze, {"strength": 0.0}),
    ]

    def run(item):
        name, job = item
        configdir = tmp / f"config-{name}"
        configdir.mkdir()
        return name, render(darktable, job, configdir, threads=1)

    with ThreadPoolExecutor(2) as pool:
        seconds = dict(pool.map(run, jobs))
    images = {name: read_image(job.output) for name, job in jobs}
    return images, seconds


def test_renders_are_linear_float_rgb(renders):
    images, seconds = renders
    off = images["grad_off"]
    assert off.shape == (96, 128, 3) and off.dtype == np.float32
    assert all(s > 0 for s in seconds.values())


def test_exposure_plus_one_ev_doubles_and_minus_one_halves(renders):
    images, _ = renders
    off = images["grad_off"]
    lit = np.abs(off) > 0.01
    assert np.median(images["grad_ev+1"][lit] / off[lit]) == pytest.approx(2.0, abs=1e-3)
    assert np.median(images["grad_ev-1"][lit] / off[lit]) == pytest.approx(0.5, abs=1e-3)
    assert np.abs(images["grad_ev+1"] - 2 * off).max() < 1e-3 * np.abs(off).max()


def test_temperature_gains_are_the_eigenvalues_of_the_colour_map(renders):
    """Gains act on camera RGB before the colour matrix M: off -> on is M diag(g) M^-1 per pixel."""
    images, _ = renders
    x = images["grad_wb_off"][4:-4, 4:-4].reshape(-1, 3).astype(np.float64)
    y = images["grad_wb"][4:-4, 4:-4].reshape(-1, 3).astype(np.float64)
    a, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert np.abs(x @ a - y).max() < 0.01 * np.abs(y).max()
    assert np.sort(np.linalg.eigvals(a).real) == pytest.approx([0.5, 1.0, 2.0], abs=0.02)
    # the base pipeline of the other blocks white-balances; this one does not
    assert np.abs(images["grad_off"] - images["grad_wb_off"]).max() > 0.01


def test_colorbalancergb_chroma_minus_one_is_grey(renders):
    images, _ = renders
    spread = lambda im: (im.max(axis=-1) - im.min(axis=-1)).mean() / im.mean()  # noqa: E731
    assert spread(images["grad_off"]) > 0.1
    assert spread(images["grad_grey"]) < 0.01


def _detail(image):
    grey = image.mean(axis=-1)
    return np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()


def test_sharpen_adds_detail_and_lowpass_removes_it(renders):
    images, _ = renders
    off = images["tex_off"]
    assert _detail(images["tex_sharp"]) > 1.6 * _detail(off)  # 2.1 here
    assert _detail(images["tex_blur"]) < 0.2 * _detail(off)  # 0.10 here
    # both act on Lab lightness: the mean level moves a little only (6 % for sharpen here)
    assert images["tex_sharp"].mean() == pytest.approx(off.mean(), rel=0.15)
    assert images["tex_blur"].mean() == pytest.approx(off.mean(), rel=0.15)


def test_hazeremoval_at_zero_strength_is_the_identity(renders):
    images, _ = renders
    assert np.abs(images["tex_haze0"] - images["tex_off"]).max() < 1e-3 * np.abs(images["tex_off"]).max()


def test_a_history_darktable_rejects_fails_with_its_message(darktable, gradient_dng, tmp_path):
    wrong = HistoryItem("exposure", 99, EXPOSURE.pack({"exposure": 1.0}))
    name, job = _job(tmp_path, "wrong", gradient_dng, EXPOSURE, None, items=[wrong])
    with pytest.raises(RenderError, match=r"version mismatch: history is 99, darktable is 6"):
        render(darktable, job, tmp_path / "config")
    assert not job.output.exists()


def test_introspection_matches_the_block_table(darktable):
    """Every block's modversion, struct size, field layout, hard range and default (except the
    temperature multipliers, whose darktable default is the camera's) as darktable compiled them."""
    from isplab.workflows.proxy.blocks import BLOCKS

    found = introspect(darktable, [b.operation for b in BLOCKS.values()])
    if found is None:
        pytest.skip(f"no darktable plugins found beside {darktable.cli}")
    assert check_layouts(darktable, list(BLOCKS.values()))
    for block in BLOCKS.values():
        fields = {f["name"]: f for f in found[block.operation]["fields"]}
        for p in block.params:
            f = fields[p.name]
            assert (f["min"], f["max"]) == (pytest.approx(p.min), pytest.approx(p.max)), (block.name, p.name)
            if block.name != "temperature":
                assert f["default"] == pytest.approx(p.default, abs=1e-6), (block.name, p.name)
        for table_field in block.fields:  # the values isplab writes for the other fields are darktable's defaults
            if block.name != "temperature" and table_field.count == 1:  # arrays carry no default
                assert fields[table_field.name]["default"] == pytest.approx(table_field.value, abs=1e-6), table_field.name


def test_an_unknown_struct_layout_is_refused(darktable):
    if introspect(darktable, ["exposure"]) is None:
        pytest.skip("no darktable plugins to compare with")
    newer = dataclasses.replace(EXPOSURE, modversion=7, struct_bytes=28, fields=(*EXPOSURE.fields, EXPOSURE.fields[-1]))
    with pytest.raises(IsplabError, match=r"exposure params version 6 of 24 bytes; isplab writes version 7 of 28 bytes"):
        check_layouts(darktable, [newer])


def test_missing_or_unsupported_darktable_is_refused(tmp_path):
    with pytest.raises(IsplabError, match=r"does not exist or is not executable.*--backend builtin"):
        find_darktable(str(tmp_path / "nosuch-darktable-cli"))
    fake = tmp_path / "darktable-cli"
    fake.write_text("#!/bin/sh\necho 'this is darktable-cli 4.8.0'\n")
    os.chmod(fake, 0o755)
    with pytest.raises(IsplabError, match=r"darktable 4\.8\.0 .* is not supported: .* darktable 4\.2\.x only"):
        find_darktable(str(fake))
