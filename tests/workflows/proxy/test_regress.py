"""`isplab proxy regress`: gradient regression through a frozen proxy, the render-back check (builtin
and real darktable-cli renders) and the Nelder-Mead search on the renderer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from isplab.cli import app
from isplab.engine import psnr
from isplab.errors import IsplabError
from isplab.workflows.proxy.blocks import get_block
from isplab.workflows.proxy.dataset import load_dataset
from isplab.workflows.proxy.evaluate import load_proxy
from isplab.workflows.proxy.generate import GenerateOptions, generate
from isplab.workflows.proxy.regress import BlackBox, RegressOptions, regress, regress_params, renders_to_reach
from isplab.workflows.proxy.train import ProxyTrainConfig, _read_tiff, train_proxy
from isplab.workflows.proxy.xmp import read_history

TINY = dict(width=8, depth=2, patch=32, batch_size=8, lr=2e-3, iters=100, eval_every=50, patches_per_epoch=80, device="cpu", holdout_params=0.0)


def _setup(tmp_path_factory, backend: str, count: int, images: int, iters: int):
    root = tmp_path_factory.mktemp(f"regress-{backend}")
    generate(GenerateOptions(block="exposure", output=root / "ds", count=count, synth_images=images, backend=backend,
                             size=(64, 48), workers=1, progress=False, params=["exposure=-2:2"]))  # fmt: skip
    train_proxy("exposure", root / "ds", root / "run", ProxyTrainConfig(**{**TINY, "iters": iters}), progress=False, report=False)
    return root / "ds", root / "run" / "model.pt"


@pytest.fixture(scope="module")
def builtin_setup(tmp_path_factory):
    return _setup(tmp_path_factory, "builtin", 16, 4, 100)


@pytest.mark.slow
def test_regression_recovers_what_the_proxy_rendered(builtin_setup):
    """Self-consistency: a target made by the proxy itself is matched from a random start."""
    data, model_path = builtin_setup
    model = load_proxy(model_path, "exposure")
    x = _read_tiff(load_dataset(data).path(load_dataset(data).samples[0]["input"]))[None]
    for truth in (0.2, 0.8):
        with torch.no_grad():
            target = model(x, torch.tensor([[truth]]))
        start, u = regress_params(model, x, target, iters=150, seed=1)
        assert 0.0 <= float(u) <= 1.0
        assert abs(float(u) - truth) < 0.02, (float(start), float(u), truth)
    assert all(not p.requires_grad for p in model.parameters())  # frozen


@pytest.mark.parametrize("head", ["global", "matrix", "pointwise", "blur"])
def test_regression_through_the_new_heads(head):
    """Self-consistency through an untrained-but-perturbed proxy with the ``global``/``matrix``/
    ``pointwise``/``blur`` head: the parameter gets gradients through the MLP and the U-Net, and is recovered."""
    from isplab.models.proxy import build_proxy_model

    torch.manual_seed(0)
    model = build_proxy_model([(-2.0, 2.0)], width=4, depth=1, head=head).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
        if head == "global":
            model.global_mlp[-1].weight.normal_(0, 0.3)
        if head in ("pointwise", "blur"):
            model.pixel_mlp[-1].weight.normal_(0, 0.3)
        if head == "blur":  # sigma and the mix depend on the parameter
            model.blur_mlp[-1].weight.normal_(0, 1.0)
            model.blur_mlp[-1].bias[1] = 0.5
    x = torch.rand(1, 3, 24, 32)
    for truth in (0.25, 0.7):
        with torch.no_grad():
            target = model(x, torch.tensor([[truth]]))
        _, u = regress_params(model, x, target, iters=150, seed=2)
        assert abs(float(u) - truth) < 0.02, (head, float(u), truth)


def test_restarts_keep_the_best_fit():
    """fit_restarts fits from every start in order; best_fit keeps the lowest loss. f(u) = cos(4 pi u)
    + u / 2 has its global minimum near u = 0.26 and a local one near 0.76: a start at 0.7 ends in the
    local one, a start at 0.2 in the global one."""
    from isplab.workflows.proxy.regress import best_fit, fit_restarts

    forward = lambda u: (torch.cos(4 * torch.pi * u) + 0.5 * u).reshape(1, 1, 1, 1)  # noqa: E731
    target = torch.full((1, 1, 1, 1), -1.5)
    runs = fit_restarts(forward, target, [torch.tensor([[0.7]]), torch.tensor([[0.2]])], iters=200, lr=0.01, polish=10)
    assert [float(s) for s, _, _ in runs] == pytest.approx([0.7, 0.2])
    assert float(runs[0][1]) == pytest.approx(0.76, abs=0.02) and float(runs[1][1]) == pytest.approx(0.26, abs=0.02)
    assert best_fit(runs) is runs[1] and runs[1][2] < runs[0][2]
    assert best_fit(runs[::-1]) is runs[1]


def test_regress_params_restarts_keep_the_lowest_loss():
    """regress_params(restarts=3, seed=5) keeps the best of the single fits from seeds 5, 6 and 7."""
    from isplab.models.proxy import build_proxy_model

    torch.manual_seed(0)
    model = build_proxy_model([(-2.0, 2.0), (0.0, 1.0)], width=4, depth=1, head="global").eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.3)
        model.global_mlp[-1].weight.normal_(0, 1.0)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        target = model(x, torch.tensor([[0.3, 0.6]]))
    loss = lambda u: float(torch.mean((model(x, u) - target) ** 2))  # noqa: E731
    singles = [regress_params(model, x, target, iters=20, seed=s, polish=0) for s in (5, 6, 7)]
    start, u = regress_params(model, x, target, iters=20, seed=5, polish=0, restarts=3)
    best = min(singles, key=lambda su: loss(su[1]))
    assert torch.equal(start, best[0]) and torch.allclose(u, best[1])
    assert len({round(loss(su[1]), 12) for su in singles}) > 1  # the starts end apart: the choice matters


@pytest.mark.slow
def test_regress_builtin_end_to_end(builtin_setup, tmp_path):
    data, model_path = builtin_setup
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["proxy", "regress", "exposure", "-m", str(model_path), "--sample", "5", "--dataset", str(data),
                                      "--search-renders", "40", "--refine", "15", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "regress.json").read_text())
    truth = load_dataset(data).samples[5]["params"]["exposure"]
    assert saved["truth"]["exposure"] == pytest.approx(truth)
    recovered = saved["recovered"]["exposure"]
    assert saved["error_percent"]["exposure"] == pytest.approx(100 * abs(recovered - truth) / 4.0)
    # the render-back TIFF is the black box's render of the recovered value, scored against the target
    target = _read_tiff(data / "outputs" / "000005.tif")[None]
    back = _read_tiff(out / "render_back.tif")[None]
    assert saved["render_back_psnr"] == pytest.approx(float(psnr(back, target)), abs=1e-4)
    inp = _read_tiff(data / "inputs" / f"{load_dataset(data).samples[5]['image']}.tif")[None]
    assert torch.allclose(back, inp * 2.0**recovered, rtol=1e-4, atol=1e-6)
    # Nelder-Mead on the exact renderer finds the truth within its budget
    search = saved["search"]
    assert search["renders"] <= 40 and search["error_percent"]["exposure"] < 1.0 and search["psnr"] > 40
    # its trace: every improvement, renders rising, errors of the best renders, ending at its answer
    trace = search["trace"]
    assert [r for r, _ in trace] == sorted({r for r, _ in trace}) and trace[-1][0] <= search["renders"]
    assert trace[-1][1] == pytest.approx(search["error_percent"]["exposure"])
    reached = renders_to_reach(trace, trace[-1][1])
    assert reached == next(r for r, e in trace if e <= trace[-1][1]) and renders_to_reach(trace, -1.0) is None
    assert "render-back (builtin)" in result.output and "Nelder-Mead on the renderer" in result.output
    # the refinement starts at the proxy's answer (its first render is the render-back) and only improves on it;
    # Levenberg-Marquardt (the default) lands on the truth (seen: 0.09 % -> 2e-6 % in 8 renders, 155 dB)
    refined = saved["refined"]
    assert refined["renders"] <= 15 and refined["psnr"] > max(100.0, saved["render_back_psnr"])
    assert refined["error_percent"]["exposure"] < 1e-3, (refined, saved["error_percent"])
    assert refined["method"] == "Levenberg-Marquardt" and "refined on the renderer from the proxy's answer (Levenberg-Marquardt): " in result.output
    # Nelder-Mead from the same answer, the same budget: better than the proxy, short of the truth
    nm = regress(RegressOptions(block="exposure", model=model_path, sample="5", dataset=data, search=False, refine=15, refine_method="nelder-mead")).refined
    assert nm["method"] == "Nelder-Mead" and nm["renders"] <= 15 and nm["psnr"] >= saved["render_back_psnr"] - 1e-6
    assert nm["error_percent"]["exposure"] < min(0.2, saved["error_percent"]["exposure"]), nm
    with pytest.raises(IsplabError, match="unknown --refine-method 'newton': expected one of lm, nelder-mead"):
        regress(RegressOptions(block="exposure", model=model_path, sample="5", dataset=data, refine=5, refine_method="newton"))


@pytest.mark.slow
def test_regress_target_and_input_files_without_raw(builtin_setup, tmp_path):
    """A user's own image pair (no dataset sample, no raw): the proxy regression runs and says that
    the render-back check and the search need the raw; the result matches regress_params (two restarts)."""
    data, model_path = builtin_setup
    ds = load_dataset(data)
    sample = ds.samples[3]
    inp, target = data / "inputs" / f"{sample['image']}.tif", data / "outputs" / "000003.tif"
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["proxy", "regress", "exposure", "-m", str(model_path), "--target", str(target),
                                      "--input", str(inp), "--iters", "80", "--restarts", "2", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "render-back check, search and refinement skipped: they need the raw" in result.output
    saved = json.loads((out / "regress.json").read_text())
    assert saved["render_back_psnr"] is None and saved.get("truth") is None
    model = load_proxy(model_path, "exposure")
    _, unit = regress_params(model, _read_tiff(inp)[None], _read_tiff(target)[None], iters=80, seed=0, restarts=2)
    assert saved["recovered"]["exposure"] == pytest.approx(-2.0 + 4.0 * float(unit), abs=1e-4)
    # the proxy was trained briefly: it still lands near the truth (within 10% of the range)
    assert abs(saved["recovered"]["exposure"] - sample["params"]["exposure"]) < 0.4


@pytest.mark.slow
def test_regress_refusals(builtin_setup, tmp_path):
    data, model_path = builtin_setup
    with pytest.raises(IsplabError, match="is a proxy of block 'exposure', not 'sharpen'"):
        regress(RegressOptions(block="sharpen", model=model_path, sample="1", dataset=data))
    with pytest.raises(IsplabError, match="sample '999' is not in dataset"):
        regress(RegressOptions(block="exposure", model=model_path, sample="999", dataset=data))
    with pytest.raises(IsplabError, match="needs --target IMAGE and --input IMAGE"):
        regress(RegressOptions(block="exposure", model=model_path, target=data / "outputs" / "000001.tif"))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "regress.json").write_text("{}")
    with pytest.raises(IsplabError, match="already holds regress.json"):
        regress(RegressOptions(block="exposure", model=model_path, sample="1", dataset=data, output=tmp_path / "o"))
    with pytest.raises(IsplabError, match="does not exist"):
        regress(RegressOptions(block="exposure", model=tmp_path / "none.pt", sample="1", dataset=data))


@pytest.mark.slow
def test_render_back_with_darktable(darktable, tmp_path_factory, tmp_path):
    """Real darktable-cli: the XMP written for the recovered values holds them, and rendering the
    true values reproduces the target."""
    data, model_path = _setup(tmp_path_factory, "darktable", 2, 2, 10)
    ds = load_dataset(data)
    sample = ds.samples[1]
    box = BlackBox(ds, data / "images" / f"{sample['image']}.dng", tmp_path)
    target = _read_tiff(data / sample["output"])[None]
    again = torch.from_numpy(box.render({"exposure": sample["params"]["exposure"]})).permute(2, 0, 1)[None]
    assert float(psnr(again, target)) > 60
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["proxy", "regress", "exposure", "-m", str(model_path), "--sample", sample["id"], "--search-renders", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "regress.json").read_text())
    assert saved["backend"].startswith("darktable 4.2") and saved["search"]["renders"] == 2
    items = {item.operation: item for item in read_history(out / "render_back.xmp")}
    fields = get_block("exposure").unpack(items["exposure"].params)
    assert items["exposure"].enabled and fields["exposure"] == pytest.approx(saved["recovered"]["exposure"], abs=1e-6)
    back = _read_tiff(out / "render_back.tif")[None]
    assert saved["render_back_psnr"] == pytest.approx(float(psnr(back, target)), abs=1e-4)
    assert np.isfinite(saved["render_back_psnr"])


@pytest.mark.slow
def test_refinement_on_darktable_pins_down_colorbalancergb(darktable, tmp_path):
    """Real darktable-cli, colorbalancergb (contrast, chroma, saturation, vibrance): from a start a few
    per cent of the ranges off the truth, Levenberg-Marquardt on the renders recovers every parameter
    to within 0.05 % of its range in 26 renders; Nelder-Mead with the same budget stays further off
    (chroma, saturation and vibrance change the render little and alike: the Jacobian's smallest
    singular direction moves the render by about 80-90 dB PSNR per 2 % step, ``benchmarks/proxy.py``)."""
    from isplab.workflows.proxy.regress import refine_on_renderer

    generate(GenerateOptions(block="colorbalancergb", output=tmp_path / "ds", count=1, synth_images=1, size=(96, 64), workers=1, progress=False,
                             params=["contrast", "chroma_global", "saturation_global", "vibrance"]))  # fmt: skip
    ds = load_dataset(tmp_path / "ds")
    sample = ds.samples[0]
    image = next(im for im in ds.info["images"] if im["id"] == sample["image"])
    names = ["contrast", "chroma_global", "saturation_global", "vibrance"]
    lo = np.array([p["range"][0] for p in ds.info["params"] if p["name"] in names])
    hi = np.array([p["range"][1] for p in ds.info["params"] if p["name"] in names])
    truth = {n: float(sample["params"][n]) for n in names}
    target = _read_tiff(ds.path(sample["output"]))[None]
    u0 = (np.array([truth[n] for n in names]) - lo) / (hi - lo)
    start = np.clip(u0 + np.array([0.04, -0.05, 0.05, -0.04]), 0.0, 1.0)
    results = {}
    for method in ("lm", "nelder-mead"):
        box = BlackBox(ds, tmp_path / "ds" / image["file"], tmp_path / method)
        (tmp_path / method).mkdir()
        results[method] = refine_on_renderer(box, target, start, names, lo, hi, 26, truth, method)
    lm, nm = results["lm"], results["nelder-mead"]
    assert lm["renders"] <= 26 and nm["renders"] <= 26
    assert max(lm["error_percent"].values()) < 0.05, lm["error_percent"]
    assert lm["psnr"] > 90, lm["psnr"]
    assert np.mean(list(nm["error_percent"].values())) > 10 * np.mean(list(lm["error_percent"].values())), (nm["error_percent"], lm["error_percent"])


@pytest.mark.slow
def test_sweep_frames_video_and_gif(builtin_setup, tmp_path):
    import cv2
    import imageio_ffmpeg

    from isplab.workflows.proxy.evaluate import to_display

    data, model_path = builtin_setup
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["proxy", "sweep", "exposure", "exposure", "-m", str(model_path), "--sample", "2",
                                      "--dataset", str(data), "--steps", "3", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["values"] == [-2.0, 0.0, 2.0] and saved["renderer"] == "builtin"
    sample = load_dataset(data).samples[2]
    x = _read_tiff(data / sample["input"])
    w = x.shape[-1]
    for k, value in enumerate(saved["values"]):
        frame = cv2.imread(str(out / "frames" / f"frame_{k:04d}.png"))[..., ::-1]
        assert frame.shape == (x.shape[1], 2 * w + 4, 3)
        # right: the renderer (builtin exposure = input x 2^EV); left: the proxy at that value
        expected = np.round(to_display(x * 2.0**value).permute(1, 2, 0).numpy() * 255)
        assert np.abs(frame[:, w + 4 :].astype(float) - expected).max() <= 1
    for video in ("sweep.mp4", "sweep.gif"):
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out / video))
        assert frames == 3, video
    assert "already holds" in str(
        CliRunner().invoke(app, ["proxy", "sweep", "exposure", "exposure", "-m", str(model_path), "--sample", "2", "-o", str(out)]).exception
    )
    unknown = CliRunner().invoke(app, ["proxy", "sweep", "exposure", "black", "-m", str(model_path), "--sample", "2", "-o", str(tmp_path / "b")])
    assert "'black' is not one of them" in str(unknown.exception)
