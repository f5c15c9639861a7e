"""``maekit stats``: per-channel mean and std of a dataset, for ``--mean`` / ``--std``, with
the range of the values (min, percentiles, max), for ``--max_value``.

The images are read exactly as training reads them (the same reader, :mod:`.pixels`: 8-bit
through Pillow and ToTensor's / 255, or at full precision divided by the resolved
``--max_value``) but not resized or augmented, so the statistics are the data's own. A fixed
random sample (``--max_images``, ``--seed``) bounds the time on large folders; sums are
accumulated in float64 over every pixel of the sample (population std, as numpy's default).
The percentiles come from a fixed random sample of each image's pixels (``PIXELS_PER_IMAGE``);
min and max from every pixel.
"""

from __future__ import annotations

import torch
from torch.utils.data import Subset
from torchvision import transforms as T

from ..config import StatsConfig
from ..errors import MaekitError, counted
from .robust import SkipUnreadable
from .workers import make_loader

PIXELS_PER_IMAGE = 4096  # per channel, for the percentiles
PERCENTILES = (0.1, 1.0, 50.0, 99.0, 99.9)


class _ToChannels:
    """PIL image -> the mode training feeds (one channel: grayscale, else RGB)."""

    def __init__(self, in_chans: int) -> None:
        self.mode = "L" if in_chans == 1 else "RGB"

    def __call__(self, img):
        return img if img.mode == self.mode else img.convert(self.mode)


class _Measured:
    """One image's sums (float64), min/max and a fixed sample of its pixels, per channel."""

    def __init__(self, x: torch.Tensor, index: int) -> None:
        flat = x.double().flatten(1)  # (C, H*W)
        self.sum, self.squares, self.count = flat.sum(1), (flat * flat).sum(1), flat.shape[1]
        self.min, self.max = flat.min(1).values, flat.max(1).values
        n = flat.shape[1]
        if n > PIXELS_PER_IMAGE:
            g = torch.Generator().manual_seed(index)
            flat = flat[:, torch.randperm(n, generator=g)[:PIXELS_PER_IMAGE]]
        self.sample = flat.float()


def _measure(batch: list) -> _Measured | None:
    """collate_fn: (None: the image could not be read, and is left out)."""
    ((sample, index),) = batch
    if sample is None:
        return None
    return _Measured(sample[0], index)


class _WithIndex(torch.utils.data.Dataset):
    def __init__(self, dataset) -> None:
        self.dataset = SkipUnreadable(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i], i


def channel_stats(dataset, num_workers: int = 0) -> dict:
    """{mean, std, min, max, percentiles: {p: [per channel]}, pixels (per channel), images}
    over ``dataset``'s (C, H, W) images. Images that cannot be read are left out, each named
    in a warning."""
    loader = make_loader(
        _WithIndex(dataset), batch_size=1, num_workers=num_workers, collate_fn=_measure
    )
    total = squares = lo = hi = None
    samples, count, images = [], 0, 0
    for m in loader:
        if m is None:
            continue
        images += 1
        if total is None:
            total, squares, lo, hi = m.sum, m.squares, m.min, m.max
        else:
            total, squares = total + m.sum, squares + m.squares
            lo, hi = torch.minimum(lo, m.min), torch.maximum(hi, m.max)
        samples.append(m.sample)
        count += m.count
    if count == 0:
        raise MaekitError("no pixels to measure: the dataset is empty")
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0)
    pooled = torch.cat(samples, dim=1)
    q = torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64)
    pct = torch.quantile(pooled.double(), q, dim=1)  # (P, C)
    return {
        "mean": mean.tolist(),
        "std": var.sqrt().tolist(),
        "min": lo.tolist(),
        "max": hi.tolist(),
        "percentiles": {p: pct[i].tolist() for i, p in enumerate(PERCENTILES)},
        "pixels": count,
        "images": images,
    }


def run(cfg: StatsConfig) -> tuple[list[float], list[float]]:
    """Print the statistics and the flags to paste; return (mean, std)."""
    from . import build_dataset
    from .pixels import reader_for, resolve_for
    from .sampling import subset_indices
    from .shards.locate import refuse_shards
    from .workers import loader_workers

    cfg.validate()
    refuse_shards(cfg.data_path, "maekit stats")
    cfg, line = resolve_for(cfg)
    if line:
        print(line, flush=True)
    full = cfg.pixels == "full"
    transform = None if full else T.Compose([_ToChannels(cfg.in_chans), T.ToTensor()])
    dataset = build_dataset(cfg.data_path, "train", transform, reader=reader_for(cfg))
    picked = subset_indices(len(dataset), cfg.max_images, cfg.seed)
    workers = loader_workers(cfg.num_workers)
    s = channel_stats(Subset(dataset, picked), workers)
    read = s["images"]
    left_out = f" ({len(picked) - read} unreadable left out)" if read < len(picked) else ""
    print(
        f"{read} of {counted(len(dataset), 'image')} of {cfg.data_path} (seed {cfg.seed}), "
        f"{s['pixels']} pixels per channel{left_out}, as read for --in_chans {cfg.in_chans}:",
        flush=True,
    )
    fmt = lambda values: " ".join(f"{v:.4f}" for v in values)  # noqa: E731
    print(f"--mean {fmt(s['mean'])} --std {fmt(s['std'])}")
    scale = cfg.max_value  # back to the files' own values, to choose --max_value by
    cols = ["min", *(f"p{p:g}" for p in PERCENTILES), "max"]
    print(f"values in the files' units (x {scale:g}), per channel: " + " / ".join(cols))
    for c in range(cfg.in_chans):
        row = [s["min"][c], *(s["percentiles"][p][c] for p in PERCENTILES), s["max"][c]]
        print(f"  channel {c}: " + " ".join(f"{v * scale:.6g}" for v in row))
    top = max(s["max"]) * scale
    if full and cfg.max_value > 1 and top < cfg.max_value / 8:
        print(
            f"hint: the values stay below {top:.6g}, a small part of the 0..{scale:g} scale: "
            f"--max_value {top:.6g} (or the sensor's range, e.g. 4095 for 12 bits) uses it all"
        )
    return s["mean"], s["std"]
