"""seed_all: the one seeding function, for a run's start (every device generator, as
torch.manual_seed) and per sample (the CPU generators only)."""

from __future__ import annotations

import random

import numpy as np
import torch

from maekit.data.seeding import seed_all


def draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_run_start_seeding_is_torch_manual_seed_and_reaches_the_device_generators(monkeypatch):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = draws()
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: calls.append(s))
    seed_all(5, accelerators=True)
    got = draws()
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
    assert calls == [5]  # CUDA generators seeded too (lazily, as torch.manual_seed does)
    calls.clear()
    seed_all(5)  # per-sample seeding: the same CPU draws, device generators untouched
    got = draws()
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
    assert calls == []
