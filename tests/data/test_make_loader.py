"""The one DataLoader factory: every loader keeps the signal and RNG rules."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import maekit
from maekit.data.robust import SkipUnreadable, collate_readable
from maekit.data.workers import make_loader


def test_iterating_a_loader_leaves_the_global_rng_alone():
    ds = torch.utils.data.TensorDataset(torch.arange(8.0))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    for _ in make_loader(ds, batch_size=4, num_workers=0, shuffle=True):
        pass
    assert torch.equal(torch.rand(4), expected)


def test_a_plain_dataloader_would_draw_from_it():
    # The rule above is not vacuous: torch's own DataLoader takes its base seed from the global RNG.
    ds = torch.utils.data.TensorDataset(torch.arange(8.0))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    for _ in torch.utils.data.DataLoader(ds, batch_size=4):
        pass
    assert not torch.equal(torch.rand(4), expected)


class _WorkerSignals(torch.utils.data.Dataset):
    """Reports, from inside a worker, how it handles SIGTERM and Ctrl-C."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        term = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        return torch.tensor([term, signal.getsignal(signal.SIGINT) is signal.default_int_handler])


def test_workers_ignore_stop_signals_keep_ctrl_c_and_persist_only_with_workers():
    loader = make_loader(_WorkerSignals(), batch_size=2, num_workers=1)
    assert next(iter(loader)).all()  # SIGTERM ignored, Ctrl-C Python's default, in the worker
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main's restored
    ds = torch.utils.data.TensorDataset(torch.arange(8.0))
    loader = make_loader(ds, batch_size=2, num_workers=0, persistent=True)
    assert loader.persistent_workers is False  # torch refuses persistent workers without workers


# A Ctrl-C that lands while the loader forks its workers: the at-fork hook sends SIGINT from
# inside a fork callback, where Python prints "Exception ignored" and drops a KeyboardInterrupt.
CTRL_C_AT_FORK = """
import os, signal, sys, torch
from maekit.data.workers import make_loader
armed = [True]
def at_fork():
    if armed[0]:
        armed[0] = False
        os.kill(os.getpid(), signal.SIGINT)
os.register_at_fork(after_in_parent=at_fork)
ds = torch.utils.data.TensorDataset(torch.arange(8.0))
make = torch.utils.data.DataLoader if sys.argv[1] == "torch" else make_loader
try:
    print("batches", sum(1 for _ in make(ds, batch_size=2, num_workers=2)))
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("factory", ["torch", "maekit"])
def test_ctrl_c_while_workers_start_is_not_swallowed(factory):
    # Issue 29, case 9: torch's own loader loses it (the run trained on and exited 0); the
    # torch row shows the test is not vacuous.
    env = {**os.environ, "PYTHONPATH": str(Path(maekit.__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", CTRL_C_AT_FORK, factory],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("batches 4" if factory == "torch" else "interrupted")


def test_collate_readable_drops_skipped_samples():
    from maekit.data.folder import UnreadableImage

    class Flaky(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            if i == 1:
                raise UnreadableImage("b.png: truncated")
            return torch.tensor([float(i)])

    batch = [SkipUnreadable(Flaky())[i] for i in range(3)]
    assert torch.equal(collate_readable(batch), torch.tensor([[0.0], [2.0]]))
    assert collate_readable([None, None]) is None


def test_no_module_builds_a_dataloader_of_its_own():
    root = Path(maekit.__file__).parent
    builders = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if re.search(r"(?<![\w.])DataLoader[()]", p.read_text())  # builds or subclasses one
    )
    assert builders == ["data/workers.py"]
