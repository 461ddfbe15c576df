from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from isplab.engine import TrainingInterrupted, metrics_csv_files
from isplab.errors import IsplabError
from isplab.workflows.awb.dataset import AWBDataset, AWBSample, mired_error
from isplab.workflows.awb.model import build_awb_model
from isplab.workflows.awb.predict import predict
from isplab.workflows.awb.train import (
    RelightTables,
    TrainConfig,
    geometric_augment,
    relight,
    relight_tables,
    train_model,
)

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "awb-rpi"
NO_AUGMENT = dict(noise=0.0, lux_noise=0.0, flip=False, rotation=0.0, zoom=0.0, ensemble=1)


def _synthetic(n: int, seed: int = 0, temps: np.ndarray | None = None, sensor: str = "imx708") -> AWBDataset:
    """vc4-sized scenes of random grey-ish albedos lit by an illuminant whose R/G, B/G follow T."""
    rng = np.random.default_rng(seed)
    temps = rng.uniform(2800, 7600, n) if temps is None else np.asarray(temps, dtype=np.float64)
    mired = 1e6 / temps
    gains = np.stack([np.exp((mired - 200) / 150), np.ones(n), np.exp(-(mired - 200) / 150)], axis=1)
    albedo = rng.uniform(0.1, 0.6, (n, 12, 16, 1)) * rng.uniform(0.8, 1.2, (n, 12, 16, 3))
    images = np.clip(albedo * gains[:, None, None, :], 0, 1).astype(np.float32)
    samples = [AWBSample(Path(f"s,{sensor},{i},{t:.0f},400,5000.png"), "s", sensor, str(i), t, 400.0, 5000.0)
               for i, t in enumerate(temps)]
    return AWBDataset(samples, images, np.full(n, 400, np.float32), temps.astype(np.float32),
                      np.full(n, 5000, np.float32), "vc4")


def test_training_reduces_error():
    train, test = _synthetic(96, seed=0), _synthetic(48, seed=1)
    config = TrainConfig(arch="chroma", epochs=25, batch_size=32, lr=5e-3, patience=None, **NO_AUGMENT)
    untrained = build_awb_model("vc4", "chroma")
    before = mired_error(predict(untrained, test.images, test.lux), test.true_temp).mean()
    model = train_model(train, config, progress=False)
    after = mired_error(predict(model, test.images, test.lux), test.true_temp).mean()
    assert not model.training
    assert after < 0.5 * before and after < 25, (before, after)


def test_repeat_weights_are_honoured():
    # Identical images labelled 3000 K and 6000 K: the squared-mired optimum is the weighted mean.
    data = _synthetic(8, temps=[3000] * 4 + [6000] * 4)
    data.images[:] = data.images[0]
    config = TrainConfig(arch="chroma", loss="mse", epochs=60, batch_size=64, lr=3e-3, patience=None, **NO_AUGMENT)
    weights = np.array([9] * 4 + [1] * 4)
    predicted = {}
    for name, w in (("plain", None), ("weighted", weights)):
        model = train_model(data, config, weights=w, progress=False)
        predicted[name] = 1e6 / predict(model, data.images[:1], data.lux[:1])[0]
    expected_plain, expected_weighted = (1e6 / 3000 + 1e6 / 6000) / 2, 0.9 * 1e6 / 3000 + 0.1 * 1e6 / 6000
    assert abs(predicted["plain"] - expected_plain) < 15, predicted
    assert abs(predicted["weighted"] - expected_weighted) < 15, predicted


def test_train_with_validation_set_and_input_model(tmp_path):
    train, val = _synthetic(32, seed=2), _synthetic(16, seed=3)
    config = TrainConfig(arch="reference", epochs=2, batch_size=16, **NO_AUGMENT)
    model = train_model(train, config, run_dir=tmp_path / "run", progress=False, val_dataset=val)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    again = train_model(train, config, input_model=model, progress=False)
    assert again is not model and again.awb_config == model.awb_config


def test_bad_arguments():
    data = _synthetic(4)
    with pytest.raises(IsplabError, match=r"weights must be 4 positive integer repeat counts"):
        train_model(data, TrainConfig(epochs=1), weights=np.array([1, 0, 1, 1]), progress=False)
    with pytest.raises(IsplabError, match="unknown AWB loss 'huber'"):
        train_model(data, TrainConfig(epochs=1, loss="huber"), progress=False)
    with (
        pytest.warns(UserWarning, match="sensor nosuch will not be re-lit"),
        pytest.raises(IsplabError, match="re-lighting needs the sensors' tuning files but none was found for nosuch"),
    ):
        train_model(_synthetic(4, sensor="nosuch"), TrainConfig(epochs=1, relight=30), progress=False)
    with pytest.raises(IsplabError, match="input model is for target 'pisp' but the dataset is 'vc4'"):
        train_model(data, TrainConfig(epochs=1), input_model=build_awb_model("pisp"), progress=False)


def _tables(ccm: np.ndarray) -> RelightTables:
    # One sensor whose CT curve is r = m / 250, b = 250 / m on the relighting mired grid.
    grid = torch.linspace(1e6 / 7600, 1e6 / 2800, 256, dtype=torch.float64)
    curves = torch.stack([grid / 250, 250 / grid], dim=1).float()[None]
    ccm_t = torch.tensor(ccm, dtype=torch.float64)
    mireds = torch.tensor([200.0, 300.0], dtype=torch.float64)
    return RelightTables(
        sensor=torch.zeros(2, dtype=torch.long), ccm=ccm_t.float().expand(2, 3, 3),
        ccm_inv=torch.linalg.inv(ccm_t).float().expand(2, 3, 3),
        rb=torch.stack([mireds / 250, 250 / mireds], 1).float(), curves=curves,
        enabled=torch.tensor([True, False]),
    )


def test_relight_moves_image_and_label_along_the_curve():
    ccm = np.array([[1.6, -0.4, -0.2], [-0.3, 1.5, -0.2], [0.0, -0.5, 1.5]])
    tables = _tables(ccm)
    image = torch.rand(2, 12, 16, 3) * 0.4
    mireds = torch.tensor([200.0, 300.0])
    lit, new = relight(image, mireds, torch.tensor([50.0, 50.0]), torch.tensor([0, 1]), tables)
    grid_step = (1e6 / 2800 - 1e6 / 7600) / 255
    assert abs(new[0].item() - 250.0) <= grid_step / 2 + 1e-3
    assert new[1].item() == 300.0  # sensor without tuning: untouched
    torch.testing.assert_close(lit[1], image[1])
    k = np.array([new[0].item() / 200.0, 1.0, 200.0 / new[0].item()])  # r(T')/r(T), 1, b(T')/b(T)
    cam = image[0].double().numpy() @ np.linalg.inv(ccm).T
    expected = np.clip((cam * k) @ ccm.T, 0, 1)
    np.testing.assert_allclose(lit[0].numpy(), expected, atol=1e-5)


def test_geometric_augment_flip_only_and_identity():
    image = torch.rand(64, 12, 16, 3)
    torch.testing.assert_close(geometric_augment(image, False, 0.0, 0.0), image)
    out = geometric_augment(image, True, 0.0, 0.0)
    flipped = (out == image.flip(2)).flatten(1).all(1)
    same = (out == image).flatten(1).all(1)
    assert (flipped | same).all() and 10 < flipped.sum() < 54
    rotated = geometric_augment(image, False, 0.1, 0.1)
    assert rotated.shape == image.shape and not torch.allclose(rotated, image)


@pytest.mark.shared_data
def test_relight_tables_come_from_the_tuning_files():
    tunings = SHARED / "tunings"
    if not tunings.is_dir():
        pytest.skip("../shared/data/awb-rpi is absent")
    from isplab.workflows.awb.tuning import find_tuning, load_tuning

    data = _synthetic(3, temps=[3000, 4500, 6500])
    data.target = "pisp"
    tables = relight_tables(data, tunings)
    tuning = load_tuning(find_tuning("imx708", "pisp", tunings))
    np.testing.assert_allclose(tables.rb.numpy(), [tuning.gains_at(t) for t in (3000, 4500, 6500)], rtol=1e-5)
    np.testing.assert_allclose(tables.ccm[0].numpy(), tuning.ccm_at(5000.0), rtol=1e-5)
    np.testing.assert_allclose((tables.ccm[0] @ tables.ccm_inv[0]).numpy(), np.eye(3), atol=1e-5)
    assert tables.enabled.all()
    # The tabulated curve at the grid's warm end is the tuning's r, b at 2800 K.
    np.testing.assert_allclose(tables.curves[0, -1].numpy(), tuning.gains_at(2800.0), rtol=1e-4)


class _StopAt(Callback):
    """Raises KeyboardInterrupt (what Ctrl-C does) when epoch ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


class _Start(Callback):
    """Records the epoch and the weights a fit starts from."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.epoch = trainer.current_epoch
        self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def _csv_epochs(run: Path) -> list[list[int]]:
    import csv

    return [
        sorted({int(row["epoch"]) for row in csv.DictReader(path.open()) if row.get("train_loss")})
        for path in metrics_csv_files(run)
    ]


def test_interrupt_keeps_last_epoch_and_resume_continues_from_it(tmp_path):
    data, run = _synthetic(16, seed=4), tmp_path / "run"
    config = TrainConfig(arch="reference", epochs=5, batch_size=8, patience=None, device="cpu", **NO_AUGMENT)
    with pytest.raises(TrainingInterrupted) as stop:
        train_model(data, config, run_dir=run, progress=False, callbacks=[_StopAt(2)])
    last = run / "checkpoints" / "last.ckpt"
    assert (stop.value.checkpoint, stop.value.done, stop.value.total, stop.value.unit) == (last, 2, 5, "epoch")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning left it ignored
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (1, 4)  # 2 epochs of 2 steps
    assert saved["awb_config"]["target"] == "vc4"

    start = _Start()
    model = train_model(data, config, run_dir=run, resume=True, progress=False, callbacks=[start])
    assert start.epoch == 2
    for name, value in saved["state_dict"].items():
        torch.testing.assert_close(start.state[name.removeprefix("model.")], value)
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert (final["epoch"], final["global_step"]) == (4, 10)
    for name, value in final["state_dict"].items():
        torch.testing.assert_close(model.state_dict()[name.removeprefix("model.")], value)
    assert _csv_epochs(run) == [[0, 1], [2, 3, 4]]
    log = (run / "log.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in log if line.startswith("epoch")] == [f"epoch {e}" for e in range(5)]
    assert sum(line.startswith("== ") for line in log) == 2 and "resumed from" in log[-4]


def test_resume_refuses_another_model_or_no_checkpoint(tmp_path):
    data = _synthetic(8, seed=5)
    config = TrainConfig(arch="reference", epochs=1, batch_size=8, device="cpu", **NO_AUGMENT)
    with pytest.raises(IsplabError, match=r"cannot resume: checkpoint .*run/checkpoints/last\.ckpt does not exist"):
        train_model(data, config, run_dir=tmp_path / "run", resume=True, progress=False)
    train_model(data, config, run_dir=tmp_path / "run", progress=False)
    other = TrainConfig(arch="chroma", epochs=2, batch_size=8, device="cpu", **NO_AUGMENT)
    with pytest.raises(IsplabError, match=r"cannot resume from .*last\.ckpt: it was trained as .*'reference'.* but the options give .*'chroma'"):
        train_model(data, other, run_dir=tmp_path / "run", resume=True, progress=False)
    with pytest.raises(IsplabError, match="do not also give an input model"):
        train_model(data, config, run_dir=tmp_path / "run", resume=True, input_model=build_awb_model("vc4"), progress=False)


def test_augmentation_is_drawn_from_seed_epoch_and_rank():
    """The same (seed, epoch, rank) augments a batch identically whatever torch's global RNG; another
    epoch or rank differently; the noise stays within its stated bounds."""
    from isplab.workflows.awb.train import AWBModule

    data = _synthetic(6, seed=6)
    config = TrainConfig(seed=3, noise=0.1, lux_noise=0.2, flip=True)
    batches = []
    for i, (epoch, rank) in enumerate([(0, 0), (0, 0), (1, 0), (0, 1)]):
        module = AWBModule(build_awb_model("vc4"), data, config)
        module.seed_augmentation(epoch, rank)
        torch.manual_seed(100 + i)  # must not matter
        batches.append(module._batch(torch.arange(6), augment=True))
    for a, b in zip(batches[0], batches[1]):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(batches[0][0], batches[2][0]) and not torch.allclose(batches[0][0], batches[3][0])
    image, lux, mireds = AWBModule(build_awb_model("vc4"), data, config)._batch(torch.arange(6), augment=False)
    torch.testing.assert_close(image, torch.from_numpy(data.images))
    torch.testing.assert_close(mireds, torch.from_numpy(1e6 / data.true_temp))
    ratio = batches[0][1] / lux
    assert ((ratio > 0.8) & (ratio < 1.2)).all() and ratio.std() > 0.01


_DDP_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np, torch
from lightning.pytorch.callbacks import Callback
from isplab.workflows.awb.dataset import AWBDataset, AWBSample
from isplab.workflows.awb.train import TrainConfig, train_model

out = Path(sys.argv[1])
rng = np.random.default_rng(0)
n = 16
temps = rng.uniform(2800, 7600, n)
samples = [AWBSample(Path(f"s,imx,{i},{t:.0f},400,5000.png"), "s", "imx", str(i), t, 400.0, 5000.0) for i, t in enumerate(temps)]
data = AWBDataset(samples, rng.uniform(0.05, 0.6, (n, 12, 16, 3)).astype(np.float32), np.full(n, 400, np.float32),
                  temps.astype(np.float32), np.full(n, 5000, np.float32), "vc4")

class Seen(Callback):
    indices = []
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        Seen.indices += batch.tolist()
        Seen.rank = trainer.global_rank
        Seen.world = trainer.world_size

config = TrainConfig(arch="reference", ensemble=1, epochs=1, batch_size=4, device="cpu", devices=2, strategy="ddp")
model = train_model(data, config, run_dir=out / "run", progress=False, callbacks=[Seen()])
params = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
(out / f"rank{Seen.rank}.json").write_text(json.dumps({"seen": Seen.indices, "world": Seen.world, "params": params}))
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_split_the_images_and_stay_in_sync(tmp_path):
    script = tmp_path / "ddp_awb.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    seen = [set(r["seen"]) for r in ranks]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 8  # 16 images, 2 batches of 4 each
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(16))
    np.testing.assert_allclose(ranks[0]["params"], ranks[1]["params"], rtol=0, atol=1e-7)
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 2  # each rank took 2 steps: the epoch was split, not repeated


def test_the_blend_s_cnns_train_as_a_chroma_ensemble_would_and_its_mlps_learn():
    train, test = _synthetic(64, seed=2), _synthetic(32, seed=3)
    config = TrainConfig(arch="chroma", ensemble=2, epochs=4, batch_size=16, lr=5e-3, patience=None,
                         arch_options={"width": 4, "hidden": 8}, device="cpu")
    chroma = train_model(train, config, progress=False)
    blend = train_model(train, TrainConfig(**{**config.__dict__, "arch": "blend"}), progress=False)
    # Same initialisation, augmentation and dropout, and (Adam) the same steps: the MLPs' down-weighted
    # losses neither change the CNNs' updates nor the schedule.
    for alone, inside in zip(chroma.members, blend.members, strict=True):
        for (name, a), b in zip(alone.state_dict().items(), inside.state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    # The MLPs learned: their mean error falls well below that of an untrained blend's MLPs.
    untrained = build_awb_model("vc4", "blend", ensemble=2, width=4, hidden=8).eval()
    images, lux = torch.from_numpy(test.images), torch.from_numpy(test.lux)
    truth = 1e6 / torch.from_numpy(test.true_temp).double()
    with torch.no_grad():
        before = (untrained.member_mireds(images, lux)[2:].double() - truth).abs().mean()
        after = (blend.member_mireds(images, lux)[2:].double() - truth).abs().mean()
    assert after < 0.6 * before, (before, after)


def test_the_training_loss_weighs_the_blend_s_feature_mlps_down():
    from isplab.models.awb import BlendAWBNet, calibrated, member_loss_weights, with_sensor_embedding
    from isplab.workflows.awb.train import AWBModule

    data = _synthetic(8, seed=4)
    model = build_awb_model("vc4", "blend", ensemble=2, width=4, hidden=8).eval()
    weights = torch.tensor([1.0, 1.0, BlendAWBNet.FEATURE_LOSS_WEIGHT, BlendAWBNet.FEATURE_LOSS_WEIGHT])
    assert BlendAWBNet.FEATURE_LOSS_WEIGHT == 1e-3
    for wrapped in (model, calibrated(model), with_sensor_embedding(model, ["imx708"])):
        torch.testing.assert_close(member_loss_weights(wrapped), weights)
    assert member_loss_weights(build_awb_model("vc4", "chroma", ensemble=2)) is None
    images, lux = torch.from_numpy(data.images), torch.from_numpy(data.lux)
    with torch.no_grad():
        error = model.member_mireds(images, lux) - 1e6 / torch.from_numpy(data.true_temp)
    for loss, per_member in (("mse", (error**2).mean(dim=1) / 1000), ("l1", error.abs().mean(dim=1))):
        module = AWBModule(model, data, TrainConfig(arch="blend", loss=loss), None, "train_loss")
        with torch.no_grad():
            value = module._loss(torch.arange(8), augment=False)
        torch.testing.assert_close(value, (weights * per_member).sum() / weights.sum(), rtol=1e-5, atol=1e-6)
        assert abs(float(value) - float(per_member.mean())) > 1e-3  # not the plain mean
