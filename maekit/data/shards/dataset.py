"""A split stored as tar shards, as the phases see a dataset (length, classes)."""

from __future__ import annotations

import itertools

from ...errors import MaekitError
from ..folder import DEFAULT_MAX_PIXELS
from .locate import ShardList, resolve_shards


class ShardDataset:
    """A split stored as tar shards: what ``build_dataset`` returns for a shard ``--data_path``.

    It has the length and ``classes`` the phases read; samples are streamed by
    :class:`~.stream.ShardLoader` / :func:`~.stream.shard_eval_loader`, not indexed.
    """

    streamed = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # images with more are skipped as unreadable

    def __init__(self, shards: ShardList, split: str, transform) -> None:
        self.shards = shards
        self.split = split
        self.transform = transform
        self.classes = list(shards.classes)
        # Where each shard's samples start in the unpermuted stream (the augmentation seed index).
        self.offsets = tuple(itertools.accumulate(shards.counts, initial=0))[:-1]

    def __len__(self) -> int:
        return sum(self.shards.counts)

    def __getitem__(self, i: int):
        raise MaekitError(
            f"{self.shards.source} is tar shards, read as a stream; this command needs "
            "an image folder"
        )


def load_shard_dataset(
    data_path: str, split: str, transform, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> ShardDataset:
    ds = ShardDataset(resolve_shards(data_path, split), split, transform)
    ds.max_pixels = max_pixels
    if len(ds) == 0:
        raise MaekitError(f"the {split} shards of {data_path} hold no images; check --data_path")
    return ds
