"""Real DDP for `train_genisp`: two CPU processes (Lightning's `strategy="ddp"`, gloo).

Lightning starts the second process by re-running the command of the first, so the run is a small
script in a subprocess. Each rank records the image ids of every batch and its final GenISP
weights. The ranks must read disjoint images that together cover the training split in every
epoch (Lightning's DistributedSampler), and end with identical weights (gradients all-reduced).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = '''
import json, sys
from pathlib import Path

import lightning as L
import torch

from isplab.workflows.genisp.train import GenISPTrainConfig, train_genisp


class Record(L.Callback):
    def __init__(self, out):
        self.out, self.ids = Path(out), {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        _, targets = batch
        self.ids.setdefault(str(trainer.current_epoch), []).extend(int(t["image_id"]) for t in targets)

    def on_train_end(self, trainer, module):
        weights = {k: v.flatten()[:4].tolist() for k, v in module.model.state_dict().items()}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"ids": self.ids, "weights": weights}))


data, det, out = map(Path, sys.argv[1:4])
tiny = {"subnet_size": 32, "subnet_channels": [4, 8, 8], "convnet_channels": [4, 8]}
config = GenISPTrainConfig(batch_size=1, epochs=2, device="cpu", devices=2, strategy="ddp", genisp=tiny, seed=7)
train_genisp(data, out / "run", det, config, progress=False, callbacks=[Record(out)])
'''


@pytest.mark.slow
def test_two_ranks_read_disjoint_images_and_end_with_the_same_weights(tmp_path):
    from isplab.workflows.genisp.synth import synthesize
    from isplab.workflows.genisp.train import DetectorTrainConfig, open_split, train_detector

    data = tmp_path / "data"
    synthesize(data, count=10, seed=3, size=(96, 64), workers=1)
    det = train_detector(data, tmp_path / "det", DetectorTrainConfig(short=32, long=48, batch_size=4, epochs=1, device="cpu"),
                         progress=False)  # fmt: skip
    (tmp_path / "script.py").write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(data), str(det), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    train_ids = {image.id for image in open_split(data, "cam-a", "train").images}
    pad = len(train_ids) % 2  # DistributedSampler repeats one image so that both ranks get as many
    for epoch in ("0", "1"):
        a, b = ranks[0]["ids"][epoch], ranks[1]["ids"][epoch]
        assert len(a) == len(b) == (len(train_ids) + pad) // 2, (epoch, a, b)
        assert len(set(a) & set(b)) == pad and set(a) | set(b) == train_ids, (epoch, a, b)
    assert ranks[0]["ids"]["0"] != ranks[0]["ids"]["1"] or ranks[1]["ids"]["0"] != ranks[1]["ids"]["1"]  # reshuffled per epoch
    assert ranks[0]["weights"] == ranks[1]["weights"]
