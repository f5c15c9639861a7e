"""The training sampler: the official distributed shuffle, made resumable mid-epoch.

It yields ``(epoch, index)`` keys instead of bare indices. The epoch travels with every key,
so a dataset wrapper in a (persistent) worker process can derive each sample's augmentation
seed from ``(seed, epoch, index)`` alone: the augmentations of an epoch no longer depend on
which worker loads a sample or on where a run was resumed (see :mod:`maekit.data.robust`).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler


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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self._skip :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return max(0, super().__len__() - self._skip)
