"""Real DDP: `train_isp` in two CPU processes (Lightning's `strategy="ddp"`, gloo backend).

Lightning launches the second process by re-running the command that started the first, so the
DDP run is a small script in a subprocess (re-running pytest would not do). Each rank records the
patches of every step (hashes) and its final weights; the test then checks that

- the ranks trained on different patches, drawn by Lightning's DistributedSampler, new each epoch;
- each patch is the one PatchDataset defines for the (seed, epoch, index) the sampler gave;
- gradients were all-reduced: both ranks end with identical weights, equal (to float rounding) to
  a one-process Adam loop whose batches are the union of the two ranks' batches.

It fails if PatchDataset draws patches from a global RNG again (every rank is seeded alike, so
the ranks would see the same patches).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from isplab.data.synth import synthesize_dataset
from isplab.models.isp import build_isp_model
from isplab.workflows.isp.data import PatchDataset, open_pairs
from isplab.workflows.isp.train import ISPModule

BATCH = 2  # per rank
STEPS = 4  # two epochs of 8 patches: 4 per rank per epoch, 2 steps per epoch

SCRIPT = '''
import hashlib, json, sys
from pathlib import Path

import lightning as L
import torch

from isplab.workflows.isp.train import ISPTrainConfig, train_isp


class Record(L.Callback):
    """Per rank: which sampler fed it, the hash of every patch of every step, start and end weights."""

    def __init__(self, out):
        self.out, self.steps = Path(out), []

    def on_train_start(self, trainer, module):
        self.initial = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self.indices = {}

    def on_train_epoch_start(self, trainer, module):
        # Lightning has set the sampler's epoch: this is the order the rank reads this epoch.
        self.indices[trainer.current_epoch] = [int(i) for i in trainer.train_dataloader.sampler]

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        packed, _ = batch
        hashes = [hashlib.sha1(p.contiguous().numpy().tobytes()).hexdigest() for p in packed]
        self.steps.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "patches": hashes})

    def on_train_end(self, trainer, module):
        rank = trainer.global_rank
        info = {"world_size": trainer.world_size, "sampler": type(trainer.train_dataloader.sampler).__name__,
                "steps": self.steps, "indices": self.indices}
        (self.out / f"rank{rank}.json").write_text(json.dumps(info))
        final = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        torch.save({"initial": self.initial, "final": final}, self.out / f"rank{rank}.pt")


def config(batch_size, devices, strategy):
    return ISPTrainConfig(
        arch="lfnet", num_maps_base=4, arch_options={"num_blocks": 1, "units": 1, "layers": 1}, patch=32,
        batch_size=batch_size, lr=1e-3, iters=4, eval_every=4, patches_per_epoch=8, device="cpu",
        devices=devices, strategy=strategy, seed=0,
    )


if __name__ == "__main__":
    data, model_dir, out, devices, strategy, batch_size = sys.argv[1:]
    train_isp(data, model_dir, config(int(batch_size), int(devices), strategy), progress=False, callbacks=[Record(out)])
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_data")
    synthesize_dataset(root / "train", 3, seed=0, size=(64, 64), progress=False)
    synthesize_dataset(root / "val", 1, seed=1, size=(32, 32), progress=False)
    return root


def load_run(out: Path, rank: int) -> tuple[dict, dict]:
    return json.loads((out / f"rank{rank}.json").read_text()), torch.load(out / f"rank{rank}.pt", weights_only=True)


@pytest.mark.slow
def test_ddp_ranks_see_different_patches_and_share_gradients(data: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script), str(data), str(tmp_path / "ddp_model"), str(ddp), "2", "ddp", str(BATCH)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (info0, weights0), (info1, weights1) = load_run(ddp, 0), load_run(ddp, 1)

    # Two processes, each fed by Lightning's DistributedSampler, BATCH patches per step.
    assert info0["world_size"] == info1["world_size"] == 2
    assert info0["sampler"] == info1["sampler"] == "DistributedSampler"
    assert [s["epoch"] for s in info0["steps"]] == [s["epoch"] for s in info1["steps"]] == [0, 0, 1, 1]
    for step0, step1 in zip(info0["steps"], info1["steps"]):
        assert len(step0["patches"]) == len(step1["patches"]) == BATCH
        assert not set(step0["patches"]) & set(step1["patches"]), "both ranks trained on the same patch"
    every = [h for info in (info0, info1) for s in info["steps"] for h in s["patches"]]
    assert len(set(every)) == len(every) == 2 * BATCH * STEPS  # new patches every step, rank and epoch

    # All-reduced gradients: the replicas stay bit-identical, and they did train.
    for name, value in weights0["final"].items():
        assert torch.equal(value, weights1["final"][name]), name
    assert all(torch.equal(weights0["initial"][k], weights1["initial"][k]) for k in weights0["initial"])
    moved = max((weights0["final"][k] - weights0["initial"][k]).abs().max().item() for k in weights0["final"])
    assert moved > 1e-4

    # Each rank's patches are the dataset's items at the indices its sampler gave, and the two
    # ranks' index lists split the epoch's 8 indices.
    namespace: dict = {"__name__": "ddp_config"}
    exec(compile(SCRIPT, str(script), "exec"), namespace)  # noqa: S102 - the test's own script: its config
    config = namespace["config"](BATCH, 1, "auto")
    dataset = PatchDataset(open_pairs(data, "train"), config.patch, config.patches_per_epoch, seed=config.seed)

    def patches(epoch: int, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dataset.set_epoch(epoch)
        return [dataset[i] for i in indices]

    steps_per_epoch = config.patches_per_epoch // (2 * BATCH)
    batches = []
    for step in range(STEPS):
        epoch, k = divmod(step, steps_per_epoch)
        ranks = [info["indices"][str(epoch)][k * BATCH : (k + 1) * BATCH] for info in (info0, info1)]
        assert sorted(info0["indices"][str(epoch)] + info1["indices"][str(epoch)]) == list(range(8))
        items = patches(epoch, ranks[0] + ranks[1])
        hashes = [hashlib.sha1(packed.contiguous().numpy().tobytes()).hexdigest() for packed, _ in items]
        assert hashes == info0["steps"][step]["patches"] + info1["steps"][step]["patches"]
        batches.append(items)

    # One process, Adam on the union of the ranks' batches (mean loss over 2 * BATCH patches) from
    # the same start: the DDP weights up to float rounding.
    model = build_isp_model(config.arch, config.num_maps_base, **config.arch_options)
    model.load_state_dict(weights0["initial"])
    module = ISPModule(model, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    for items in batches:
        packed, target = (torch.stack(part) for part in zip(*items))
        optimizer.zero_grad()
        module.loss_terms(model(packed), target)["loss"].backward()
        optimizer.step()
    final = model.state_dict()
    difference = max((final[k] - weights0["final"][k]).abs().max().item() for k in final)
    assert difference < 1e-3 * moved, (difference, moved)
