"""Image folders: ImageNet-style class folders, or a flat folder of unlabeled images."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import MaekitError


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMG_EXTENSIONS


class UnreadableImage(Exception):
    """A file that cannot be decoded as an image (truncated, corrupt, empty, not an image)."""


def load_rgb(path: str) -> Image.Image:
    """Open any PIL-readable image as RGB (grayscale, palette, RGBA, CMYK, 16-bit converted).

    Raises :class:`UnreadableImage` (naming the file) when it cannot be decoded, so a training
    loop can skip it; errors opening the file itself (permissions, missing) propagate as is.
    """
    with open(path, "rb") as f:
        return decode_rgb(f, path)


def decode_rgb(f: BinaryIO, name: str) -> Image.Image:
    """:func:`load_rgb` for an open binary file (e.g. a tar member); ``name`` labels errors."""
    try:
        img = Image.open(f)
        img.load()  # decodes everything: a truncated file fails here, not in a transform
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{name}: {e}") from e
    if (
        img.mode.startswith("I;16") or img.mode == "I"
    ):  # 16-bit grayscale: scale to 8 bits, don't clip
        arr = np.asarray(img).astype(np.float64) / 257.0
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    return img.convert("RGB")


class FlatImageFolder(torch.utils.data.Dataset):
    """Every image directly inside ``root`` (sorted), label 0: for label-free pre-training."""

    classes = ("unlabeled",)

    def __init__(self, root: str | Path, transform=None) -> None:
        self.samples = sorted(str(p) for p in Path(root).iterdir() if _is_image(p))
        self.targets = [0] * len(self.samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        img = load_rgb(self.samples[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, 0


def image_folder(root: str | Path, transform=None) -> torch.utils.data.Dataset:
    """Class sub-folders -> torchvision ImageFolder; images directly in ``root`` -> flat, unlabeled."""
    root = Path(root)
    if not root.is_dir():
        raise MaekitError(
            f"data folder {root} does not exist; pass --data_path DIR (or 'fashion-mnist')"
        )
    if any(_is_image(p) for p in root.iterdir()):
        return FlatImageFolder(root, transform)
    try:
        return ImageFolder(str(root), transform=transform, loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images inside them
        raise MaekitError(
            f"no images found in {root} (looked for {', '.join(sorted(IMG_EXTENSIONS))} files directly "
            "inside it or in class sub-folders); check --data_path"
        ) from e
