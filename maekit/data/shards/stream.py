"""The loaders over tar shards: each data worker streams its block of the epoch plan
(:mod:`.plan`), decodes and augments it, and yields whole batches.

Unreadable images are replaced by the next readable sample of the batch and counted, as in
:mod:`maekit.data.robust`.
"""

from __future__ import annotations

import io
import itertools
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ...errors import MaekitError
from ..folder import UnreadableImage, decode_rgb
from ..robust import TooManyBadImages
from ..seeding import keep_global_rng, sample_seed, seed_all
from ..workers import make_loader
from .dataset import ShardDataset
from .plan import BUFFER_TAG, eval_blocks, resume_plan, segments, shard_order, train_blocks
from .read import Record, parse_label, read_samples

SHUFFLE_BUFFER = 1000  # samples mixed by each worker's shuffle buffer (raw bytes, not decoded)


def _shuffled(records: Iterator[Record], size: int, rng: random.Random) -> Iterator[Record]:
    """A shuffle buffer of ``size`` records: same records out, locally mixed."""
    buf: list[Record] = []
    for rec in records:
        if len(buf) < size:
            buf.append(rec)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = rec
    rng.shuffle(buf)
    yield from buf


class _Stream(IterableDataset):
    """The samples of one rank, each loader worker reading its block (see :mod:`.plan`).

    Yields whole batches: training ``(images, targets, skipped, keys)``, evaluation
    ``(images, targets)`` or None when no image of the batch could be read.
    """

    def __init__(
        self,
        data: ShardDataset,
        batch_size: int,
        seed: int,
        workers: int,
        train: bool,
        shuffle_buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.workers, self.train, self.shuffle_buffer = max(1, workers), train, shuffle_buffer
        # Set by the loader before each epoch's iterator starts (workers get a copy then).
        self.epoch, self.rank, self.rotation = 0, 0, 0
        self.blocks: list[tuple[int, int]] = []
        self.order: list[int] = list(range(len(data.shards.counts)))
        self.skips = [0] * self.workers
        self._warned = 0
        self._last_good: tuple[Record, object] | None = None

    def __iter__(self):
        info = get_worker_info()
        k = ((info.id if info is not None else 0) + self.rotation) % self.workers
        start, stop = self.blocks[k]
        records = self._records(start, stop)
        if self.train:
            ss = np.random.SeedSequence([self.seed % 2**63, self.epoch, BUFFER_TAG, self.rank, k])
            rng = random.Random(int(ss.generate_state(1, np.uint64)[0]))
            records = _shuffled(records, self.shuffle_buffer, rng)
        # A resumed epoch: read and discard this worker's batches already trained.
        records = itertools.islice(records, self.skips[k] * self.batch_size, None)
        batch = self._train_batch if self.train else self._eval_batch
        while chunk := list(itertools.islice(records, self.batch_size)):
            # Build the batch, then yield outside the guard: the caller's draws must not be undone.
            with keep_global_rng(info is None):
                out = batch(chunk)
            yield out

    def _records(self, start: int, stop: int) -> Iterator[Record]:
        shards, counts = self.data.shards, self.data.shards.counts
        for s, first, end in segments(self.order, counts, start, stop):
            url, n = shards.urls[s], first
            # Reading to a shard's end, one sample more is asked for: a shard holding more
            # than its manifest says is refused, not trained on in part.
            stop = end + 1 if end == counts[s] else end
            for i, key, ext, data, cls in read_samples(url, first, stop):
                if i >= end:
                    raise MaekitError(
                        f"shard {url} holds more samples than its manifest's {counts[s]}; "
                        "re-create the shards with `maekit shard` (or fix the count)"
                    )
                label = parse_label(cls, url, key, len(self.data.classes) or None)
                yield Record(self.data.offsets[s] + i, key, ext, data, label, url)
                n = i + 1
            if n < end:
                raise MaekitError(
                    f"shard {url} holds {n} samples, its manifest says {counts[s]}; "
                    "re-create the shards with `maekit shard`"
                )

    def _decode(self, rec: Record):
        try:
            name = f"{rec.shard}:{rec.key}.{rec.ext}"
            return decode_rgb(io.BytesIO(rec.data), name, self.data.max_pixels)
        except UnreadableImage as e:
            if self._warned < 10:
                self._warned += 1
                print(f"maekit: skipping unreadable image {e}", file=sys.stderr, flush=True)
            return None

    def _target(self, rec: Record) -> int:
        if rec.label is None:
            if self.data.classes:
                raise MaekitError(
                    f"{rec.shard}: sample {rec.key} has no .cls label while the others "
                    "have; re-create the shards with `maekit shard`"
                )
            return 0
        return rec.label

    def _train_batch(self, chunk: list[Record]):
        """Each sample seeded from (seed, epoch, its index); an unreadable one is replaced by
        the next readable sample of the batch (or this worker's last one) and counted."""
        images = [self._decode(rec) for rec in chunk]
        good = [i for i, img in enumerate(images) if img is not None]
        if good:
            self._last_good = (chunk[good[-1]], images[good[-1]])
        elif self._last_good is None:
            raise TooManyBadImages(
                f"no image of the {len(chunk)} samples from {chunk[0].shard} "
                f"(key {chunk[0].key} on) could be read; check the shards"
            )
        xs, targets, skipped = [], [], []
        for i in range(len(chunk)):
            j = (
                i
                if images[i] is not None
                else next((g for g in good if g > i), good[0] if good else None)
            )
            rec, img = (chunk[j], images[j]) if j is not None else self._last_good
            seed_all(sample_seed(self.seed, self.epoch, rec.index))
            xs.append(self.data.transform(img) if self.data.transform is not None else img)
            targets.append(self._target(rec))
            skipped.append(int(images[i] is None))
        keys = [rec.key for rec in chunk]
        return torch.stack(xs), torch.tensor(targets), torch.tensor(skipped), keys

    def _eval_batch(self, chunk: list[Record]):
        """Unreadable images are left out (warned about), as in engine/evaluate.py."""
        kept = [(rec, img) for rec in chunk if (img := self._decode(rec)) is not None]
        if not kept:
            return None
        transform = self.data.transform or (lambda x: x)
        xs = [transform(img) for _, img in kept]
        return torch.stack(xs), torch.tensor([self._target(rec) for rec, _ in kept])


class ShardLoader:
    """The training loader over tar shards, in place of the map-style DataLoader.

    Batches are (images, targets, skipped counts) like :func:`maekit.data.build_train_loader`'s.
    ``len()`` is the number of batches still to come this epoch. The training loop calls
    ``loader.sampler.set_epoch(e)`` and ``loader.sampler.start_at(n_samples)``: the loader is
    its own sampler. Workers restart each epoch (they get the epoch with the stream), and the
    DataLoader has its own generator, so starting an epoch never draws from the global RNG.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int,
        pin_memory: bool,
        shuffle_buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        self.dataset, self.batch_size, self.rank = dataset, batch_size, rank
        self.stream = _Stream(dataset, batch_size, seed, num_workers, True, shuffle_buffer)
        self.stream.rank = rank
        self.stream.blocks = train_blocks(
            len(dataset), world_size, rank, batch_size, self.stream.workers
        )
        self.worker_batches = [(b - a) // batch_size for a, b in self.stream.blocks]
        self.loader = make_loader(
            self.stream, batch_size=None, num_workers=num_workers, seed=seed, pin_memory=pin_memory
        )
        self.sampler = self
        self.epoch, self.skip = 0, 0
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.skip = epoch, 0

    def start_at(self, n_samples: int) -> None:
        """Skip this rank's first ``n_samples`` of the epoch (whole batches; read, not decoded)."""
        self.skip = min(max(0, int(n_samples)) // self.batch_size, sum(self.worker_batches))

    def __len__(self) -> int:
        return sum(self.worker_batches) - self.skip

    def batches_with_keys(self) -> Iterator[tuple[tuple, list[str]]]:
        """((images, targets, skipped), sample keys) of each batch still to come this epoch."""
        s = self.stream
        s.epoch = self.epoch
        s.order = shard_order(len(self.dataset.shards.counts), self.seed, self.epoch)
        s.skips, s.rotation = resume_plan(self.worker_batches, self.skip)
        if len(self) == 0:
            return
        for images, targets, skipped, keys in self.loader:
            yield (images, targets, skipped), keys

    def __iter__(self):
        for batch, _keys in self.batches_with_keys():
            yield batch


class ShardEvalLoader:
    """Evaluation batches (images, targets) of a rank's share of the shards, in file order."""

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        self.stream = _Stream(dataset, batch_size, 0, num_workers, False)
        self.stream.blocks = eval_blocks(
            len(dataset), world_size, rank, batch_size, self.stream.workers
        )
        self.loader = make_loader(
            self.stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory
        )
        self.batch_size = batch_size

    def __len__(self) -> int:
        return sum(-(-(b - a) // self.batch_size) for a, b in self.stream.blocks)

    def __iter__(self):
        if len(self) == 0:
            return
        yield from self.loader


def shard_eval_loader(
    dataset: ShardDataset,
    batch_size: int,
    rank: int,
    world_size: int,
    rank_split: bool,
    num_workers: int,
    pin_memory: bool,
) -> ShardEvalLoader:
    """``rank_split`` (--dist_eval under torchrun): this rank's exact share; else every sample."""
    if not rank_split:
        rank, world_size = 0, 1
    return ShardEvalLoader(dataset, batch_size, rank, world_size, num_workers, pin_memory)
