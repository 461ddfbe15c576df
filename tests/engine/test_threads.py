"""Torch threads fitted to the idle CPUs (isplab.engine.threads) and applied by build_trainer."""

from __future__ import annotations

import os

import pytest
import torch

from isplab.engine import build_trainer
from isplab.engine.threads import available_cpus, fit_threads_to_cpus


@pytest.fixture
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield monkeypatch
    torch.set_num_threads(before)


def test_threads_never_exceed_the_usable_cpus():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_busy_machine_gets_fewer_threads(restore_threads):
    monkeypatch = restore_threads
    monkeypatch.setattr("isplab.engine.threads.available_cpus", lambda: 8)
    torch.set_num_threads(8)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.2, 0.0, 0.0))
    assert fit_threads_to_cpus() == "3 torch threads (load 5.2 on 8 CPUs)"
    assert torch.get_num_threads() == 3
    torch.set_num_threads(8)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    fit_threads_to_cpus(processes=2)  # two DDP ranks share the 8 idle CPUs
    assert torch.get_num_threads() == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 0.0, 0.0))
    assert fit_threads_to_cpus() == "1 torch thread (load 30.0 on 8 CPUs)"


def test_user_choice_wins(restore_threads):
    monkeypatch = restore_threads
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 0.0, 0.0))
    assert "OMP_NUM_THREADS" in fit_threads_to_cpus()
    assert torch.get_num_threads() == 2


def test_cpu_training_fits_threads(restore_threads, tmp_path):
    monkeypatch = restore_threads
    monkeypatch.setattr("isplab.engine.threads.available_cpus", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    torch.set_num_threads(4)
    build_trainer(tmp_path / "run", max_epochs=1, device="cpu", progress=False)
    assert torch.get_num_threads() == 1
