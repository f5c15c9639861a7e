"""Classification evaluation: top-1/top-5 and loss, exact under --dist_eval.

With ``--dist_eval`` each rank takes every world_size-th sample (no padding, unlike
DistributedSampler, so an uneven last part is not double-counted) and the sums are
all-reduced. Without it every rank evaluates the whole set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from ..data.robust import SkipUnreadable, collate_readable
from ..data.workers import make_loader
from .distributed import DistEnv, all_reduce_sum
from .precision import Precision


class RankSplitSampler(Sampler[int]):
    """Indices rank, rank + world, ... : the rank split, disjoint parts covering the dataset
    exactly once."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_eval_loader(
    dataset, batch_size: int, env: DistEnv, dist_eval: bool, num_workers: int, pin_memory: bool
) -> DataLoader:
    """Sequential (or, with --dist_eval, the exact rank split) over ``dataset``; its own RNG
    generator so evaluating never draws from the training random streams. Tar shards are
    streamed (:func:`maekit.data.shards.stream.shard_eval_loader`, the same exact per-rank split)."""
    if getattr(dataset, "streamed", False):
        from ..data.shards.stream import shard_eval_loader

        split = dist_eval and env.distributed
        return shard_eval_loader(
            dataset, batch_size, env.rank, env.world_size, split, num_workers, pin_memory
        )
    dataset = SkipUnreadable(dataset)
    if dist_eval and env.distributed:
        sampler = RankSplitSampler(len(dataset), env.rank, env.world_size)
    else:
        sampler = torch.utils.data.SequentialSampler(dataset)
    return make_loader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate_readable,
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: DataLoader, env: DistEnv, precision: Precision, split: bool
) -> dict[str, float]:
    """Returns {'acc1', 'acc5', 'loss', 'n'}; accuracies in percent, as the official logs them.
    ``split``: each rank evaluated its part of the rank split (the sums are all-reduced)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=env.device)  # loss, correct1, correct5, n
    for batch in loader:
        if batch is None:  # every image of the batch unreadable
            continue
        images, targets = batch
        images = images.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        with precision.autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices  # (N, k)
        hit = top.eq(targets[:, None])
        sums += torch.stack(
            [
                F.cross_entropy(logits, targets, reduction="sum").double(),
                hit[:, :1].any(dim=1).sum().double(),
                hit.any(dim=1).sum().double(),
                torch.tensor(float(targets.shape[0]), dtype=torch.float64, device=env.device),
            ]
        )
    if split:
        all_reduce_sum(sums)
    loss, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {"acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n, "loss": loss / n, "n": int(n)}
