"""A Lightning-free training loop for cross-validation and search: the same computation, less overhead.

:func:`fast_train` trains what :func:`isplab.workflows.awb.train.train_model` trains, on one
device and without a run folder: the same :class:`~isplab.workflows.awb.train.AWBModule` (the
dataset and its augmentation as tensors on the device, the loss), the same optimizer and
plateau schedule (``AWBModule.configure_optimizers``), the epoch's augmentation drawn from
``(seed, epoch, rank 0)``, early stopping on the epoch's training loss with Lightning's rule
(stop after ``patience`` epochs without a strict improvement), and even the same random draws
from torch's global generator: it is seeded as :func:`isplab.engine.build_trainer` seeds it
(before the model is built) and each epoch's shuffle is drawn as a ``DataLoader`` draws it
(its shared seed, then the sampler's seed), so dropout sees the same numbers.
``tests/workflows/awb/test_fast.py`` checks that both give the same out-of-fold predictions.

What it leaves out is what a CV fold throws away: checkpoints, loggers, callbacks, progress bars,
DDP, and the Trainer's per-step bookkeeping. On a CPU that is a modest saving, because the tiny
nets' convolutions take most of the time: ``benchmarks/awb_rpi.py --cv-speed`` measured one pisp
fold (456 images, 1 thread, a CPU shared with other jobs) at 50.1 s with Lightning and 39.8 s
here (1.26x) for a ``small`` net of 153 epochs, and 1.04x for the default 3 x ``chroma`` (20
epochs), with identical predictions.
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import torch
from torch import nn

from isplab.engine import resolve_accelerator
from isplab.engine.threads import fit_threads_to_cpus
from isplab.errors import IsplabError
from isplab.workflows.awb.config import LOSSES, TrainConfig
from isplab.workflows.awb.dataset import AWBDataset
from isplab.workflows.awb.model import build_awb_model

__all__ = ["fast_train"]


def _shuffle(count: int) -> torch.Tensor:
    """A ``DataLoader(shuffle=True)`` epoch's order, drawn from torch's global generator as it
    draws it: the iterator's shared seed first, then the ``RandomSampler``'s own seed."""
    torch.empty((), dtype=torch.int64).random_()  # _BaseDataLoaderIter's _base_seed
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(count, generator=generator)


def fast_train(
    dataset: AWBDataset,
    config: TrainConfig | None = None,
    *,
    weights: np.ndarray | None = None,
    tables=None,
) -> nn.Module:
    """Train an AWB model on ``dataset`` as :func:`~isplab.workflows.awb.train.train_model` does,
    without Lightning (see the module docstring); returns it on the CPU in eval mode.

    Args:
        dataset: training images of one target.
        config: options; one device (``devices=[i]`` picks GPU ``i``; ``strategy``/``num_nodes`` are not used).
        weights: ``(N,)`` positive integer repeat counts per image.
        tables: re-lighting tables (:func:`~isplab.workflows.awb.train.relight_tables`) of
            ``dataset``, when ``config.relight > 0``; looked up when not given.

    Raises:
        IsplabError: empty dataset, bad loss, epochs, batch size or weights, absent hardware.
    """
    from isplab.workflows.awb.train import AWBModule, relight_tables, add_test_time

    config = config or TrainConfig()
    if len(dataset) == 0:
        raise IsplabError("cannot train on an empty dataset")
    if config.loss not in LOSSES:
        raise IsplabError(f"unknown AWB loss {config.loss!r}: expected one of {', '.join(LOSSES)}")
    if config.epochs < 1 or config.batch_size < 1:
        raise IsplabError(f"epochs and batch_size must be at least 1, got {config.epochs} and {config.batch_size}")
    repeats = np.ones(len(dataset), dtype=np.int64) if weights is None else np.asarray(weights)
    if repeats.shape != (len(dataset),) or (repeats < 1).any() or not np.issubdtype(repeats.dtype, np.integer):
        raise IsplabError(f"weights must be {len(dataset)} positive integer repeat counts, got {repeats!r}")
    accelerator = resolve_accelerator(config.device)
    if accelerator == "cpu":
        fit_threads_to_cpus(1)
    device = torch.device({"gpu": "cuda"}.get(accelerator, accelerator))
    if device.type == "cuda" and isinstance(config.devices, (list, tuple)) and len(config.devices) == 1:
        device = torch.device("cuda", int(config.devices[0]))  # a search worker's own GPU
    # build_trainer's seeding, then the model: the same initial weights as train_model's.
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = build_awb_model(dataset.target, config.arch, ensemble=config.ensemble, **config.arch_options)
    if tables is None and config.relight > 0:
        tables = relight_tables(dataset, config.tuning_dir)
    module = AWBModule(model, dataset, config, tables).to(device)
    module.train()
    schedule = module.configure_optimizers()
    optimizer = schedule["optimizer"]
    plateau = schedule["lr_scheduler"]["scheduler"]
    index = torch.from_numpy(np.repeat(np.arange(len(dataset)), repeats))
    best, waited = math.inf, 0
    for epoch in range(config.epochs):
        module.seed_augmentation(epoch, 0)
        order = index[_shuffle(len(index))]
        total, seen = torch.zeros((), device=device), 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size].to(device)
            loss = module._loss(batch, augment=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
            seen += len(batch)
        epoch_loss = float(total / seen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plateau.step(epoch_loss)
        if not math.isfinite(epoch_loss):
            break  # Lightning's EarlyStopping(check_finite=True) stops on a NaN loss
        if epoch_loss < best:
            best, waited = epoch_loss, 0
        else:
            waited += 1
            if config.patience is not None and waited >= config.patience:
                break
    return add_test_time(module.model.cpu().eval(), dataset, config)
