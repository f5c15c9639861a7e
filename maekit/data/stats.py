"""``maekit stats``: per-channel mean and std of a dataset, for ``--mean`` / ``--std``.

The images are read exactly as training reads them (same decoder, same channel conversion,
pixels scaled to [0, 1] by ToTensor) but not resized or augmented, so the statistics are the
data's own. A fixed random sample (``--max_images``, ``--seed``) bounds the time on large
folders; sums are accumulated in float64 over every pixel of the sample (population std, as
numpy's default).
"""

from __future__ import annotations

import torch
from torch.utils.data import Subset
from torchvision import transforms as T

from ..config import StatsConfig
from ..errors import MaekitError
from .robust import SkipUnreadable
from .workers import make_loader


class _ToChannels:
    """PIL image -> the mode training feeds (one channel: grayscale, else RGB)."""

    def __init__(self, in_chans: int) -> None:
        self.mode = "L" if in_chans == 1 else "RGB"

    def __call__(self, img):
        return img if img.mode == self.mode else img.convert(self.mode)


def _sums(batch: list) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """(sum, sum of squares) per channel in float64, and the pixel count, of one image (None:
    it could not be read, and is left out)."""
    (sample,) = batch
    if sample is None:
        return None
    img, _ = sample
    x = img.double().flatten(1)  # (C, H*W)
    return x.sum(dim=1), (x * x).sum(dim=1), x.shape[1]


def channel_stats(dataset, num_workers: int = 0) -> tuple[list[float], list[float], int, int]:
    """(mean, std, pixels per channel, images read) over every pixel of ``dataset``'s
    (C, H, W) images. Images that cannot be read are left out, each named in a warning."""
    loader = make_loader(
        SkipUnreadable(dataset), batch_size=1, num_workers=num_workers, collate_fn=_sums
    )
    total = squares = None
    count = images = 0
    for sums in loader:
        if sums is None:
            continue
        s, sq, n = sums
        images += 1
        total = s if total is None else total + s
        squares = sq if squares is None else squares + sq
        count += n
    if count == 0:
        raise MaekitError("no pixels to measure: the dataset is empty")
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0)
    return mean.tolist(), var.sqrt().tolist(), count, images


def run(cfg: StatsConfig) -> tuple[list[float], list[float]]:
    """Print the statistics and the flags to paste; return (mean, std)."""
    from . import build_dataset
    from .sampling import subset_indices
    from .shards.locate import refuse_shards
    from .workers import loader_workers

    cfg.validate()
    refuse_shards(cfg.data_path, "maekit stats")
    transform = T.Compose([_ToChannels(cfg.in_chans), T.ToTensor()])
    dataset = build_dataset(cfg.data_path, "train", transform)
    picked = subset_indices(len(dataset), cfg.max_images, cfg.seed)
    workers = loader_workers(cfg.num_workers)
    mean, std, pixels, read = channel_stats(Subset(dataset, picked), workers)
    left_out = f" ({len(picked) - read} unreadable left out)" if read < len(picked) else ""
    print(
        f"{read} of {len(dataset)} images of {cfg.data_path} (seed {cfg.seed}), "
        f"{pixels} pixels per channel{left_out}, as read for --in_chans {cfg.in_chans}:",
        flush=True,
    )
    fmt = lambda values: " ".join(f"{v:.4f}" for v in values)  # noqa: E731
    print(f"--mean {fmt(mean)} --std {fmt(std)}")
    return mean, std
