"""Datasets and loaders: Fashion-MNIST (built in) and image folders."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MaekitError, counted
from .fashion_mnist import FashionMNIST
from .folder import DEFAULT_MAX_PIXELS, FlatImageFolder, _is_image, image_folder
from .robust import SeededSamples
from .sampling import EpochBatches, EpochLoader, ResumableSampler, subset_indices
from .shards.dataset import ShardDataset, load_shard_dataset
from .shards.format import MANIFEST
from .shards.locate import is_shard_path
from .shards.stream import ShardLoader
from .workers import make_loader

BUILTIN = ("fashion-mnist",)
BUILTIN_ALIASES = ("fashion-mnist", "fashion_mnist", "fmnist")


def build_dataset(
    data_path: str,
    split: str,
    transform,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    reader=None,
) -> torch.utils.data.Dataset:
    """``split`` is 'train' or 'val'. A folder with ``{split}/`` uses it; for 'train' a folder
    without ``train/`` is itself the training set (class folders or plain images). Tar shards
    (see :mod:`maekit.data.shards`) give a :class:`~.shards.dataset.ShardDataset`. Images over
    ``max_pixels`` are skipped as unreadable (--max_pixels). ``reader``: how a folder's files
    are read (a :class:`~.pixels.PixelReader`, e.g. at full precision); default 8-bit RGB."""
    if data_path in BUILTIN or data_path in ("fashion_mnist", "fmnist"):
        return FashionMNIST(split, transform)
    if is_shard_path(data_path):  # tar shards (folder with shards.json, pattern or URL)
        return load_shard_dataset(data_path, split, transform, max_pixels)
    root = Path(data_path)
    if not root.is_dir():
        raise MaekitError(
            f"--data_path {data_path} is not a folder; give an ImageNet-style folder, "
            "a folder of images, or 'fashion-mnist'"
        )
    sub = root / split
    if sub.is_dir():
        root = sub
    elif split != "train":
        raise MaekitError(f"{root} has no {split}/ folder; evaluation needs {sub}")
    _refuse_unfinished_shards(root)
    ds = image_folder(root, transform, max_pixels, reader)
    if len(ds) == 0:
        raise MaekitError(f"no images found in {root}; check --data_path")
    return ds


def _refuse_unfinished_shards(root: Path) -> None:
    """A folder of tar shards without its ``shards.json`` is a ``maekit shard`` that did not
    finish (it writes the manifest last): say so, rather than "no images found"."""
    tars = sorted(root.glob("*.tar"))
    if tars and not any(_is_image(p) for p in root.iterdir()):
        raise MaekitError(
            f"{root} holds {counted(len(tars), 'tar shard')} but no {MANIFEST}: the `maekit shard` "
            "that wrote it did not finish; run it again with --force"
        )


class FixedSubset(torch.utils.data.Dataset):
    """``dataset`` restricted to ``indices``, still reporting its ``classes`` (labels unchanged).

    Not a ``torch.utils.data.Subset``: that one has a batched ``__getitems__``, which
    :class:`SeededSamples` would forward with its ``(epoch, index)`` keys.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def limit_train_set(
    dataset: torch.utils.data.Dataset, max_images: int | None, seed: int
) -> torch.utils.data.Dataset:
    """``--max_train_images``: a fixed random subset (drawn from ``seed``, in dataset order) of
    ``max_images`` images, or ``dataset`` itself when None or not smaller."""
    if max_images is None or max_images >= len(dataset):
        return dataset
    if isinstance(dataset, ShardDataset):
        raise MaekitError(
            "--max_train_images picks images from folders and fashion-mnist; tar shards are "
            "streamed whole: drop the flag (or write a smaller set of shards)"
        )
    return FixedSubset(dataset, subset_indices(len(dataset), max_images, seed))


def build_train_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int,
    pin_memory: bool,
    collate_fn=None,
) -> EpochLoader | ShardLoader:
    """Distributed, shuffled sampler (also for one process, like the official) with drop_last.

    The sampler can start an epoch part-way (mid-epoch resume) and every sample is augmented
    from its own seed with unreadable files skipped (:class:`SeededSamples`); batches are
    (samples, targets, skipped-file counts). A :class:`ShardDataset` gets a :class:`ShardLoader`
    (same batches and sampler calls, streamed). The DataLoader is read through an
    :class:`~maekit.data.sampling.EpochLoader`: its workers keep prefetching across epochs.
    """
    if len(dataset) < batch_size * world_size:
        raise MaekitError(
            f"the training set has {counted(len(dataset), 'image')}, fewer than one global "
            f"batch ({batch_size} x {counted(world_size, 'process', 'processes')}); lower "
            "--batch_size"
        )
    if isinstance(dataset, ShardDataset):
        if collate_fn is not None:
            raise MaekitError("--gpu_decode reads image folders, not tar shards; drop --gpu_decode")
        return ShardLoader(dataset, batch_size, rank, world_size, seed, num_workers, pin_memory)
    raise_open_file_limit()
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
    loader = make_loader(
        SeededSamples(dataset, seed),
        batch_sampler=EpochBatches(sampler, batch_size),  # drop_last, epoch after epoch
        num_workers=num_workers,
        seed=seed,
        pin_memory=pin_memory,
        persistent=True,  # workers keep prefetching across epochs
        collate_fn=collate_fn,  # None: torch's default (stacks samples)
    )
    return EpochLoader(loader, sampler)


def raise_open_file_limit() -> None:
    """Raise the soft open-file limit to the hard one where allowed (Linux/macOS): each batch
    in flight between a worker and the main process holds a shared-memory file open, and a
    distribution's default soft limit (1024) is low for many workers."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = max(soft, 65536) if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # no resource module, or not allowed: keep it
        pass


__all__ = [
    "FashionMNIST",
    "FixedSubset",
    "FlatImageFolder",
    "ShardDataset",
    "build_dataset",
    "build_train_loader",
    "image_folder",
    "limit_train_set",
]
