"""EpochDataset: items are a pure function of (seed, epoch, index), shared with worker processes."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from isplab.data.epoch import EpochDataset
from isplab.errors import IsplabError


class Draws(EpochDataset):
    def __getitem__(self, index: int) -> float:
        return float(self.rng(index).random())


def test_items_depend_on_seed_epoch_and_index_only():
    a, b = Draws(6, seed=3), Draws(6, seed=3)
    assert [a[i] for i in range(6)] == [b[i] for i in range(6)]
    assert a[2] == float(np.random.default_rng([3, 0, 2]).random())
    assert len({a[i] for i in range(6)}) == 6                      # indices differ (DDP ranks get different ones)
    first = [a[i] for i in range(6)]
    a.set_epoch(1)
    assert a.epoch == 1 and a[2] == float(np.random.default_rng([3, 1, 2]).random())
    assert set(first).isdisjoint(a[i] for i in range(6))           # a new epoch draws new items
    assert Draws(6, seed=4)[2] != b[2]


def test_worker_processes_see_the_epoch():
    data = Draws(4, seed=0)
    data.set_epoch(5)
    loader = DataLoader(data, batch_size=4, num_workers=1, multiprocessing_context="fork")
    values = next(iter(loader)).tolist()
    assert values == [float(np.random.default_rng([0, 5, i]).random()) for i in range(4)]


def test_bad_arguments_and_iteration_end():
    with pytest.raises(IsplabError, match="patches_per_epoch must be at least 1, got 0"):
        Draws(0)
    with pytest.raises(IsplabError, match="seed must be a non-negative integer"):
        Draws(3, seed=-1)
    assert list(Draws(3)) == [Draws(3)[i] for i in range(3)]       # IndexError ends iteration
