"""Image folders: ImageNet-style class folders, or a flat folder of unlabeled images."""

from __future__ import annotations

import errno
import functools
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import MaekitError

DEFAULT_MAX_PIXELS = 120_000_000  # --max_pixels: ~360 MB decoded; covers 108 MP camera files


def _is_image(p: Path) -> bool:
    """An image by its name. FIFOs, sockets, devices and dangling links with an image name are
    kept here and refused (counted as unreadable) when read, as torchvision's ImageFolder lists
    them too; only directories are left out."""
    return p.suffix.lower() in IMG_EXTENSIONS and not p.is_dir()


class UnreadableImage(Exception):
    """A file that cannot be decoded as an image (truncated, corrupt, empty, not an image,
    not a regular file, over --max_pixels)."""


# Errors of opening that belong to the file itself (a dangling link, a socket, permissions).
_BAD_FILE_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ENOENT", "ENXIO", "ELOOP", "EACCES", "EPERM", "EISDIR", "ENOTDIR")
    if hasattr(errno, n)
)


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (symlinks followed).

    A FIFO would block ``open`` until a writer appears (forever) and a device can block a read:
    the file is opened non-blocking and checked with fstat before anything is read from it, so
    no check-then-open race remains. Raises :class:`UnreadableImage` for anything else, and for
    a file that cannot be opened (dangling link, permissions, vanished); resource errors
    (EMFILE, ENOMEM) and I/O errors propagate: they are not a bad image to skip."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno not in _BAD_FILE_ERRNOS:  # EMFILE, ENOMEM, EIO...: the machine, not the file
            raise
        raise UnreadableImage(f"{path}: {e.strerror or e}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableImage(f"{path}: not a regular file ({_kind(mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a file"


def load_rgb(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open any PIL-readable image as RGB (grayscale, palette, RGBA, CMYK, 16-bit converted).

    Raises :class:`UnreadableImage` (naming the file) when it cannot be opened or decoded, is
    not a regular file, or has more than ``max_pixels`` pixels, so a training loop can skip it.
    """
    with open_regular(path) as f:
        return decode_rgb(f, path, max_pixels)


def decode_rgb(f: BinaryIO, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`load_rgb` for an open binary file (e.g. a tar member); ``name`` labels errors.
    The size is read from the header and checked against ``max_pixels`` before decoding."""
    try:
        with warnings.catch_warnings():  # our cap replaces PIL's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(f)
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise UnreadableImage(
                    f"{name}: {img.width}x{img.height} = {img.width * img.height} "
                    f"pixels, more than --max_pixels {max_pixels}"
                )
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

    def __init__(
        self, root: str | Path, transform=None, max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> None:
        self.samples = sorted(str(p) for p in Path(root).iterdir() if _is_image(p))
        self.targets = [0] * len(self.samples)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        img = load_rgb(self.samples[i], self.max_pixels)
        if self.transform is not None:
            img = self.transform(img)
        return img, 0


def image_folder(
    root: str | Path, transform=None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> torch.utils.data.Dataset:
    """Class sub-folders -> torchvision ImageFolder; images directly in ``root`` -> flat, unlabeled."""
    root = Path(root)
    if not root.is_dir():
        raise MaekitError(
            f"data folder {root} does not exist; pass --data_path DIR (or 'fashion-mnist')"
        )
    if any(_is_image(p) for p in root.iterdir()):
        return FlatImageFolder(root, transform, max_pixels)
    loader = functools.partial(load_rgb, max_pixels=max_pixels)
    try:
        return ImageFolder(str(root), transform=transform, loader=loader)
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images inside them
        empty = _empty_class_folders(root)
        if empty and len(empty) < sum(1 for p in root.iterdir() if p.is_dir()):
            more = f" ({len(empty) - 1} more class folders are empty)" if len(empty) > 1 else ""
            raise MaekitError(
                f"class folder {empty[0]} has no images{more}; add "
                f"{', '.join(sorted(IMG_EXTENSIONS))} files to it or remove it"
            ) from e
        raise MaekitError(
            f"no images found in {root} (looked for {', '.join(sorted(IMG_EXTENSIONS))} files directly "
            "inside it or in class sub-folders); check --data_path"
        ) from e


def _empty_class_folders(root: Path) -> list[Path]:
    """Class folders without a file of an image type at any depth (ImageFolder's rule)."""
    empty = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in d.rglob("*") if not f.is_dir()):
            empty.append(d)
    return empty
