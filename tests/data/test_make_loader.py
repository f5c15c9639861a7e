"""The one DataLoader factory: every loader keeps the signal and RNG rules."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import maekit
from maekit.data.robust import SkipUnreadable, collate_readable
from maekit.data.workers import ignore_stop_signals, make_loader


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


def test_workers_ignore_stop_signals_and_persist_only_with_workers():
    ds = torch.utils.data.TensorDataset(torch.arange(8.0))
    loader = make_loader(ds, batch_size=2, num_workers=0, persistent=True)
    assert loader.worker_init_fn is ignore_stop_signals
    assert loader.persistent_workers is False  # torch refuses persistent workers without workers


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
        if re.search(r"(?<![\w.])DataLoader\(", p.read_text())
    )
    assert builders == ["data/workers.py"]
