"""Image folders: ImageNet-style class folders, or a flat folder of unlabeled images."""

from __future__ import annotations

import errno
import functools
import os
import stat
import sys
import warnings
from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import MaekitError

DEFAULT_MAX_PIXELS = 120_000_000  # --max_pixels: ~360 MB decoded; covers 108 MP camera files
# The files a dataset lists: torchvision's image types, and numpy arrays (--pixels full).
IMAGE_SUFFIXES = (*IMG_EXTENSIONS, ".npy")


def _is_image(p: Path) -> bool:
    """An image by its name. FIFOs, sockets, devices and dangling links with an image name are
    kept here and refused (counted as unreadable) when read, as torchvision's ImageFolder lists
    them too; only directories are left out."""
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()


class EightBitOnly(MaekitError):
    """A file holding more than 8 bits met by the 8-bit path: refused, never rounded."""


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
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # our cap replaces PIL's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if max_pixels is not None and pil_limit is not None and max_pixels > pil_limit:
                # PIL refuses images over twice its own limit in open(), before our check:
                # a --max_pixels above it would have no effect.
                Image.MAX_IMAGE_PIXELS = max_pixels
            img = Image.open(f)
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise UnreadableImage(
                    f"{name}: {img.width}x{img.height} = {img.width * img.height} "
                    f"pixels, more than --max_pixels {max_pixels}"
                )
            img.load()  # decodes everything: a truncated file fails here, not in a transform
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{name}: {e}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    if img.mode == "F" or img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit or float pixels: rounding them to 8 bits (as this path once did, / 257) or
        # clipping floats to black would change the data without a word
        kind = "float" if img.mode == "F" else "16/32-bit integer"
        raise EightBitOnly(
            f"{name}: {kind} pixels (Pillow mode {img.mode}), but this run reads 8-bit images "
            "(--pixels 8bit); pass --pixels full to read them at their precision"
        )
    return img.convert("RGB")


class Skipped:
    """What a dataset walk left out, by reason, with the first example of each: said in one
    warning, never dropped silently."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.example: dict[str, str] = {}

    def add(self, reason: str, what: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.example.setdefault(reason, what)

    def warn(self, root: str | Path) -> None:
        if not self.counts:
            return
        parts = [
            f"{n} {reason} (e.g. {self.example[reason]})"
            for reason, n in sorted(self.counts.items())
        ]
        print(f"maekit: warning: {root}: left out {'; '.join(parts)}", file=sys.stderr, flush=True)


def _inode(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def walk_images(
    top: str | Path, skipped: Skipped, outside: frozenset[tuple[int, int]] = frozenset()
) -> list[str]:
    """The image files under ``top`` at any depth, in torchvision ImageFolder's order (folders
    sorted by path, files sorted in each), so sample indices match earlier versions.

    Symlinked folders are followed, but a folder already visited (a symlink loop, or a second
    link to the same folder) is walked once, and the folders ``outside`` (the dataset root,
    the other class folders: a link there would copy another class's images into this one)
    never; folders that cannot be read and files that are not of an image type are counted in
    ``skipped`` (hidden dot-files are ignored)."""
    seen: set[tuple[int, int]] = set(outside)
    folders: list[tuple[str, list[str]]] = []

    def unreadable(e: OSError) -> None:
        skipped.add("unreadable folders", f"{e.filename}: {e.strerror or e}")

    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=unreadable):
        try:
            st = os.stat(dirpath)
        except OSError as e:
            unreadable(e)
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            skipped.add("folders seen before (a symlink loop)", dirpath)
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()  # the first of two links to one folder is the one kept
        images = []
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                images.append(os.path.join(dirpath, name))
            else:
                skipped.add(f"files not of an image type ({suffix or 'no suffix'})", name)
        folders.append((dirpath, images))
    return [path for _, images in sorted(folders) for path in images]


class _ImageFolder(ImageFolder):
    """torchvision's ImageFolder over :func:`walk_images` (no symlink loop, skips counted)."""

    def make_dataset(
        self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False
    ):
        skipped = Skipped()
        samples = []
        tops = {name: _inode(Path(directory) / name) for name in class_to_idx}
        for name in sorted(class_to_idx):
            outside = {_inode(directory), *(v for k, v in tops.items() if k != name)}
            for path in walk_images(
                Path(directory) / name, skipped, frozenset(outside - {None, tops[name]})
            ):
                samples.append((path, class_to_idx[name]))
        unreadable = [
            name
            for name in class_to_idx
            if not os.access(Path(directory) / name, os.R_OK | os.X_OK)
        ]
        if unreadable:
            raise MaekitError(
                f"class folder {Path(directory) / unreadable[0]} cannot be read (permissions); "
                "make it readable or remove it"
            )
        empty = set(class_to_idx) - {
            Path(path).relative_to(directory).parts[0] for path, _ in samples
        }
        if empty and not allow_empty:  # torchvision's rule: every class folder holds an image
            raise FileNotFoundError(f"no images in class folders {sorted(empty)}")
        skipped.warn(directory)
        return samples


class FlatImageFolder(torch.utils.data.Dataset):
    """Every image directly inside ``root`` (sorted), label 0: for label-free pre-training."""

    classes = ("unlabeled",)

    def __init__(
        self,
        root: str | Path,
        transform=None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        loader=None,
    ) -> None:
        skipped = Skipped()
        self.samples = []
        for p in sorted(Path(root).iterdir()):
            if _is_image(p):
                self.samples.append(str(p))
            elif not p.name.startswith(".") and not p.is_dir():
                skipped.add(
                    f"files not of an image type ({p.suffix.lower() or 'no suffix'})", p.name
                )
        skipped.warn(root)
        self.targets = [0] * len(self.samples)
        self.transform = transform
        self.loader = loader or functools.partial(load_rgb, max_pixels=max_pixels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        img = self.loader(self.samples[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, 0


def image_folder(
    root: str | Path,
    transform=None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    loader=None,
) -> torch.utils.data.Dataset:
    """Class sub-folders -> torchvision ImageFolder; images directly in ``root`` -> flat, unlabeled.
    ``loader``: path -> image (a :class:`~.pixels.PixelReader`); default the 8-bit RGB one."""
    root = Path(root)
    if not root.is_dir():
        raise MaekitError(
            f"data folder {root} does not exist; pass --data_path DIR (or 'fashion-mnist')"
        )
    if any(_is_image(p) for p in root.iterdir()):
        return FlatImageFolder(root, transform, max_pixels, loader)
    loader = loader or functools.partial(load_rgb, max_pixels=max_pixels)
    try:
        return _ImageFolder(str(root), transform=transform, loader=loader)
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images inside them
        empty = _empty_class_folders(root)
        if empty and len(empty) < sum(1 for p in root.iterdir() if p.is_dir()):
            more = f" ({len(empty) - 1} more class folders are empty)" if len(empty) > 1 else ""
            raise MaekitError(
                f"class folder {empty[0]} has no images{more}; add "
                f"{', '.join(sorted(IMAGE_SUFFIXES))} files to it or remove it"
            ) from e
        raise MaekitError(
            f"no images found in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files directly "
            "inside it or in class sub-folders); check --data_path"
        ) from e


def _empty_class_folders(root: Path) -> list[Path]:
    """Class folders without a file of an image type at any depth (ImageFolder's rule)."""
    empty = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.rglob("*") if not f.is_dir()):
            empty.append(d)
    return empty
