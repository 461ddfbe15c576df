"""Training the learned ISP: loss, VGG weights, iteration budget, resume, outputs."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isplab.data.synth import synthesize_dataset
from isplab.engine import TrainingInterrupted
from isplab.engine.metrics import ssim
from isplab.errors import IsplabError
from isplab.models.isp import build_isp_model, load_isp_model
from isplab.workflows.isp.train import ISPModule, ISPTrainConfig, VGGLoss, train_isp


def write_mai_folder(root: Path, sizes: dict[str, int], side: int) -> None:
    """A challenge-shaped dataset: 16-bit single-channel raws, 8-bit RGB targets."""
    import cv2

    rng = np.random.default_rng(0)
    for split, count in sizes.items():
        for folder in ("mediatek_raw", "fujifilm"):
            (root / split / folder).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(root / split / "mediatek_raw" / f"{i}.png"), rng.integers(0, 1024, (side, side), dtype=np.uint16))
            cv2.imwrite(str(root / split / "fujifilm" / f"{i}.png"), rng.integers(0, 256, (side, side, 3), dtype=np.uint8))

# torchvision's VGG-19 ("E"): conv widths, "M" = 2x2 max pool; relu5_4 is the 16th conv's ReLU.
VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


def random_vgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-style vgg19 state dict (features only) with small random weights."""
    generator = torch.Generator().manual_seed(seed)
    state, index, channels = {}, 0, 3
    for item in VGG19:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, channels, 3, 3, generator=generator) * (2 / (9 * channels)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(item, generator=generator) * 0.01
        index, channels = index + 2, item
    return state


def reference_relu5_4(x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    x, index = (x - mean) / std, 0
    for item in VGG19:
        if item == "M":
            x, index = F.max_pool2d(x, 2), index + 1
        else:
            x = F.relu(F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1))
            index += 2
    return x


def test_vgg_loss_is_the_relu5_4_feature_mse():
    state = random_vgg_state()
    loss = VGGLoss(state)
    generator = torch.Generator().manual_seed(1)
    pred, target = torch.rand(2, 3, 32, 32, generator=generator), torch.rand(2, 3, 32, 32, generator=generator)
    expected = F.mse_loss(reference_relu5_4(pred, state), reference_relu5_4(target, state))
    assert loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-4)
    assert expected > 0 and loss(target, target).item() == 0.0
    pred.requires_grad_(True)
    loss(pred, target).backward()
    assert pred.grad.abs().sum() > 0 and not any(p.requires_grad for p in loss.parameters())


def test_vgg_weights_missing_or_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(IsplabError, match=r"hub/checkpoints/vgg19-dcbb9e9d\.pth does not exist.*--vgg-weights FILE"):
        VGGLoss()
    with pytest.raises(IsplabError, match="nowhere.pth does not exist"):
        VGGLoss(tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(IsplabError, match="junk.pth is not a torchvision vgg19 state dict"):
        VGGLoss(tmp_path / "junk.pth")
    state = random_vgg_state()
    del state["features.34.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(IsplabError, match=r"lack features\.34\.weight"):
        VGGLoss(tmp_path / "partial.pth")
    # from a local file, as --vgg-weights passes it
    torch.save(random_vgg_state(), tmp_path / "vgg.pth")
    assert VGGLoss(tmp_path / "vgg.pth")(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)) == 0
    # or from torch's hub cache, under torchvision's file name
    (tmp_path / "hub/checkpoints").mkdir(parents=True)
    torch.save(random_vgg_state(3), tmp_path / "hub/checkpoints/vgg19-dcbb9e9d.pth")
    assert torch.equal(VGGLoss().features[0].weight, random_vgg_state(3)["features.0.weight"])


def test_train_refuses_vgg_without_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    synthesize_dataset(tmp_path / "data", 1, size=(64, 64), progress=False)
    config = ISPTrainConfig(arch="lfnet", num_maps_base=4, patch=32, batch_size=1, iters=1, vgg=1.0, device="cpu")
    with pytest.raises(IsplabError, match="VGG-19 loss needs ImageNet weights"):
        train_isp(tmp_path / "data", tmp_path / "model", config, progress=False)


def test_loss_is_the_weighted_sum_of_its_terms():
    config = ISPTrainConfig(mse=3.0, l1=2.0, ssim=5.0, vgg=0.5, vgg_weights=None)
    module = ISPModule(build_isp_model("lfnet", 4), ISPTrainConfig(mse=3.0, l1=2.0, ssim=5.0))
    module.config, module.vgg = config, VGGLoss(random_vgg_state())
    generator = torch.Generator().manual_seed(2)
    pred, target = torch.rand(2, 3, 32, 32, generator=generator), torch.rand(2, 3, 32, 32, generator=generator)
    terms = module.loss_terms(pred, target)
    p, t = pred.double().numpy(), target.double().numpy()
    assert terms["mse"].item() == pytest.approx(np.mean((p - t) ** 2), rel=1e-5)
    assert terms["l1"].item() == pytest.approx(np.mean(np.abs(p - t)), rel=1e-5)
    assert terms["ssim"].item() == pytest.approx(1 - ssim(pred, target).item(), rel=1e-5)
    expected = 3 * terms["mse"] + 2 * terms["l1"] + 5 * terms["ssim"] + 0.5 * terms["vgg"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def _val_steps(model_dir: Path) -> list[int]:
    steps = []
    for path in sorted((model_dir / "logs/csv").glob("version_*/metrics.csv")):
        with path.open() as handle:
            steps += [int(row["step"]) for row in csv.DictReader(handle) if row.get("val_psnr")]
    return steps


def test_train_on_the_challenge_layout_then_resume(tmp_path: Path):
    write_mai_folder(tmp_path / "mai", {"train": 4, "val": 2}, side=64)
    model_dir = tmp_path / "model"
    config = ISPTrainConfig(
        arch="punet", num_maps_base=4, patch=32, batch_size=2, lr=1e-3, iters=4, eval_every=2,
        patches_per_epoch=6, device="cpu",
    )
    best = train_isp(tmp_path / "mai", model_dir, config, progress=False)
    assert best == model_dir / "checkpoints/best.ckpt" and best.is_file()
    first = torch.load(model_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 4
    assert _val_steps(model_dir) == [1, 3]  # Lightning logs at step index (after 2 and 4 updates)
    model = load_isp_model(model_dir / "model.pt")
    assert model.isp_config == {"arch": "punet", "num_maps_base": 4, "options": {}}
    saved = model.state_dict()
    fresh = build_isp_model("punet", 4).state_dict()
    assert any(not torch.equal(saved[k], fresh[k]) for k in saved)  # the weights were trained

    config.iters = 8
    train_isp(tmp_path / "mai", model_dir, config, resume=True, progress=False)
    second = torch.load(model_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert second["global_step"] == 8
    steps = _val_steps(model_dir)  # the resumed fit logs in a new CSV version, after step 4
    assert len(steps) == 4 and steps[:2] == [1, 3] and min(steps[2:]) > 3
    log = (model_dir / "log.txt").read_text().splitlines()
    assert log[0].startswith("=== new run at ") and log[0].endswith(": punet, 4 steps ===")
    assert [line.split(":")[0] for line in log[1:4]] == ["step 2", "step 4", "finished at step 4"]
    assert log[4] == "" and log[5].startswith(f"=== resumed from {model_dir / 'checkpoints/last.ckpt'} at ")
    assert log[5].endswith("training to step 8 ===")
    assert [line.split(":")[0] for line in log[6:]] == ["step 6", "step 8", "finished at step 8"]
    assert "val_psnr" in log[7] and "val_ssim" in log[7] and "train_loss" in log[7]
    assert json.loads((model_dir / "config.json").read_text())["iters"] == 8

    other = ISPTrainConfig(arch="punet", num_maps_base=8, patch=32, batch_size=2, iters=10, eval_every=2,
                           patches_per_epoch=6, device="cpu")
    with pytest.raises(IsplabError, match="cannot resume .* trained as .*'num_maps_base': 4"):
        train_isp(tmp_path / "mai", model_dir, other, resume=True, progress=False)
    with pytest.raises(IsplabError, match="cannot resume: checkpoint .*last.ckpt does not exist"):
        train_isp(tmp_path / "mai", tmp_path / "empty", config, resume=True, progress=False)


def test_train_on_synthetic_dngs_with_val_crops(tmp_path: Path):
    synthesize_dataset(tmp_path / "syn/train", 2, size=(80, 64), progress=False)
    synthesize_dataset(tmp_path / "syn/val", 1, seed=1, size=(96, 96), progress=False)
    config = ISPTrainConfig(arch="lfnet", num_maps_base=4, arch_options={"num_blocks": 1}, patch=32, batch_size=2,
                            iters=2, eval_every=2, patches_per_epoch=2, val_crop=48, l1=1.0, device="cpu")
    train_isp(tmp_path / "syn", tmp_path / "m", config, progress=False)
    assert load_isp_model(tmp_path / "m/model.pt").isp_config["arch"] == "lfnet"
    assert _val_steps(tmp_path / "m") == [1]


def test_bad_options_are_refused(tmp_path: Path):
    with pytest.raises(IsplabError, match=r"patches_per_epoch \(2\) must be at least batch_size \(4\)"):
        train_isp(tmp_path, tmp_path / "m", ISPTrainConfig(batch_size=4, patches_per_epoch=2))
    with pytest.raises(IsplabError, match="loss weights must be >= 0 and not all zero"):
        train_isp(tmp_path, tmp_path / "m", ISPTrainConfig(mse=0, ssim=0))


def test_an_existing_run_is_refused_before_training_and_replaced_with_overwrite(tmp_path: Path):
    synthesize_dataset(tmp_path / "syn/train", 1, size=(64, 64), progress=False)
    synthesize_dataset(tmp_path / "syn/val", 1, seed=1, size=(32, 32), progress=False)
    config = ISPTrainConfig(arch="lfnet", num_maps_base=4, arch_options={"num_blocks": 1}, patch=32, batch_size=1,
                            iters=1, eval_every=1, patches_per_epoch=1, device="cpu")
    model_dir = tmp_path / "m"
    train_isp(tmp_path / "syn", model_dir, config, progress=False)
    before = {path: path.read_bytes() for path in model_dir.rglob("*") if path.is_file()}
    assert {model_dir / "model.pt", model_dir / "checkpoints/last.ckpt", model_dir / "log.txt"} <= set(before)

    config.iters = 2
    with pytest.raises(IsplabError, match=r"^model folder .*m already holds model.pt, config.json, log.txt, \.\.\.: "
                                          r"pass --overwrite to replace them, or choose another folder$"):
        train_isp(tmp_path / "syn", model_dir, config, progress=False)
    # refused before any work: every file is as it was, no new log version
    assert {path: path.read_bytes() for path in model_dir.rglob("*") if path.is_file()} == before

    train_isp(tmp_path / "syn", model_dir, config, overwrite=True, progress=False)
    assert torch.load(model_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
    assert [p.parent.name for p in (model_dir / "logs/csv").glob("*/metrics.csv")] == ["version_0"]
    log = (model_dir / "log.txt").read_text()
    assert log.count("=== new run") == 1 and ": lfnet, 2 steps ===" in log and "finished at step 1" not in log
    assert (model_dir / "model.pt").read_bytes() != before[model_dir / "model.pt"]

    # a folder holding other files only is fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    config.iters = 1
    train_isp(tmp_path / "syn", tmp_path / "other", config, progress=False)
    assert (tmp_path / "other/notes.txt").read_text() == "mine" and (tmp_path / "other/model.pt").is_file()


def test_a_slurm_requeue_continues_the_run_in_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A requeued job re-runs the same command (no --resume): Lightning restores its hpc checkpoint."""
    synthesize_dataset(tmp_path / "syn/train", 1, size=(64, 64), progress=False)
    synthesize_dataset(tmp_path / "syn/val", 1, seed=1, size=(32, 32), progress=False)
    config = ISPTrainConfig(arch="lfnet", num_maps_base=4, arch_options={"num_blocks": 1}, patch=32, batch_size=1,
                            iters=2, eval_every=1, patches_per_epoch=1, device="cpu")
    model_dir = tmp_path / "m"
    train_isp(tmp_path / "syn", model_dir, config, progress=False)
    # what Lightning writes on SIGUSR1 before `scontrol requeue`
    (model_dir / "hpc_ckpt_1.ckpt").write_bytes((model_dir / "checkpoints/last.ckpt").read_bytes())
    config.iters = 3
    with pytest.raises(IsplabError, match="already holds"):  # outside SLURM a leftover file changes nothing
        train_isp(tmp_path / "syn", model_dir, config, progress=False)
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "isp", "SLURM_JOB_ID": "1234", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(key, value)
    train_isp(tmp_path / "syn", model_dir, config, progress=False)
    assert torch.load(model_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 3
    log = (model_dir / "log.txt").read_text()
    assert "=== resumed from a SLURM requeue checkpoint" in log and log.count("=== new run") == 1
    section = log.split("=== resumed from a SLURM requeue checkpoint")[1].splitlines()[1:]
    # only step 3 was trained: Lightning restored the step-2 state instead of starting afresh
    assert [line.split(":")[0] for line in section] == ["step 3", "finished at step 3"]


class CtrlC(L.Callback):
    """Ctrl-C as Lightning sees it: a KeyboardInterrupt in the middle of the training loop."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt


def test_ctrl_c_saves_the_steps_done_and_resume_finishes_the_run(tmp_path: Path):
    synthesize_dataset(tmp_path / "syn/train", 1, size=(64, 64), progress=False)
    synthesize_dataset(tmp_path / "syn/val", 1, seed=1, size=(32, 32), progress=False)
    config = ISPTrainConfig(arch="lfnet", num_maps_base=4, arch_options={"num_blocks": 1}, patch=32, batch_size=1,
                            iters=6, eval_every=5, patches_per_epoch=2, device="cpu")
    model_dir = tmp_path / "m"
    with pytest.raises(TrainingInterrupted) as stop:
        train_isp(tmp_path / "syn", model_dir, config, progress=False, callbacks=[CtrlC(3)])
    assert (stop.value.checkpoint, stop.value.done, stop.value.total) == (model_dir / "checkpoints/last.ckpt", 3, 6)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again
    assert not (model_dir / "model.pt").exists()
    assert (model_dir / "log.txt").read_text().splitlines()[-1] == (
        f"interrupted at step 3; {model_dir / 'checkpoints/last.ckpt'} holds step 3")
    start = StartStep()
    train_isp(tmp_path / "syn", model_dir, config, resume=True, progress=False, callbacks=[start])
    assert start.step == 3  # continued where Ctrl-C stopped it
    assert torch.load(model_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 6
    assert (model_dir / "model.pt").is_file()


class StartStep(L.Callback):
    def on_train_start(self, trainer, module):
        self.step = trainer.global_step
