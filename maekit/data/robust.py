"""Fetching a training sample reproducibly and without dying on a bad file.

:class:`SeededSamples` wraps a dataset and is indexed by the ``(epoch, index)`` keys of
:class:`~maekit.data.sampling.ResumableSampler`:

- **Seeded augmentation.** Before a sample is transformed, python's ``random``, numpy's global
  RNG and torch's CPU RNG are seeded from ``(seed, epoch, index)`` (:mod:`maekit.data.seeding`).
  The random crop, flip, RandAugment and erasing of a sample are then a function of the key
  alone, whatever the worker count, and a run resumed mid-epoch sees exactly the augmentations
  of the uninterrupted run.
  In the main process (``num_workers=0``) the global RNG states are saved and restored around
  the fetch, so data loading never shifts the model's random stream (masking, drop path).
- **Bad files.** An image that cannot be decoded (truncated, corrupt, zero bytes, not an
  image) raises :class:`~maekit.data.folder.UnreadableImage`; the sample is replaced by the
  next readable index (deterministically) and counted once. The count comes back with each sample,
  so the loop can log it per epoch and stop when too large a fraction of the data is bad.
"""

from __future__ import annotations

import errno
import sys

import torch

from ..errors import MaekitError
from .folder import UnreadableImage
from .seeding import keep_global_rng, sample_seed, seed_all

MAX_CONSECUTIVE_BAD = 64  # more unreadable files in a row than this: the data is broken


class TooManyBadImages(MaekitError):
    pass


# Errors of the machine, not of the file: never counted as an unreadable image.
RESOURCE_ERRNOS = {
    errno.EMFILE: "open files",
    errno.ENFILE: "open files (system-wide)",
    errno.ENOMEM: "memory",
    errno.ENOSPC: "space (e.g. /dev/shm)",
}


class DataResourceError(MaekitError):
    """A data worker ran out of a machine resource (open files, memory)."""


def resource_error(e: OSError, what: str) -> DataResourceError | None:
    """The clear error for ``e`` when it is a resource error (EMFILE, ENOMEM...), else None."""
    name = RESOURCE_ERRNOS.get(getattr(e, "errno", None))
    if name is None:
        return None
    hint = (
        "raise the open-file limit (ulimit -n) or lower --num_workers / --batch_size"
        if "open files" in name
        else "lower --num_workers / --batch_size"
    )
    return DataResourceError(
        f"the data loader ran out of {name} reading {what} ({e.strerror}); {hint}"
    )


class SeededSamples(torch.utils.data.Dataset):
    """``dataset[(epoch, index)] -> (image, target, n_skipped)`` with per-sample seeding and
    bad-file substitution. Plain integer keys work too (epoch 0)."""

    def __init__(
        self, dataset: torch.utils.data.Dataset, seed: int, max_warnings: int = 10
    ) -> None:
        self.dataset = dataset
        self.seed = seed
        self.max_warnings = max_warnings
        self._warned = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # classes, samples, targets... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        in_worker = torch.utils.data.get_worker_info() is not None
        with keep_global_rng(not in_worker):  # main process: the training RNG streams stay put
            return self._fetch(epoch, index)

    def _fetch(self, epoch: int, index: int):
        n = len(self.dataset)
        for skipped in range(min(n, MAX_CONSECUTIVE_BAD)):
            i = (index + skipped) % n
            seed_all(sample_seed(self.seed, epoch, i))
            try:
                img, target = self.dataset[i]
            except OSError as e:  # a full file table is not a bad image
                err = resource_error(e, f"sample {i}")
                if err is None:
                    raise
                raise err from e
            except UnreadableImage as e:
                if self._warned < self.max_warnings:
                    self._warned += 1
                    print(f"maekit: skipping unreadable image {e}", file=sys.stderr, flush=True)
                continue
            # Count the requested file only: a bad neighbour tried as its stand-in is counted
            # when it is requested itself, so each unreadable file counts once per visit.
            return img, target, int(skipped > 0)
        raise TooManyBadImages(
            f"{min(n, MAX_CONSECUTIVE_BAD)} images in a row from index {index} could not be read; "
            "check --data_path (see the 'skipping unreadable image' warnings above)"
        )


class SkipUnreadable(torch.utils.data.Dataset):
    """Evaluation (or measured) data that drops files that cannot be decoded (warned about, not
    counted in the metrics' ``n``) instead of ending a run after its training epoch. Batch it
    with :func:`collate_readable`."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except UnreadableImage as e:
            print(f"maekit: skipping unreadable image {e}", file=sys.stderr, flush=True)
            return None


def collate_readable(batch: list):
    """The default collate over the samples :class:`SkipUnreadable` kept; None if it kept none."""
    kept = [b for b in batch if b is not None]
    return torch.utils.data.default_collate(kept) if kept else None
