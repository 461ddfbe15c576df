"""Datasets whose random items are a pure function of ``(seed, epoch, index)``.

The one rule that makes data-parallel training honest (``docs/conventions.md`` §5): under DDP,
Lightning's ``DistributedSampler`` hands each rank different indices, so if every random choice of
an item comes from ``numpy.random.default_rng([seed, epoch, index])`` — never from a global
generator — the ranks train on different data with the same seed, data-loader workers need no
seeding of their own, and a run is reproducible whatever the number of workers or ranks.
:func:`isplab.engine.build_trainer`'s ``DatasetEpoch`` callback calls :meth:`EpochDataset.set_epoch`
at the start of every epoch (and of every fit, for a resume), so each epoch draws new items.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from isplab.errors import IsplabError

__all__ = ["EpochDataset"]


class EpochDataset(Dataset):
    """Base class: ``len`` is ``items_per_epoch``; :meth:`rng` gives item ``index``'s generator.

    The epoch lives in shared memory, so data-loader worker processes (persistent ones included)
    see :meth:`set_epoch` calls made in the main process.

    Args:
        items_per_epoch: the dataset's length (items drawn per epoch).
        seed: the run's seed (a non-negative integer).

    Raises:
        IsplabError: ``items_per_epoch`` below 1 or a seed that is not a non-negative integer.
    """

    def __init__(self, items_per_epoch: int, seed: int = 0) -> None:
        if int(items_per_epoch) < 1:
            raise IsplabError(f"patches_per_epoch must be at least 1, got {items_per_epoch}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise IsplabError(f"seed must be a non-negative integer, got {seed!r}")
        self.items_per_epoch = int(items_per_epoch)
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch whose items the dataset returns (0 until :meth:`set_epoch`)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose items the dataset returns (seen by worker processes too)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return self.items_per_epoch

    def rng(self, index: int, *, epoch: int | None = None) -> np.random.Generator:
        """The generator of item ``index`` of this epoch (or of ``epoch``).

        Raises:
            IndexError: ``index`` outside ``0 .. len - 1`` (ends iteration by ``__getitem__``).
        """
        if not 0 <= index < self.items_per_epoch:
            raise IndexError(f"patch index {index} out of range for {self.items_per_epoch} patches per epoch")
        return np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch), int(index)])
