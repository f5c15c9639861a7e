"""Which samples each rank and data worker reads in an epoch, and in what order.

**Training.** The N samples of the split form one stream: the shards in an order permuted from
(seed, epoch), each shard's samples in file order. Rank r of W takes the stream positions
[r*L, (r+1)*L) with L = ceil(N / W), positions past N wrapping to the start (as
DistributedSampler pads: a few samples twice when W does not divide N), so a rank opens only
about 1/W of the shards. Its L samples make L // B full batches (``drop_last``: the L % B rest
is left out, as with the map-style loader); data worker k of K reads a contiguous block of
whole batches and mixes them with a shuffle buffer seeded from (seed, epoch, rank, k). Every
sample is augmented after seeding from (seed, epoch, its position in the unpermuted stream), so
its augmentation does not depend on W, K or B; the batches' composition does. A mid-epoch
resume reads and discards the batches already trained (images are not decoded).

**Evaluation.** Rank r takes positions [r*N//W, (r+1)*N//W) (all of them without
--dist_eval) in file order, no wrap, no shuffle.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right

import numpy as np

# Tags separating the random streams derived from (seed, epoch).
SHARD_ORDER_TAG, BUFFER_TAG = 1, 2


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    """The shards' order in epoch ``epoch``: a permutation drawn from (seed, epoch)."""
    ss = np.random.SeedSequence([seed % 2**63, epoch, SHARD_ORDER_TAG])
    return [int(i) for i in np.random.default_rng(ss).permutation(n_shards)]


def train_blocks(
    total: int, world: int, rank: int, batch: int, workers: int
) -> list[tuple[int, int]]:
    """Stream positions [start, stop) of each data worker of ``rank`` in a training epoch:
    contiguous whole batches of the rank's L = ceil(total / world) positions (past ``total``:
    wrapped)."""
    per_rank = -(-total // world)
    nb, base = per_rank // batch, rank * per_rank
    return [
        (base + k * nb // workers * batch, base + (k + 1) * nb // workers * batch)
        for k in range(workers)
    ]


def eval_blocks(
    total: int, world: int, rank: int, batch: int, workers: int
) -> list[tuple[int, int]]:
    """Evaluation: the rank's positions [rank*total//world, (rank+1)*total//world) (no wrap),
    in whole batches per worker, the last one possibly short."""
    lo, hi = rank * total // world, (rank + 1) * total // world
    nb = -(-(hi - lo) // batch)
    return [
        (lo + k * nb // workers * batch, min(hi, lo + (k + 1) * nb // workers * batch))
        for k in range(workers)
    ]


def resume_plan(batches: list[int], skip: int) -> tuple[list[int], int]:
    """(batches each worker skips, worker rotation) that resume an epoch after ``skip`` batches.

    The DataLoader takes batch j of worker 0, 1, ..., K-1 in turn (a finished worker drops
    out), so the epoch's batch order is (j, k) in lexicographic order. Skipping the first
    ``skip`` of them and letting loader slot w run worker (w + rotation) % K, with rotation the
    worker of the first remaining batch, gives exactly the remaining order.
    """
    order = [
        (j, k)
        for j in range(max(batches, default=0))
        for k in range(len(batches))
        if batches[k] > j
    ]
    skips = [0] * len(batches)
    for _, k in order[:skip]:
        skips[k] += 1
    return skips, (order[skip][1] if skip < len(order) else 0)


def segments(
    order: list[int], counts: tuple[int, ...], start: int, stop: int
) -> list[tuple[int, int, int]]:
    """Stream positions [start, stop) (modulo the total: the wrap) as (shard, first, end) reads
    of the shards in ``order``."""
    order = [i for i in order if counts[i] > 0]
    starts = list(itertools.accumulate((counts[i] for i in order), initial=0))
    total, out, p = starts[-1], [], start
    while p < stop:
        q = p % total
        j = bisect_right(starts, q) - 1
        n = min(stop - p, starts[j + 1] - q)
        out.append((order[j], q - starts[j], q - starts[j] + n))
        p += n
    return out
