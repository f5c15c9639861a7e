"""Which samples a loader reads: the training sampler (the official distributed shuffle, made
resumable mid-epoch, and read epoch after epoch by one loader iteration so that the workers
never run dry at an epoch's end), and fixed random subsets (:func:`subset_indices`).

The sampler yields ``(epoch, index)`` keys instead of bare indices. The epoch travels with every key,
so a dataset wrapper in a (persistent) worker process can derive each sample's augmentation
seed from ``(seed, epoch, index)`` alone: the augmentations of an epoch no longer depend on
which worker loads a sample or on where a run was resumed (see :mod:`maekit.data.robust`).
That is also what lets the workers prefetch the next epoch's first batches while the current
one ends (:class:`EpochBatches`, :class:`EpochLoader`): a key made ahead of time is the key.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler


def subset_indices(length: int, limit: int | None, seed: int) -> list[int]:
    """A fixed random subset of ``range(length)`` of size ``limit`` (all if None), in order.

    Random rather than the first ``limit`` because class folders are sorted by class.
    """
    if limit is None or limit >= length:
        return list(range(length))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(length, generator=g)[:limit].tolist())


class ResumableSampler(DistributedSampler):
    """DistributedSampler (same permutation for a given seed and epoch) that can start an epoch
    part-way: :meth:`start_at` skips the first ``n`` indices of this rank's share, once."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._skip = 0

    def start_at(self, n_samples: int) -> None:
        """Skip this rank's first ``n_samples`` of the current epoch (for a mid-epoch resume)."""
        self._skip = max(0, int(n_samples))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._skip = 0

    @property
    def skip(self) -> int:
        return self._skip

    def keys(self, epoch: int, skip: int = 0) -> list[tuple[int, int]]:
        """This rank's keys of ``epoch`` from position ``skip``, without changing the sampler."""
        other = copy.copy(self)
        other.epoch = epoch
        return [(epoch, i) for i in list(DistributedSampler.__iter__(other))[skip:]]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys(self.epoch, self._skip))

    def __len__(self) -> int:
        return max(0, super().__len__() - self._skip)


class EpochBatches(Sampler):
    """Batch sampler over a :class:`ResumableSampler`: the current epoch's batches (from its
    start position, the last partial batch dropped as ``drop_last``), then the next epoch's,
    and so on. ``len`` is the current epoch's batch count."""

    def __init__(self, sampler: ResumableSampler, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip, bs = self.sampler.epoch, self.sampler.skip, self.batch_size
        while True:  # the loader's iteration decides how far ahead the workers read
            keys = self.sampler.keys(epoch, skip)
            for b in range(len(keys) // bs):
                yield keys[b * bs : (b + 1) * bs]
            epoch, skip = epoch + 1, 0


class EpochLoader:
    """A DataLoader over :class:`EpochBatches`, read one epoch at a time like a DataLoader
    (``sampler.set_epoch`` / ``sampler.start_at`` then iterate), but from one iteration of it
    while the epochs follow each other whole: its persistent workers have the next epoch's
    first batches ready when the current one ends, instead of starting on them then.

    Anything else (a resume's :meth:`~ResumableSampler.start_at`, an epoch that is not the
    next one, an epoch not read to its end, e.g. cut by ``--max_train_step`` or a stop) starts
    a new iteration from the sampler's position, dropping what was prefetched: exactly the
    batches a fresh DataLoader would give.
    """

    drop_last = True  # an epoch's last partial batch is dropped (as the official)

    def __init__(self, loader: DataLoader, sampler: ResumableSampler) -> None:
        self.loader = loader
        self.sampler = sampler
        self._stream: Iterator | None = None
        self._next_epoch: int | None = None  # the epoch the stream gives next, whole
        self.starts = 0  # iterations started (each drops what the workers had prefetched)

    @property
    def batch_size(self) -> int:
        return self.loader.batch_sampler.batch_size

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader.batch_sampler)

    def __iter__(self) -> Iterator:
        epoch = self.sampler.epoch
        if self._stream is None or self.sampler.skip or self._next_epoch != epoch:
            self._stream = iter(self.loader)  # reads the sampler's position now
            self.starts += 1
        self._next_epoch = None  # until this epoch has been read to its end
        stream, n = self._stream, len(self)
        for k in range(n):
            batch = next(stream)
            if k + 1 == n:
                self._next_epoch = epoch + 1
            yield batch
