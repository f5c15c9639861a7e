"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx files, gzipped).

60k train / 10k test grayscale 28x28 images in 10 classes. Images are returned as
3-channel PIL images so every transform and model treats them like RGB data.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import MaekitError

DEFAULT_ROOT = Path(os.environ.get("MAEKIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally .gz): magic (0, 0, dtype=0x08 uint8, ndim), big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as e:
        raise MaekitError(
            f"{path} is damaged or truncated ({e}); reinstall dataset-fashion-mnist"
        ) from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise MaekitError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise MaekitError(f"{path} is truncated: its header is cut short")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise MaekitError(
            f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}"
        )
    return arr.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise MaekitError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}; install it with "
        "`apt-get install dataset-fashion-mnist` (or set MAEKIT_FASHION_MNIST to its folder)"
    )


class FashionMNIST(torch.utils.data.Dataset):
    classes = CLASSES

    def __init__(
        self, split: str = "train", transform=None, root: str | Path | None = None
    ) -> None:
        if split not in _FILES:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        root = Path(root) if root is not None else DEFAULT_ROOT
        images, labels = (_find(root, s) for s in _FILES[split])
        self.images = read_idx(images)  # (N, 28, 28) uint8
        self.targets = read_idx(labels).astype(np.int64)  # (N,)
        if len(self.images) != len(self.targets):
            raise MaekitError(
                f"Fashion-MNIST {split}: {len(self.images)} images but {len(self.targets)} labels"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[i])
