"""Seeding the global random generators: at a run's start, and before each sample's augmentation.

A sample's random crop, flip, RandAugment and erasing are drawn from python's ``random``,
numpy's global RNG and torch's CPU RNG, seeded from ``(seed, epoch, index)`` alone
(:func:`sample_seed`), so they do not depend on the worker count or on where a run resumed.
In the main process (``--num_workers 0``) :func:`keep_global_rng` puts the generators back
afterwards, so data loading never shifts the model's random streams (masking, drop path).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed, statistically independent for every (seed, epoch, index)."""
    state = np.random.SeedSequence([seed % 2**63, epoch, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_all(s: int, accelerators: bool = False) -> None:
    """Seed python's, numpy's and torch's CPU generator; with ``accelerators`` (a run's start:
    initial weights, masking, drop path) also every device generator (CUDA...), as
    ``torch.manual_seed`` does.

    Per-sample seeding leaves the device generators alone: :func:`keep_global_rng` does not
    restore them, so with ``--num_workers 0`` on a GPU, masking and drop path would otherwise
    follow the data order.
    """
    random.seed(s)
    np.random.seed(s % 2**32)
    if accelerators:
        torch.manual_seed(s)
    else:
        torch.random.default_generator.manual_seed(s)


@contextlib.contextmanager
def keep_global_rng(active: bool = True) -> Iterator[None]:
    """Leave python's, numpy's and torch's CPU RNG streams where they were (when ``active``):
    per-sample seeding in the main process (``--num_workers 0``) must not move the training
    streams (masking, dropout), or a run would depend on its worker count."""
    if not active:
        yield
        return
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
