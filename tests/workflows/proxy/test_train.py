"""`isplab proxy train` and `isplab proxy test`: splits, patches, losses, the run folder, resume,
the report, and bad input (builtin backend: runs everywhere)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from isplab.cli import app
from isplab.engine import psnr
from isplab.errors import IsplabError
from isplab.workflows.proxy.dataset import load_dataset
from isplab.workflows.proxy.evaluate import _grid, load_proxy, predict, to_display
from isplab.workflows.proxy.generate import GenerateOptions, generate
from isplab.workflows.proxy.train import (
    ProxyPatchDataset,
    ProxyTrainConfig,
    _Samples,
    holdout_mask,
    make_splits,
    proxy_loss,
    train_proxy,
)

TINY = dict(width=8, depth=2, patch=32, batch_size=8, lr=2e-3, iters=150, eval_every=50, patches_per_epoch=80, device="cpu", holdout_params=0.2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("proxy") / "ds"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # generate renders with cpu_count // workers threads; the caller keeps its own
    generate(GenerateOptions(block="exposure", output=out, count=24, synth_images=6, backend="builtin", size=(64, 48),
                             workers=1, progress=False, params=["exposure=-2:2"]))  # fmt: skip
    # rendering in this process (workers=1) must not leave the caller's torch thread count changed
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("proxy") / "run"
    train_proxy("exposure", dataset, model_dir, ProxyTrainConfig(**TINY), progress=False)
    return model_dir


def test_holdout_mask_bands():
    units = np.array([[0.1, 0.1], [0.5, 0.1], [0.1, 0.46], [0.44, 0.9], [0.55, 0.2]])
    # fraction 0.2 over 2 parameters: band [0.45, 0.55) of each
    assert holdout_mask(units, 0.2).tolist() == [False, True, True, False, False]
    assert not holdout_mask(units, 0.0).any()


def test_splits_are_by_image_and_by_band(dataset):
    data = load_dataset(dataset)
    s = make_splits(data, ["exposure"], 0.2)
    assert len(s.train) + len(s.val_images) + len(s.val_params) + len(s.val_both) == len(data.samples)
    train_images = {x["image"] for x in s.train + s.val_params}
    val_images = {x["image"] for x in s.val_images + s.val_both}
    assert train_images.isdisjoint(val_images) and val_images
    assert all(0.4 <= x["unit"]["exposure"] < 0.6 for x in s.val_params + s.val_both)
    assert not any(0.4 <= x["unit"]["exposure"] < 0.6 for x in s.train + s.val_images)


def test_patches_are_a_pure_function_of_seed_epoch_index(dataset):
    data = load_dataset(dataset)
    samples = _Samples(data, make_splits(data, ["exposure"], 0.2).train, ["exposure"])
    patches = ProxyPatchDataset(samples, 16, 10, seed=3)
    a = patches[4]
    assert all(torch.equal(u, v) for u, v in zip(a, ProxyPatchDataset(samples, 16, 10, seed=3)[4]))
    patches.set_epoch(1)
    assert not torch.equal(a[0], patches[4][0])
    for x, y, unit in (patches[i] for i in range(10)):
        # the builtin exposure with black 0 is x * 2^EV: the same crop and flip of input and output
        ev = -2.0 + 4.0 * float(unit[0])
        assert torch.allclose(y, x * 2.0**ev, rtol=1e-4, atol=1e-6)


def test_patch_zero_gives_whole_images(dataset, tmp_path, refused):
    """--patch 0: every item is a whole training image (flipped or not) with its own output;
    a negative patch is refused before any work."""
    data = load_dataset(dataset)
    samples = _Samples(data, make_splits(data, ["exposure"], 0.2).train, ["exposure"])
    wholes = {tuple(samples.get(i)[0].flatten()[:8].tolist()) for i in range(len(samples))}
    flips = 0
    for x, y, unit in (ProxyPatchDataset(samples, 0, 12, seed=1)[i] for i in range(12)):
        assert x.shape == (3, 48, 64)
        ev = -2.0 + 4.0 * float(unit[0])
        assert torch.allclose(y, x * 2.0**ev, rtol=1e-4, atol=1e-6)
        found = tuple(x.flatten()[:8].tolist()) in wholes
        flips += not found
        assert found or tuple(x.flip(-1).flatten()[:8].tolist()) in wholes
    assert 0 < flips < 12
    message = refused("proxy", "train", "exposure", str(dataset), str(tmp_path / "r"), "--patch", "-1")
    assert "patch must be at least 0 (0: whole images), got -1" in message and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_train_blur_head_on_whole_images(dataset, tmp_path):
    """``proxy train --head blur`` fits the blur and pixel MLPs alone first (``--pixel-steps``),
    trains on whole images without being told ``--patch 0``, records both, and the exposure proxy
    it writes beats the identity on held-out images."""
    model_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["proxy", "train", "exposure", str(dataset), str(model_dir), "--head", "blur",
                                      "--width", "4", "--depth", "2", "--batch-size", "4", "--lr", "5e-3", "--iters", "40",
                                      "--eval-every", "20", "--patches-per-epoch", "40", "--device", "cpu", "--holdout-params", "0.2",
                                      "--pixel-steps", "60", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((model_dir / "config.json").read_text())
    assert config["head"] == "blur" and config["patch"] == 0 and config["pixel_steps"] == 60
    assert "blur and pixel MLPs fitted alone: 60 steps" in (model_dir / "log.txt").read_text()
    model = load_proxy(model_dir / "model.pt", "exposure")
    assert model.head_kind == "blur"
    scores = json.loads((model_dir / "report_metrics.json").read_text())["groups"]
    data = load_dataset(dataset)
    splits = make_splits(data, ["exposure"], 0.2)
    source = _Samples(data, splits.val_images, ["exposure"])
    identity = np.mean([float(psnr(x[None], y[None])) for x, y, _ in (source.get(i) for i in range(len(source)))])
    assert scores["held-out images"]["psnr"] > identity + 3, (scores["held-out images"]["psnr"], identity)


def test_fit_pixels_teaches_the_pointwise_part_alone(dataset):
    """fit_pixels (random pixels of the training samples, the pixel MLP only, 300 steps): exposure
    x 2^EV is then reproduced by the pointwise part to > 40 dB (median) on held-out images, > 10 dB
    above the identity on average; the U-Net is untouched."""
    from isplab.models.proxy import build_proxy_model
    from isplab.workflows.proxy.train import fit_pixels

    data = load_dataset(dataset)
    splits = make_splits(data, ["exposure"], 0.2)
    torch.manual_seed(0)
    model = build_proxy_model([(-2.0, 2.0)], width=4, depth=1, head="pointwise")
    unet = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("pixel_mlp")}
    fit_pixels(model, _Samples(data, splits.train, ["exposure"]), 300, seed=0, pixels=4096)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in unet.items())
    source = _Samples(data, splits.val_images, ["exposure"])
    with torch.no_grad():
        pairs = [(float(psnr(model.pointwise_transform(x[None], u[None]), y[None])), float(psnr(x[None], y[None])))
                 for x, y, u in (source.get(i) for i in range(len(source)))]  # fmt: skip
    scores, identity = np.array(pairs).T
    assert np.median(scores) > 40 and np.mean(scores - identity) > 10, pairs


class _SyntheticBlur:
    """Samples ``(x, y, unit)`` whose truth is known: ``y = (0.5 + u1) * lab_gaussian_blur(x, 1 + 5 u0)``
    (a blur of ``1 + 5 u0`` pixels, then a gain), on smooth random textures (``fit_pixels``
    reads samples through ``len`` and ``get``, as it reads a dataset's)."""

    contrast, detail = 0.8, 0.05  # the textures: smooth part's range, then added fine detail

    def __init__(self, count: int = 24, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(count):
            x = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(48, 64), mode="bilinear")
            x = x * self.contrast + 0.1 + self.detail * torch.rand(1, 3, 48, 64, generator=g)
            unit = torch.rand(2, generator=g)
            self.items.append((x[0], self.truth(x, unit)[0], unit))

    @staticmethod
    def truth(x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        from isplab.models.proxy import lab_gaussian_blur

        return (0.5 + unit[1]) * lab_gaussian_blur(x, 1.0 + 5.0 * unit[0])

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int):
        return self.items[i]


@pytest.mark.slow
def test_fit_pixels_prefits_the_blur_head():
    """fit_pixels on a ``blur`` proxy (400 steps on whole blurred images, then 400 on cached pixels; the U-Net not run)
    recovers a known sigma(u) = 1 + 5 u to within 5 % (2.2 % measured) and the gain 0.5 + u on held-out samples
    (> 35 dB, > 10 dB above the identity; 49.0 and 34.8 measured); a wrong sigma mapping (sigma halved) fails both."""
    from isplab.models.proxy import build_proxy_model
    from isplab.workflows.proxy.train import fit_pixels

    torch.manual_seed(0)
    model = build_proxy_model([(0.0, 1.0), (0.0, 1.0)], width=4, depth=1, head="blur")
    unet = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("pixel_mlp", "blur_mlp"))}
    fit_pixels(model, _SyntheticBlur(), 800, seed=0, pixels=2048, per_sample=512, lr=3e-3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in unet.items())
    with torch.no_grad():
        u = torch.tensor([[0.2, 0.5], [0.5, 0.5], [0.8, 0.5]])
        sigma, mix = model.blur_sigma(u)
        truth = 1.0 + 5.0 * u[:, 0]
        assert torch.allclose(sigma, truth, rtol=0.05), (sigma, truth)
        assert torch.allclose(mix, torch.ones(3), atol=0.05), mix
        held = _SyntheticBlur(count=6, seed=1)
        pairs = [(float(psnr(model.colour_transform(model.blur_transform(x[None], u[None]), u[None]), y[None])), float(psnr(x[None], y[None])))
                 for x, y, u in held.items]  # fmt: skip
    scores, identity = np.array(pairs).T
    assert scores.min() > 35 and np.mean(scores - identity) > 10, pairs


def test_blur_head_refuses_patches(dataset, tmp_path, refused):
    """The blur head is trained on whole images: a crop size is refused in one line, nothing written."""
    message = refused("proxy", "train", "exposure", str(dataset), str(tmp_path / "run"), "--head", "blur", "--patch", "32", "--device", "cpu")
    assert "--patch 0" in message and not (tmp_path / "run").exists()


def test_fit_pixels_refuses_other_heads():
    from isplab.models.proxy import build_proxy_model
    from isplab.workflows.proxy.train import fit_pixels

    model = build_proxy_model([(0.0, 1.0)], width=4, depth=1, head="global")
    with pytest.raises(IsplabError, match="'global'"):
        fit_pixels(model, _SyntheticBlur(count=2), 1)


def test_losses_values():
    t = torch.zeros(1, 3, 8, 8)
    assert float(proxy_loss(t + 0.5, t, "l1")) == pytest.approx(0.5)
    assert float(proxy_loss(t + 0.5, t, "mse")) == pytest.approx(0.25)
    assert float(proxy_loss(t + 0.5, t, "l1+grad")) == pytest.approx(0.5)  # no edges: no gradient term
    edge = t.clone()
    edge[..., 4:] = 1.0
    # L1 1/2; horizontal differences: one column of 7 differs by 1 -> mean 1/7; vertical: none
    assert float(proxy_loss(edge, t, "l1+grad")) == pytest.approx(0.5 + 1 / 7)
    with pytest.raises(IsplabError, match="unknown loss"):
        proxy_loss(t, t, "l2")


@pytest.mark.slow
def test_run_folder_and_learning(run, dataset):
    for name in ("model.pt", "config.json", "log.txt", "report.html", "report_grid.png", "report_metrics.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).exists(), name
    assert (run / "logs/csv/version_0/metrics.csv").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["block"] == "exposure" and config["params"] == ["exposure"] and config["loss"] == "l1"
    assert config["head"] == "global"  # no head given: the block's default (blocks.py)
    model = load_proxy(run / "model.pt", "exposure")
    assert model.head_kind == "global"
    meta = model.proxy_config["meta"]
    assert meta["params"] == ["exposure"] and meta["fixed"] == {"black": 0.0} and meta["backend"] == "builtin"
    assert model.low.tolist() == [-2.0] and model.high.tolist() == [2.0]
    # the proxy beats the identity on held-out images
    data = load_dataset(dataset)
    splits = make_splits(data, ["exposure"], 0.2)
    source = _Samples(data, splits.val_images, ["exposure"])
    gains = []
    with torch.no_grad():
        for i in range(len(source)):
            x, y, _ = source.get(i)
            values = {"exposure": splits.val_images[i]["params"]["exposure"]}
            gains.append(float(psnr(predict(model, x[None], values), y[None])) - float(psnr(x[None], y[None])))
    assert np.mean(gains) > 2.0
    scores = json.loads((run / "report_metrics.json").read_text())["groups"]
    assert set(scores) == {"held-out images", "held-out parameters", "held-out images and parameters"}
    assert scores["held-out images"]["n"] == len(splits.val_images)
    # display PSNR: both images clipped and sRGB-encoded, as a viewer sees them
    from isplab.workflows.proxy.evaluate import to_display

    with torch.no_grad():
        display = []
        for i in range(len(source)):
            x, y, _ = source.get(i)
            pred = predict(model, x[None], {"exposure": splits.val_images[i]["params"]["exposure"]})
            display.append(float(psnr(to_display(pred), to_display(y[None]))))
    assert scores["held-out images"]["psnr_display"] == pytest.approx(np.mean(display), abs=1e-3)
    log = (run / "log.txt").read_text()
    assert "step 150:" in log and "finished at step 150" in log


@pytest.mark.slow
def test_resume_continues_the_run(dataset, tmp_path):
    model_dir = tmp_path / "run"
    opts = {**TINY, "iters": 20, "eval_every": 10}
    # --epochs 2 of 80 patches in batches of 8: 20 iterations
    result = CliRunner().invoke(app, ["proxy", "train", "exposure", str(dataset), str(model_dir), "--width", "8", "--depth", "2",
                                      "--patch", "32", "--batch-size", "8", "--lr", "2e-3", "--epochs", "2", "--patches-per-epoch",
                                      "80", "--eval-every", "10", "--device", "cpu", "--holdout-params", "0.2", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "finished at step 20" in (model_dir / "log.txt").read_text() and (model_dir / "report.html").is_file()
    train_proxy("exposure", dataset, model_dir, ProxyTrainConfig(**{**opts, "iters": 30}), resume=True, progress=False, report=False)
    log = (model_dir / "log.txt").read_text()
    assert "resumed from" in log and "finished at step 30" in log
    assert (model_dir / "logs/csv/version_1/metrics.csv").is_file()
    with pytest.raises(IsplabError, match="cannot resume"):
        train_proxy("exposure", dataset, model_dir, ProxyTrainConfig(**{**opts, "iters": 40, "width": 4}), resume=True, progress=False, report=False)


def test_grid_columns_and_display_curve():
    x, y, pred = torch.full((3, 4, 5), 0.18), torch.full((3, 4, 5), 0.5), torch.full((3, 4, 5), 0.52)
    grid = _grid([({}, x, y, pred)])
    assert grid.shape == (4, 4 * 5 + 3 * 2, 3)
    assert np.allclose(grid[:, :5], float(to_display(torch.tensor(0.18))))
    assert np.allclose(grid[:, 7:12], float(to_display(torch.tensor(0.5))))
    assert np.allclose(grid[:, 21:], 0.2, atol=1e-5)  # |0.52 - 0.5| x 10
    assert float(to_display(torch.tensor(1.0))) == pytest.approx(1.0)
    assert float(to_display(torch.tensor(0.001))) == pytest.approx(0.01292)


@pytest.mark.slow
def test_cli_test_command_and_refusals(run, dataset, tmp_path, refused):
    out = tmp_path / "test"
    result = CliRunner().invoke(app, ["proxy", "test", str(dataset), "-m", str(run / "model.pt"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "held-out images:" in result.output and (out / "report.html").is_file()
    saved = json.loads((out / "report_metrics.json").read_text())["groups"]
    assert saved == json.loads((run / "report_metrics.json").read_text())["groups"]  # same band from config.json
    assert "already holds" in refused("proxy", "test", str(dataset), "-m", str(run / "model.pt"), "-o", str(out))
    # an existing run is refused before any work
    assert "already holds" in refused("proxy", "train", "exposure", str(dataset), str(run), "--patch", "32", "--no-progress")
    # the dataset holds another block
    assert "holds samples of block 'exposure', not 'sharpen'" in refused("proxy", "train", "sharpen", str(dataset), str(tmp_path / "r"))
    assert "unknown block" in refused("proxy", "train", "curves", str(dataset), str(tmp_path / "r"))
    assert "is fixed in dataset" in refused("proxy", "train", "exposure", str(dataset), str(tmp_path / "r"), "-p", "black")
    assert "smaller than --patch 128: pass --patch 48 or less" in refused("proxy", "train", "exposure", str(dataset), str(tmp_path / "r"))
    assert "unknown parameter" in refused("proxy", "train", "exposure", str(dataset), str(tmp_path / "r"), "-p", "gamma")
    with pytest.raises(IsplabError, match="is a proxy of block 'exposure', not 'sharpen'"):
        load_proxy(run / "model.pt", "sharpen")
    assert not (tmp_path / "r").exists()


def test_samples_normalise_by_the_given_ranges(dataset):
    """Training uses the dataset's unit values; scoring a model normalises by the model's own ranges."""
    data = load_dataset(dataset)
    s = data.samples[3]
    ev = s["params"]["exposure"]
    own = _Samples(data, [s], ["exposure"]).get(0)[2]
    assert float(own[0]) == pytest.approx(s["unit"]["exposure"]) and float(own[0]) == pytest.approx((ev + 2) / 4, abs=1e-6)
    wider = _Samples(data, [s], ["exposure"], ranges=[(-4.0, 4.0)]).get(0)[2]
    assert float(wider[0]) == pytest.approx((ev + 4) / 8, abs=1e-6)


@pytest.mark.slow
def test_cli_train_and_test_with_the_pointwise_head(dataset, tmp_path):
    """``proxy train --head pointwise`` records the head, fits its pixel MLP alone first
    (``--pixel-steps``), trains it with the U-Net (its per-pixel part alone, exposure being a
    per-pixel gain, then beats the identity by > 10 dB on held-out images), and ``proxy test``
    scores the model it wrote."""
    model_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["proxy", "train", "exposure", str(dataset), str(model_dir), "--head", "pointwise", "--pixel-steps", "200", "--width", "8",
                                      "--depth", "2", "--patch", "32", "--batch-size", "8", "--lr", "5e-3", "--iters", "150",
                                      "--eval-every", "50", "--patches-per-epoch", "80", "--schedule", "cosine", "--device", "cpu",
                                      "--holdout-params", "0.2", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((model_dir / "config.json").read_text())["head"] == "pointwise"
    assert "pixel MLP fitted alone: 200 steps" in (model_dir / "log.txt").read_text()
    model = load_proxy(model_dir / "model.pt", "exposure")
    assert model.head_kind == "pointwise" and model.proxy_config["head"] == "pointwise"
    data = load_dataset(dataset)
    splits = make_splits(data, ["exposure"], 0.2)
    source = _Samples(data, splits.val_images, ["exposure"], ranges=[(-2.0, 2.0)])
    gains = []
    with torch.no_grad():
        for i in range(len(source)):
            x, y, unit = source.get(i)
            z = model.pointwise_transform(x[None], unit[None])
            gains.append(float(psnr(z, y[None])) - float(psnr(x[None], y[None])))
    assert np.mean(gains) > 10, gains
    out = tmp_path / "test"
    result = CliRunner().invoke(app, ["proxy", "test", str(dataset), "-m", str(model_dir / "model.pt"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "report_metrics.json").read_text())["groups"]
    assert saved == json.loads((model_dir / "report_metrics.json").read_text())["groups"]


class _CoordinateSamples:
    """Samples whose input holds each pixel's coordinates (channel 0 the row, 1 the column, 2 the
    sample's index) and whose output is input + 1000: a crop's origin and orientation are read
    off its values."""

    def __init__(self, n: int = 3, size: tuple[int, int] = (40, 52)) -> None:
        h, w = size
        rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        self.items = [(x, x + 1000.0, torch.tensor([i / n])) for i in range(n) for x in [torch.stack([rows, cols, torch.full_like(rows, i)])]]

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int):
        return self.items[i]


def _origins(patches: ProxyPatchDataset, count: int) -> tuple[list[tuple[int, int]], int]:
    """The (top, left) of each of ``count`` crops and how many were flipped left-right."""
    origins, flips = [], 0
    for x, y, unit in (patches[i] for i in range(count)):
        assert torch.equal(y, x + 1000.0) and float(x[2, 0, 0]) == pytest.approx(float(unit[0]) * 3)
        assert torch.equal(x[0], x[0, :, :1].expand_as(x[0]))  # rows constant along each row
        step = x[1, 0, 1:] - x[1, 0, :-1]
        assert torch.equal(step, torch.full_like(step, 1.0)) or torch.equal(step, torch.full_like(step, -1.0))
        flipped = bool(step[0] < 0)
        flips += flipped
        origins.append((int(x[0, 0, 0]), int(x[1, 0, -1] if flipped else x[1, 0, 0])))
    return origins, flips


def test_crops_keep_the_cfa_phase_of_blocks_before_demosaic():
    """keep_cfa_phase (a before_demosaic dataset): every crop starts at an even row and column and
    is never flipped, while still varying in position; other blocks' crops start at any parity and
    are flipped about half the time. Whole images (patch 0) are then never flipped either."""
    source = _CoordinateSamples()
    origins, flips = _origins(ProxyPatchDataset(source, 16, 200, seed=5, keep_cfa_phase=True), 200)
    assert flips == 0
    assert all(top % 2 == 0 and left % 2 == 0 for top, left in origins)
    assert {top for top, _ in origins} == set(range(0, 40 - 16 + 1, 2))  # every even offset reached, the last included
    assert {left for _, left in origins} == set(range(0, 52 - 16 + 1, 2))
    origins, flips = _origins(ProxyPatchDataset(source, 16, 200, seed=5), 200)
    assert 60 < flips < 140
    parities = {(top % 2, left % 2) for top, left in origins}
    assert parities == {(0, 0), (0, 1), (1, 0), (1, 1)}
    whole = ProxyPatchDataset(source, 0, 50, seed=5, keep_cfa_phase=True)
    assert _origins(whole, 50) == ([(0, 0)] * 50, 0)
    assert 10 < _origins(ProxyPatchDataset(source, 0, 50, seed=5), 50)[1] < 40


def test_temperature_proxy_trains_with_the_cfa_phase(tmp_path):
    """A temperature dataset (before_demosaic; the builtin backend white-balances the mosaic and
    demosaics it) gets a cfa_phase U-Net by default, recorded in config.json and model.pt;
    ``proxy train --no-cfa-phase`` turns it off."""
    ds = tmp_path / "ds"
    generate(GenerateOptions(block="temperature", output=ds, count=8, synth_images=4, backend="builtin", size=(64, 48),
                             workers=1, progress=False, params=["red=0.5:2.5,green=0.8:1.25,blue=0.5:2.5"]))  # fmt: skip
    assert load_dataset(ds).info["before_demosaic"] is True
    small = {**TINY, "iters": 4, "eval_every": 2, "patches_per_epoch": 16, "holdout_params": 0.0}
    path = train_proxy("temperature", ds, tmp_path / "run", ProxyTrainConfig(**small), progress=False, report=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cfa_phase"] is True
    model = load_proxy(path, "temperature")
    assert model.cfa_phase and model.encoders[0][0].in_channels == 3 + 3 + 2
    result = CliRunner().invoke(app, ["proxy", "train", "temperature", str(ds), str(tmp_path / "off"), "--no-cfa-phase", "--width", "8", "--depth", "2",
                                      "--patch", "32", "--iters", "4", "--eval-every", "2", "--patches-per-epoch", "16", "--holdout-params", "0",
                                      "--device", "cpu", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_proxy(tmp_path / "off" / "model.pt", "temperature").cfa_phase is False
    assert json.loads((tmp_path / "off" / "config.json").read_text())["cfa_phase"] is False


def test_fit_pixels_blur_head_takes_samples_of_two_sizes():
    """The blur head's second pre-fit part caches random pixels of each blurred sample, so samples
    of different sizes mix; after 60 steps the colour map (a gain 0.5 + u1 here) beats the identity
    on every sample."""
    from isplab.models.proxy import build_proxy_model
    from isplab.workflows.proxy.train import fit_pixels

    small, large = _SyntheticBlur(count=6, seed=2), _SyntheticBlur(count=6, seed=3)
    large.items = [(torch.nn.functional.interpolate(x[None], size=(40, 72), mode="bilinear")[0],
                    torch.nn.functional.interpolate(y[None], size=(40, 72), mode="bilinear")[0], u) for x, y, u in large.items]  # fmt: skip
    small.items += large.items
    torch.manual_seed(0)
    model = build_proxy_model([(0.0, 1.0), (0.0, 1.0)], width=4, depth=1, head="blur")
    loss = fit_pixels(model, small, 60, seed=0, pixels=2048, per_sample=512, lr=3e-3)
    assert np.isfinite(loss)
    with torch.no_grad():
        for x, y, u in small.items:
            out = model.colour_transform(model.blur_transform(x[None], u[None]), u[None])
            assert float(psnr(out, y[None])) > float(psnr(x[None], y[None])) + 3


def test_resolve_config_fills_each_blocks_defaults():
    """Options left out take the block's default head and that head's patch and pixel steps;
    given ones are kept."""
    from isplab.workflows.proxy.train import resolve_config

    def picked(block, **given):
        c = resolve_config(block, ProxyTrainConfig(**given))
        return c.head, c.patch, c.pixel_steps

    assert picked("lowpass") == ("blur", 0, 5000)
    assert picked("colorbalancergb") == ("pointwise", 128, 1500)
    assert picked("exposure") == ("global", 128, 0)
    assert picked("temperature") == ("global", 128, 0)
    assert picked("lowpass", head="affine", pixel_steps=7) == ("affine", 128, 7)
    assert picked("lowpass", patch=0, pixel_steps=60) == ("blur", 0, 60)
    assert picked("sharpen") == ("unsharp", 0, 2000)  # proxy train sharpen: the unsharp head, whole images, pre-fitted
    assert picked("sharpen", head="affine") == ("affine", 128, 0)


class _SyntheticSharpen(_SyntheticBlur):
    """Samples whose truth is darktable's sharpen as the unsharp head computes it:
    ``y = lab_unsharp_mask(x, 0.5 + 3 u0, 2 u1, 1)`` (sigma, amount, threshold 1 L unit) on
    textures with detail."""

    contrast, detail = 0.6, 0.1

    @staticmethod
    def truth(x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        from isplab.models.proxy import lab_unsharp_mask

        return lab_unsharp_mask(x, 0.5 + 3.0 * unit[0], 2.0 * unit[1], 1.0)


def test_fit_pixels_prefits_the_unsharp_head():
    """fit_pixels on an ``unsharp`` proxy (whole images, its MLP alone; the U-Net untouched)
    recovers sigma(u) = 0.5 + 3 u0 and amount(u) = 2 u1 (threshold 1) and reproduces held-out
    samples to > 40 dB (min), > 10 dB above the identity; images of two sizes mix. (With a plain
    clamp of sigma and threshold at 0 instead of the straight-through one, the threshold died at 0
    and amount 0.43 was learned for 0.8.)"""
    from isplab.models.proxy import build_proxy_model
    from isplab.workflows.proxy.train import fit_pixels

    samples = _SyntheticSharpen()
    samples.items += [(torch.nn.functional.pad(x, (0, 8)), torch.nn.functional.pad(y, (0, 8)), u) for x, y, u in _SyntheticSharpen(4, seed=5).items]
    torch.manual_seed(0)
    model = build_proxy_model([(0.0, 1.0), (0.0, 1.0)], width=4, depth=1, head="unsharp")
    unet = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("unsharp_mlp")}
    fit_pixels(model, samples, 400, seed=0, lr=3e-3, images=4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in unet.items())
    with torch.no_grad():
        u = torch.tensor([[0.3, 0.4], [0.6, 0.6], [0.9, 0.8]])
        sigma, amount, threshold = model.unsharp_params(u)
        assert torch.allclose(sigma, 0.5 + 3.0 * u[:, 0], rtol=0.1), sigma
        assert torch.allclose(amount, 2.0 * u[:, 1], rtol=0.1), amount
        assert torch.allclose(threshold, torch.ones(3), atol=0.3), threshold
        held = _SyntheticSharpen(count=6, seed=1)
        pairs = [(float(psnr(model.unsharp_transform(x[None], u[None]), y[None])), float(psnr(x[None], y[None]))) for x, y, u in held.items]
    scores, identity = np.array(pairs).T
    assert scores.min() > 40 and np.mean(scores - identity) > 10, pairs


def test_unsharp_head_trains_on_whole_images_and_refuses_patches(dataset, tmp_path, refused):
    """``--head unsharp`` takes whole images and its pre-fit by default (a patch is refused in one
    line, nothing written); the run records both and logs the pre-fit."""
    message = refused("proxy", "train", "exposure", str(dataset), str(tmp_path / "r"), "--head", "unsharp", "--patch", "32", "--device", "cpu")
    assert "the unsharp head trains on whole images" in message and "--patch 0" in message and not (tmp_path / "r").exists()
    tiny = {**TINY, "patch": None, "iters": 4, "eval_every": 2, "patches_per_epoch": 16, "pixel_steps": 5}
    train_proxy("exposure", dataset, tmp_path / "run", ProxyTrainConfig(head="unsharp", **tiny), progress=False, report=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["head"] == "unsharp" and config["patch"] == 0 and config["pixel_steps"] == 5
    assert "unsharp MLP fitted alone: 5 steps" in (tmp_path / "run" / "log.txt").read_text()
    assert load_proxy(tmp_path / "run" / "model.pt", "exposure").head_kind == "unsharp"
