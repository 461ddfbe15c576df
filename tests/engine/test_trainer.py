"""Engine tests: a tiny linear regression trained for a few CPU epochs per test."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, Subset, TensorDataset

from isplab.engine.report import plot_curves
from isplab.engine.trainer import (
    StepProgressBar,
    build_trainer,
    configure_optimizer,
    fit,
    iteration_budget,
    metrics_csv_files,
    resolve_accelerator,
    resolve_checkpoint,
)
from isplab.errors import IsplabError

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers")

BATCH = 16
N_TRAIN = 64
STEPS_PER_EPOCH = N_TRAIN // BATCH
QUIET = dict(progress=False, enable_model_summary=False)


class TinyRegression(L.LightningModule):
    """``y = x @ w`` with 8 features; ``val_losses`` replaces the logged val_loss by a script."""

    def __init__(self, lr: float = 0.05, scheduler: str | None = None, max_epochs: int | None = None,
                 val_losses: list[float] | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Linear(8, 1)
        self.lr, self.scheduler, self.max_epochs = lr, scheduler, max_epochs
        self.val_losses = val_losses

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.val_losses is not None:
            loss = torch.tensor(self.val_losses[self.current_epoch])
        self.log("val_loss", loss)

    def configure_optimizers(self):
        return configure_optimizer(self.parameters(), lr=self.lr, scheduler=self.scheduler,
                                   max_epochs=self.max_epochs)


def loaders(shuffle: bool = False) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=generator)
    x = torch.randn(N_TRAIN + 32, 8, generator=generator)
    y = x @ w + 0.01 * torch.randn(N_TRAIN + 32, 1, generator=generator)
    train = TensorDataset(x[:N_TRAIN], y[:N_TRAIN])
    val = TensorDataset(x[N_TRAIN:], y[N_TRAIN:])
    return DataLoader(train, batch_size=BATCH, shuffle=shuffle), DataLoader(val, batch_size=32)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    rows = []
    for path in metrics_csv_files(run_dir):
        with path.open(newline="") as file:
            rows.extend(csv.DictReader(file))
    return rows


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def test_fit_writes_checkpoints_logs_and_cosine_lr(tmp_path):
    epochs = 4
    trainer = build_trainer(tmp_path, max_epochs=epochs, device="cpu", log_every_n_steps=1, **QUIET)
    train, val = loaders()
    module = TinyRegression(lr=0.3, scheduler="cosine", max_epochs=epochs)
    best = fit(trainer, module, train, val)

    checkpoints = tmp_path / "checkpoints"
    assert best == checkpoints / "best.ckpt"
    assert (checkpoints / "best.ckpt").is_file() and (checkpoints / "last.ckpt").is_file()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]

    rows = read_metrics(tmp_path)
    assert metrics_csv_files(tmp_path) == [tmp_path / "logs/csv/version_0/metrics.csv"]
    train_loss, val_loss = column(rows, "train_loss_epoch"), column(rows, "val_loss")
    assert len(train_loss) == len(val_loss) == epochs
    assert train_loss[-1] < 0.5 * train_loss[0] and val_loss[-1] < 0.5 * val_loss[0]
    assert list((tmp_path / "logs/tensorboard").glob("version_0/events.out.tfevents.*"))

    # LearningRateMonitor logs each epoch's LR: cosine annealing from 0.3 to 0 over 4 epochs.
    expected_lr = [0.3 * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert column(rows, "lr-Adam") == pytest.approx(expected_lr, rel=1e-6)


def test_best_and_last_checkpoints_follow_monitor_and_latest_epoch(tmp_path):
    # Scripted val_loss: best at epoch 1, worse afterwards; last.ckpt must still be epoch 3.
    trainer = build_trainer(tmp_path, max_epochs=4, device="cpu", **QUIET)
    fit(trainer, TinyRegression(val_losses=[3.0, 1.0, 2.0, 2.5]), *loaders())
    best = torch.load(tmp_path / "checkpoints/best.ckpt", weights_only=False)
    last = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert best["epoch"] == 1 and best["global_step"] == 2 * STEPS_PER_EPOCH
    assert last["epoch"] == 3 and last["global_step"] == 4 * STEPS_PER_EPOCH


def test_monitor_max_and_no_monitor(tmp_path):
    trainer = build_trainer(tmp_path / "max", max_epochs=3, device="cpu", mode="max", **QUIET)
    fit(trainer, TinyRegression(val_losses=[1.0, 3.0, 2.0]), *loaders())
    assert torch.load(tmp_path / "max/checkpoints/best.ckpt", weights_only=False)["epoch"] == 1

    trainer = build_trainer(tmp_path / "none", max_epochs=2, device="cpu", monitor=None, **QUIET)
    train, _ = loaders()
    assert fit(trainer, TinyRegression(), train) == tmp_path / "none/checkpoints/last.ckpt"
    assert [p.name for p in (tmp_path / "none/checkpoints").iterdir()] == ["last.ckpt"]


class RecordStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = (trainer.current_epoch, trainer.global_step)


def test_resume_from_last_continues_at_saved_epoch_and_step(tmp_path):
    first = build_trainer(tmp_path, max_epochs=2, device="cpu", **QUIET)
    fit(first, TinyRegression(), *loaders())
    weights = {k: v.clone() for k, v in first.lightning_module.state_dict().items()}

    recorder = RecordStart()
    second = build_trainer(tmp_path, max_epochs=4, device="cpu", callbacks=[recorder], **QUIET)
    module = TinyRegression()
    assert not torch.equal(module.net.weight, weights["net.weight"])
    fit(second, module, *loaders(), resume="last")

    assert recorder.start == (2, 2 * STEPS_PER_EPOCH)
    assert second.global_step == 4 * STEPS_PER_EPOCH and second.current_epoch == 4
    # The resumed fit logs to a new version; together they cover every epoch once.
    assert len(metrics_csv_files(tmp_path)) == 2
    assert [int(float(r["epoch"])) for r in read_metrics(tmp_path) if r.get("val_loss")] == [0, 1, 2, 3]
    curve = plot_curves(tmp_path, ["val_loss"], x="epoch").axes[0].lines[0]
    assert list(curve.get_xdata()) == [0, 1, 2, 3]


def test_resolve_checkpoint(tmp_path):
    assert resolve_checkpoint(tmp_path, None) is None
    assert resolve_checkpoint(tmp_path, False) is None
    with pytest.raises(IsplabError, match=r"checkpoints/last\.ckpt does not exist"):
        resolve_checkpoint(tmp_path, "last")
    with pytest.raises(IsplabError, match=r"checkpoints/best\.ckpt does not exist"):
        resolve_checkpoint(tmp_path, "best")
    with pytest.raises(IsplabError, match=r"elsewhere\.ckpt does not exist"):
        resolve_checkpoint(tmp_path, tmp_path / "elsewhere.ckpt")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/last.ckpt").touch()
    (tmp_path / "other.ckpt").touch()
    assert resolve_checkpoint(tmp_path, True) == tmp_path / "checkpoints/last.ckpt"
    assert resolve_checkpoint(tmp_path, "last") == tmp_path / "checkpoints/last.ckpt"
    assert resolve_checkpoint(tmp_path, str(tmp_path / "other.ckpt")) == tmp_path / "other.ckpt"


def test_fit_with_missing_resume_checkpoint_fails_before_training(tmp_path):
    trainer = build_trainer(tmp_path, max_epochs=1, device="cpu", **QUIET)
    with pytest.raises(IsplabError, match="last.ckpt does not exist"):
        fit(trainer, TinyRegression(), *loaders(), resume=True)
    assert trainer.global_step == 0


def test_early_stopping_stops_when_val_loss_plateaus(tmp_path):
    trainer = build_trainer(tmp_path, max_epochs=20, device="cpu", early_stopping_patience=2, **QUIET)
    fit(trainer, TinyRegression(val_losses=[1.0] * 20), *loaders())
    # epoch 0 sets the best; epochs 1 and 2 do not improve -> stop after 3 epochs.
    assert trainer.current_epoch == 3
    assert len(column(read_metrics(tmp_path), "val_loss")) == 3


def train_seeded(run_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    trainer = build_trainer(run_dir, max_epochs=2, device="cpu", seed=seed, **QUIET)
    module = TinyRegression()  # created after seeding, as build_trainer's docstring asks
    train, val = loaders(shuffle=True)
    fit(trainer, module, train, val)
    return module.state_dict()


def test_seed_makes_runs_identical(tmp_path):
    a = train_seeded(tmp_path / "a", seed=7)
    b = train_seeded(tmp_path / "b", seed=7)
    c = train_seeded(tmp_path / "c", seed=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.weight"], c["net.weight"])


def test_build_trainer_options(tmp_path):
    trainer = build_trainer(tmp_path, max_epochs=1, device="cpu", progress=True)
    assert any(isinstance(cb, StepProgressBar) for cb in trainer.callbacks)
    trainer = build_trainer(tmp_path, max_epochs=1, device="cpu", progress=False, precision="bf16-mixed",
                            gradient_clip_val=0.5, max_steps=7)
    assert not any(isinstance(cb, RichProgressBar) for cb in trainer.callbacks)
    assert trainer.precision == "bf16-mixed" and trainer.max_steps == 7
    assert trainer.gradient_clip_val == 0.5
    with pytest.raises(IsplabError, match="mode must be 'min' or 'max', got 'lowest'"):
        build_trainer(tmp_path, max_epochs=1, device="cpu", mode="lowest")
    with pytest.raises(IsplabError, match="early_stopping_patience needs a metric"):
        build_trainer(tmp_path, max_epochs=1, device="cpu", monitor=None, early_stopping_patience=3)


def test_resolve_accelerator():
    assert resolve_accelerator("cpu") == "cpu"
    assert resolve_accelerator("CPU") == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_accelerator("auto") == expected
    with pytest.raises(IsplabError, match=r"unknown device 'banana': expected 'auto', 'gpu' or one of .*cpu"):
        resolve_accelerator("banana")
    with pytest.raises(IsplabError, match=r"device 'cuda:1'.*devices=\[1\]"):
        resolve_accelerator("cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_resolve_accelerator_cuda_without_gpu():
    with pytest.raises(IsplabError, match="device 'cuda' was requested but no cuda device is available"):
        resolve_accelerator("cuda")
    with pytest.raises(IsplabError, match="no cuda device is available"):
        build_trainer("unused", max_epochs=1, device="cuda")


def lrs_over_epochs(config: dict, epochs: int, metric: list[float] | None = None) -> list[float]:
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]
    assert schedule["interval"] == "epoch"
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if metric is None:
            schedule["scheduler"].step()
        else:
            schedule["scheduler"].step(metric[epoch])
    return lrs


def test_configure_optimizer_schedules():
    param = [torch.nn.Parameter(torch.zeros(3))]
    assert set(configure_optimizer(param, lr=0.1)) == {"optimizer"}

    config = configure_optimizer(param, lr=0.1, scheduler="cosine", max_epochs=10, eta_min=0.01)
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(10)]
    assert lrs_over_epochs(config, 10) == pytest.approx(expected)

    # step_size defaults to a third of max_epochs: decays after epochs 3 and 6 of 9.
    config = configure_optimizer(param, lr=0.1, scheduler="step", max_epochs=9, gamma=0.5)
    assert lrs_over_epochs(config, 9) == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3)
    config = configure_optimizer(param, lr=0.1, scheduler="step", step_size=2)
    assert lrs_over_epochs(config, 4) == pytest.approx([0.1, 0.1, 0.01, 0.01])

    config = configure_optimizer(param, lr=0.1, scheduler="plateau", plateau_patience=1, monitor="val_psnr",
                                 mode="max")
    assert config["lr_scheduler"]["monitor"] == "val_psnr"
    # Improves twice, then stalls: the second epoch without improvement (> patience) decays.
    assert lrs_over_epochs(config, 6, metric=[1, 2, 2, 2, 2, 2]) == pytest.approx(
        [0.1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_configure_optimizer_choices_and_errors():
    param = [torch.nn.Parameter(torch.zeros(3))]
    sgd = configure_optimizer(param, lr=0.1, optimizer="sgd", weight_decay=1e-4)["optimizer"]
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    adamw = configure_optimizer(param, lr=0.1, optimizer="AdamW", betas=(0.8, 0.9))["optimizer"]
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.9)
    with pytest.raises(IsplabError, match="unknown optimizer 'lamb': expected one of adam, adamw, sgd"):
        configure_optimizer(param, lr=0.1, optimizer="lamb")
    with pytest.raises(IsplabError, match="unknown scheduler 'onecycle'"):
        configure_optimizer(param, lr=0.1, scheduler="onecycle")
    with pytest.raises(IsplabError, match="scheduler 'cosine' needs max_epochs >= 1, got None"):
        configure_optimizer(param, lr=0.1, scheduler="cosine")


class RecordBar(L.Callback):
    """After the progress bar's own hooks: the training bar's description, total and ETA per step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = next(cb for cb in trainer.callbacks if isinstance(cb, StepProgressBar))
        task = bar.train_progress_bar
        self.seen = getattr(self, "seen", []) + [(task.description, task.total, task.completed, task.time_remaining)]


def test_step_budget_progress_bar_counts_steps_of_the_run_with_an_eta(tmp_path):
    # max_epochs=-1, max_steps=6: 4 batches per epoch, so the run crosses an epoch boundary.
    recorder = RecordBar()
    trainer = build_trainer(tmp_path, max_epochs=-1, max_steps=6, device="cpu", progress=True,
                            enable_model_summary=False, callbacks=[recorder])
    assert sum(isinstance(cb, StepProgressBar) for cb in trainer.callbacks) == 1
    fit(trainer, TinyRegression(), *loaders())
    assert [d for d, *_ in recorder.seen] == [f"step {k}/6" for k in range(1, 7)]  # never "Epoch 1/-2"
    assert all(total == 6 for _, total, _, _ in recorder.seen)
    assert [completed for *_, completed, _ in recorder.seen] == [1, 2, 3, 4, 5, 6]
    assert recorder.seen[-2][3] is not None  # rich's time column has an ETA once the speed is known

    # A resume continues the count from the restored step.
    recorder = RecordBar()
    trainer = build_trainer(tmp_path, max_epochs=-1, max_steps=8, device="cpu", progress=True,
                            enable_model_summary=False, callbacks=[recorder])
    fit(trainer, TinyRegression(), *loaders(), resume="last")
    assert [d for d, *_ in recorder.seen] == ["step 7/8", "step 8/8"]


def test_epoch_budget_progress_bar_counts_epochs(tmp_path):
    recorder = RecordBar()
    trainer = build_trainer(tmp_path, max_epochs=2, device="cpu", progress=True, enable_model_summary=False,
                            callbacks=[recorder])
    fit(trainer, TinyRegression(), *loaders())
    descriptions = [d.strip() for d, *_ in recorder.seen]
    assert descriptions == ["Epoch 0/1"] * STEPS_PER_EPOCH + ["Epoch 1/1"] * STEPS_PER_EPOCH
    assert [total for _, total, _, _ in recorder.seen] == [STEPS_PER_EPOCH] * (2 * STEPS_PER_EPOCH)


class EpochRecordingData(TensorDataset):
    def __init__(self, *tensors):
        super().__init__(*tensors)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_training_dataset_is_told_the_epoch_before_each_epoch_and_on_resume(tmp_path):
    train, val = loaders()
    x, y = train.dataset.tensors
    data = EpochRecordingData(x, y)
    loader = DataLoader(Subset(data, range(N_TRAIN)), batch_size=BATCH)  # looked through
    fit(build_trainer(tmp_path, max_epochs=3, device="cpu", **QUIET), TinyRegression(), loader, val)
    # once when the fit starts, then at the start of each epoch
    assert data.epochs == [0, 0, 1, 2]
    data.epochs.clear()
    fit(build_trainer(tmp_path, max_epochs=5, device="cpu", **QUIET), TinyRegression(), loader, val, resume="last")
    assert data.epochs == [3, 3, 4]


class CountValidations(L.Callback):
    def __init__(self) -> None:
        self.at_steps: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.at_steps.append(trainer.global_step)


def test_iteration_budget_trains_exactly_iters_steps_and_validates_across_epochs(tmp_path):
    assert iteration_budget(100, 30, 7) == dict(max_epochs=-1, max_steps=100, log_every_n_steps=7, val_check_interval=30,
                                                check_val_every_n_epoch=None, num_sanity_val_steps=0)
    assert iteration_budget(10**6, 1000, 500)["log_every_n_steps"] == 50
    with pytest.raises(IsplabError, match="eval_every must be at least 1, got 0"):
        iteration_budget(10, 0, 5)
    train, val = loaders()
    steps_per_epoch = len(train)
    iters, every = 2 * steps_per_epoch + 3, steps_per_epoch + 1   # validations straddle epoch ends
    counter = CountValidations()
    trainer = build_trainer(tmp_path, **iteration_budget(iters, every, steps_per_epoch), device="cpu", progress=False,
                            callbacks=[counter], enable_model_summary=False)
    trainer.fit(TinyRegression(), train, val)
    assert trainer.global_step == iters
    assert counter.at_steps == list(range(every, iters + 1, every))
