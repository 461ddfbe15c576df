"""The shared run plumbing: rank zero, run folders, Ctrl-C (:mod:`isplab.engine.run`)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import typer
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, TensorDataset

from isplab.cli_options import exit_interrupted
from isplab.engine import (
    RunFolder,
    SaveOnInterrupt,
    TrainingInterrupted,
    build_trainer,
    fit_interruptible,
    is_global_zero,
    prepare_run_dir,
    saved_progress,
)
from isplab.engine.run import RANK_VARIABLES
from isplab.errors import IsplabError

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval"),
]


@pytest.fixture
def rank_zero(monkeypatch):
    """A plain process: no launcher variables, Lightning's rank 0."""
    for key in (*RANK_VARIABLES, "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(rank_zero_only, "rank", 0, raising=False)
    return monkeypatch


# --- rank zero -------------------------------------------------------------------------------------


def test_is_global_zero_reads_every_launcher_variable_and_lightnings_rank(rank_zero):
    assert is_global_zero()
    for key in RANK_VARIABLES:
        rank_zero.setenv(key, "0")
    assert is_global_zero()  # rank 0 of a launch
    for key in RANK_VARIABLES:
        rank_zero.setenv(key, "2")
        assert not is_global_zero(), key
        rank_zero.setenv(key, "0")
    rank_zero.setenv("RANK", "")  # unset-like values are not a rank
    assert is_global_zero()
    rank_zero.setattr(rank_zero_only, "rank", 1)
    assert not is_global_zero()


# --- run folders -----------------------------------------------------------------------------------

NAMES = ("model.pt", "config.json", "log.txt", "checkpoints", "logs")


def _earlier_run(folder: Path) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    (folder / "model.pt").write_bytes(b"model")
    (folder / "log.txt").write_text("earlier run\n")
    (folder / "notes.txt").write_text("the user's own file")


def test_a_new_or_foreign_folder_is_fine_and_an_earlier_run_is_refused(rank_zero, tmp_path):
    run = prepare_run_dir(tmp_path / "new", NAMES)
    assert (run.path, run.checkpoint, run.requeued, run.continues) == (tmp_path / "new", None, False, False)
    assert (tmp_path / "new").is_dir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert prepare_run_dir(tmp_path / "other", NAMES).checkpoint is None  # not a run's file
    _earlier_run(tmp_path / "m")
    with pytest.raises(IsplabError, match=r"^model folder .*m already holds model.pt, log.txt, checkpoints: pass --overwrite"):
        prepare_run_dir(tmp_path / "m", NAMES)
    with pytest.raises(IsplabError, match=r"^run folder .*m already holds"):
        prepare_run_dir(tmp_path / "m", NAMES, what="run folder")
    with pytest.raises(IsplabError, match="choose one"):
        prepare_run_dir(tmp_path / "m", NAMES, overwrite=True, resume=True)
    with pytest.raises(IsplabError, match=r"cannot resume: checkpoint .*new/checkpoints/last.ckpt does not exist"):
        prepare_run_dir(tmp_path / "new", NAMES, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(IsplabError, match="is a file"):
        prepare_run_dir(tmp_path / "file", NAMES)
    assert (tmp_path / "m" / "model.pt").read_bytes() == b"model"  # refusals lose nothing


def test_overwrite_deletes_only_the_runs_own_files_and_only_on_clear(rank_zero, tmp_path):
    _earlier_run(tmp_path / "m")
    run = prepare_run_dir(tmp_path / "m", NAMES, overwrite=True)
    assert (tmp_path / "m" / "model.pt").exists()  # nothing deleted before the caller's own checks
    run.clear()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["notes.txt"]


def test_resume_keeps_everything_and_points_at_last_ckpt(rank_zero, tmp_path):
    _earlier_run(tmp_path / "m")
    run = prepare_run_dir(tmp_path / "m", NAMES, resume=True)
    assert run.checkpoint == tmp_path / "m" / "checkpoints" / "last.ckpt" and run.continues
    run.clear()
    assert (tmp_path / "m" / "model.pt").exists() and (tmp_path / "m" / "log.txt").exists()


def test_a_slurm_requeue_is_let_through_and_keeps_the_run(rank_zero, tmp_path):
    _earlier_run(tmp_path / "m")
    (tmp_path / "m" / "hpc_ckpt_1.ckpt").write_bytes(b"hpc")
    rank_zero.setenv("SLURM_NTASKS", "1")
    run = prepare_run_dir(tmp_path / "m", NAMES)
    assert run.requeued and run.checkpoint is None and run.continues
    run.clear()
    assert (tmp_path / "m" / "model.pt").exists()
    rank_zero.delenv("SLURM_NTASKS")  # the same folder outside SLURM is an earlier run
    with pytest.raises(IsplabError, match="already holds"):
        prepare_run_dir(tmp_path / "m", NAMES)


def test_other_ranks_neither_check_nor_delete_nor_write(rank_zero, tmp_path):
    _earlier_run(tmp_path / "m")
    rank_zero.setenv("LOCAL_RANK", "1")
    run = prepare_run_dir(tmp_path / "m", NAMES)  # rank 0 checked it (and may be writing already)
    run.clear()
    run.start({"a": 1}, new="x", resumed="y")
    assert (tmp_path / "m" / "model.pt").exists() and (tmp_path / "m" / "log.txt").read_text() == "earlier run\n"
    assert not (tmp_path / "m" / "config.json").exists()


def test_start_writes_config_and_a_fresh_log_or_a_resumed_section(rank_zero, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "log.txt").write_text("stale\n")
    run = RunFolder(folder, NAMES)
    run.start({"path": Path("a/b"), "scale": (0.5, 2.0), "n": 3}, new="net, 6 steps", resumed="to step 6",
              details="samples: 4\n")
    assert json.loads((folder / "config.json").read_text()) == {"path": "a/b", "scale": [0.5, 2.0], "n": 3}
    lines = (folder / "log.txt").read_text().splitlines()
    assert lines[0].startswith("=== new run at ") and lines[0].endswith(": net, 6 steps ===")
    assert lines[1:] == ["samples: 4"]  # "stale" is gone: a new run's log is a new file
    last = folder / "checkpoints" / "last.ckpt"
    RunFolder(folder, NAMES, checkpoint=last).start({"n": 4}, new="net, 6 steps", resumed="to step 6")
    lines = (folder / "log.txt").read_text().splitlines()
    assert lines[0].startswith("=== new run at ") and lines[1:3] == ["samples: 4", ""]  # appended
    assert lines[3].startswith(f"=== resumed from {last} at ") and lines[3].endswith(": to step 6 ===")
    assert json.loads((folder / "config.json").read_text()) == {"n": 4}
    RunFolder(folder, NAMES, requeued=True).start({}, new="x", resumed="to step 6")
    assert (folder / "log.txt").read_text().splitlines()[-1].startswith("=== resumed from a SLURM requeue checkpoint at ")


# --- Ctrl-C ----------------------------------------------------------------------------------------


def test_resume_hint_says_what_was_kept_and_how_to_continue():
    last = Path("m/checkpoints/last.ckpt")
    assert TrainingInterrupted(last, 3, 6).resume_hint() == (
        "interrupted: m/checkpoints/last.ckpt holds step 3 of 6; the same command with --resume (not --overwrite) "
        "continues from it")
    assert TrainingInterrupted(last, 2, 5, "epoch").resume_hint().startswith(
        "interrupted: m/checkpoints/last.ckpt holds epoch 2 of 5;")
    assert TrainingInterrupted(None, 0, 5, "epoch").resume_hint() == (
        "interrupted before the first epoch finished: nothing to resume")
    assert isinstance(TrainingInterrupted(None, 0, 1), KeyboardInterrupt)


def test_exit_interrupted_prints_the_hint_on_stderr_and_exits_130(capsys):
    with pytest.raises(typer.Exit) as exit_:
        exit_interrupted(TrainingInterrupted(Path("r/last.ckpt"), 1, 2))
    assert exit_.value.exit_code == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == TrainingInterrupted(Path("r/last.ckpt"), 1, 2).resume_hint() + "\n"


def test_saved_progress_reads_steps_or_finished_epochs(tmp_path):
    path = tmp_path / "last.ckpt"
    assert saved_progress(path) == 0  # missing
    torch.save({"global_step": 7, "epoch": 2}, path)
    assert (saved_progress(path), saved_progress(path, "epoch")) == (7, 3)
    path.write_bytes(b"not a checkpoint")
    assert saved_progress(path) == saved_progress(path, "epoch") == 0


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _CtrlC(L.Callback):
    """A KeyboardInterrupt, as Ctrl-C gives Lightning, before step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def _fit(run_dir: Path, stop_at: int, *, save: bool, unit: str = "step"):
    callbacks = [_CtrlC(stop_at)] + ([SaveOnInterrupt(run_dir / "checkpoints" / "last.ckpt")] if save else [])
    trainer = build_trainer(run_dir, max_epochs=4, device="cpu", monitor=None, progress=False,
                            enable_model_summary=False, callbacks=callbacks, seed=0)
    data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)  # 2 steps an epoch
    return fit_interruptible(trainer, _Tiny(), data, total=8 if unit == "step" else 4, unit=unit,
                             log_file=run_dir / "log.txt")


def test_ctrl_c_saves_the_steps_done_restores_ctrl_c_and_logs_it(rank_zero, tmp_path):
    with pytest.raises(TrainingInterrupted) as stop:
        _fit(tmp_path / "r", 3, save=True)
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    assert (stop.value.checkpoint, stop.value.done, stop.value.total, stop.value.unit) == (last, 3, 8, "step")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning left it ignored
    assert torch.load(last, weights_only=False)["global_step"] == 3
    assert (tmp_path / "r" / "log.txt").read_text() == f"interrupted at step 3; {last} holds step 3\n"


def test_ctrl_c_without_saving_counts_the_finished_epochs(rank_zero, tmp_path):
    with pytest.raises(TrainingInterrupted) as stop:
        _fit(tmp_path / "r", 5, save=False, unit="epoch")  # in the third epoch: 2 finished
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    assert (stop.value.checkpoint, stop.value.done, stop.value.total, stop.value.unit) == (last, 2, 4, "epoch")
    assert (tmp_path / "r" / "log.txt").read_text() == f"interrupted at epoch 2; {last} holds epoch 2\n"


def test_ctrl_c_before_anything_was_saved_leaves_nothing_to_resume(rank_zero, tmp_path):
    with pytest.raises(TrainingInterrupted) as stop:
        _fit(tmp_path / "r", 0, save=True)
    assert (stop.value.checkpoint, stop.value.done) == (None, 0)
    assert stop.value.resume_hint() == "interrupted before the first step finished: nothing to resume"
