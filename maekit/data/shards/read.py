"""The samples of one shard, read from a local file or a URL as raw (undecoded) bytes."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ...errors import MaekitError
from .format import IMAGE_EXTS, MANIFEST


def is_url(path: str) -> bool:
    return "://" in path


def open_binary(path: str) -> BinaryIO:
    """A local file or (through fsspec) a URL, opened for binary reading."""
    if not is_url(path):
        return open(path, "rb")
    import fsspec

    try:
        return fsspec.open(path, "rb").open()
    except ImportError as e:
        raise MaekitError(f"cannot read {path}: {e}") from e


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset naming: ``dir/key.ext.more`` -> (``dir/key``, ``ext.more``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


@dataclass(frozen=True)
class Record:
    """One sample read from a shard: the image file's bytes, not decoded."""

    index: int  # position in the unpermuted stream of the split (seeds the augmentation)
    key: str
    ext: str
    data: bytes
    label: int | None
    shard: str


def read_samples(
    path: str, start: int = 0, stop: int | None = None, images: bool = True
) -> Iterator[tuple[int, str, str, bytes, bytes | None]]:
    """(index in shard, key, image ext, image bytes, .cls bytes or None) of the samples
    ``start <= index < stop`` of a shard, in file order. A sample is a key with an image member.
    Members of earlier samples are skipped unread (local files seek past them; URLs are read
    as a stream); reading stops at ``stop``. ``images=False`` reads only the labels."""
    mode = "r|" if is_url(path) else "r:"
    try:
        with open_binary(path) as f, tarfile.open(fileobj=f, mode=mode) as tar:
            index, key, ext, data, cls = 0, None, "", b"", None
            for m in tar:
                if not m.isfile():
                    continue
                k, e = _split_name(m.name)
                if k != key:
                    if ext:  # the previous key had an image: it was sample ``index``
                        if index >= start:
                            yield index, key, ext, data, cls
                        index += 1
                        if stop is not None and index >= stop:
                            return
                    key, ext, data, cls = k, "", b"", None
                wanted = index >= start
                if e in IMAGE_EXTS and not ext:
                    ext = e
                    data = tar.extractfile(m).read() if wanted and images else b""
                elif e == "cls" and wanted:
                    cls = tar.extractfile(m).read()
            if ext and index >= start and (stop is None or index < stop):
                yield index, key, ext, data, cls
    except FileNotFoundError as e:
        raise MaekitError(f"shard {path} not found; check --data_path") from e
    except (tarfile.TarError, EOFError, OSError) as e:
        raise MaekitError(
            f"shard {path} is not a readable tar file ({e}); re-create it with `maekit shard`"
        ) from e


MAX_CLASSES = 1_000_000  # a label at or above this is damage, not a class index


def parse_label(
    cls: bytes | None, shard: str, key: str, num_classes: int | None = None
) -> int | None:
    """The class index in a ``.cls`` member: 0 <= label < ``num_classes`` (the manifest's
    classes, when known) and below :data:`MAX_CLASSES`."""
    if cls is None:
        return None
    try:
        text = cls.decode("ascii").strip()
        if len(text) > 12:  # int() of a huge digit string is slow and never a class index
            raise ValueError(text)
        label = int(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise MaekitError(
            f"{shard}: {key}.cls is not a class index ({cls[:20]!r}); re-create the "
            "shards with `maekit shard`"
        ) from e
    top = min(num_classes, MAX_CLASSES) if num_classes else MAX_CLASSES
    if not 0 <= label < top:
        known = f"the {num_classes} classes of its {MANIFEST}" if num_classes else "a class index"
        raise MaekitError(
            f"{shard}: {key}.cls holds {label}, outside 0..{top - 1} ({known}); re-create "
            "the shards with `maekit shard`"
        )
    return label


def scan_shard(path: str) -> tuple[int, int]:
    """(samples, largest class index or -1) of a local shard, from its headers and labels."""
    n, top = 0, -1
    for _, key, _, _, cls in read_samples(path, images=False):
        n += 1
        label = parse_label(cls, path, key)
        top = max(top, -1 if label is None else label)
    return n, top
