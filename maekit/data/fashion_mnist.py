"""Fashion-MNIST, the built-in dataset (idx files, gzipped or not).

60k train / 10k test grayscale 28x28 images in 10 classes. Images are returned as
3-channel PIL images so every transform and model treats them like RGB data.

Where the files are looked for, first match wins (:func:`search_dirs`):
``$MAEKIT_FASHION_MNIST`` (the idx files themselves, or a torchvision root holding
``FashionMNIST/raw/``), the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), then torchvision's layout ``ROOT/FashionMNIST/raw/``
under ``./data`` and under the download root ``~/.cache/maekit`` (``$XDG_CACHE_HOME/maekit``).
``--download`` (:func:`download`) fetches them there with torchvision when a network exists.
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

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path(os.environ.get("MAEKIT_FASHION_MNIST", str(DEBIAN_ROOT)))
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
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


def download_root() -> Path:
    """Where ``--download`` puts the files: ``$MAEKIT_FASHION_MNIST`` if set, else
    ``$XDG_CACHE_HOME/maekit`` (``~/.cache/maekit``); torchvision adds ``FashionMNIST/raw/``."""
    env = os.environ.get("MAEKIT_FASHION_MNIST")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "maekit"


def search_dirs() -> list[Path]:
    """Folders that may hold the idx files, in the order they are tried (read at call time, so
    setting MAEKIT_FASHION_MNIST after import works)."""
    dirs: list[Path] = []
    env = os.environ.get("MAEKIT_FASHION_MNIST")
    if env:
        dirs += [Path(env).expanduser(), Path(env).expanduser() / "FashionMNIST" / "raw"]
    dirs.append(DEBIAN_ROOT)
    for root in (Path("data"), download_root()):
        dirs.append(root / "FashionMNIST" / "raw")
    return list(dict.fromkeys(dirs))


def find_root(split: str = "train") -> Path:
    """The first folder of :func:`search_dirs` holding ``split``'s two idx files."""
    for folder in search_dirs():
        if all(_stem_path(folder, stem) is not None for stem in _FILES[split]):
            return folder
    raise MaekitError(
        f"Fashion-MNIST ({split}) not found in {', '.join(map(str, search_dirs()))}; add "
        "--download to fetch it with torchvision, or `apt-get install dataset-fashion-mnist`, "
        "or set MAEKIT_FASHION_MNIST to the folder holding its idx files"
    )


def _stem_path(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _find(root: Path, stem: str) -> Path:
    found = _stem_path(root, stem)
    if found is None:
        raise MaekitError(
            f"Fashion-MNIST file {stem}(.gz) not found in {root}; install it with "
            "`apt-get install dataset-fashion-mnist` (or set MAEKIT_FASHION_MNIST to its folder)"
        )
    return found


def download(root: Path | None = None) -> Path:
    """Fetch both splits with torchvision into ``root/FashionMNIST/raw/`` (default
    :func:`download_root`) unless :func:`find_root` already finds them; return the folder.

    Used by ``--download``; maekit never downloads anything otherwise.
    """
    if root is None:
        try:
            found = [find_root(split) for split in _FILES]
            return found[0]
        except MaekitError:  # a split is missing somewhere: fetch both
            root = download_root()
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    try:
        for train in (True, False):
            TorchvisionFashionMNIST(str(root), train=train, download=True)
    except Exception as e:  # URLError, HTTPError, RuntimeError (checksum), OSError (disk)
        reason = " ".join(str(e).split())[:300]  # torchvision's message spans several lines
        raise MaekitError(
            f"could not download Fashion-MNIST into {root} ({type(e).__name__}: {reason}); without a "
            "network, copy its four idx files to that folder's FashionMNIST/raw/ or "
            "`apt-get install dataset-fashion-mnist`"
        ) from e
    return root / "FashionMNIST" / "raw"


class FashionMNIST(torch.utils.data.Dataset):
    classes = CLASSES

    def __init__(
        self, split: str = "train", transform=None, root: str | Path | None = None
    ) -> None:
        if split not in _FILES:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        root = Path(root) if root is not None else find_root(split)
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
