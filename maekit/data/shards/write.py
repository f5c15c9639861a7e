"""``maekit shard SRC DST``: an image folder written as tar shards (see :mod:`.format`)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ...config import ShardConfig
from ...errors import MaekitError, counted
from ...files import atomic_write
from ..folder import FlatImageFolder, UnreadableImage, image_folder, open_regular
from .format import FORMAT, MANIFEST, SPLITS


def _shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def _existing_shards(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = sorted(folder.glob("shard-*.tar"))
    return found + [folder / MANIFEST] if (folder / MANIFEST).is_file() else found


def _source_split(root: Path) -> tuple[list[tuple[Path, int | None]], list[str], list[Path]]:
    """(files with class index or None, class names, entries skipped) of one image folder, as
    maekit reads it. Only regular files (symlinks followed) are data: FIFOs, sockets, devices
    and dangling links with an image name are skipped (a FIFO would block the read forever)."""
    ds = image_folder(root)
    if isinstance(ds, FlatImageFolder):
        found, classes = [(Path(p), None) for p in ds.samples], []
    else:
        found, classes = [(Path(p), int(t)) for p, t in ds.samples], list(ds.classes)
    items = [(p, t) for p, t in found if _is_regular(p)]
    return items, classes, [p for p, _ in found if not _is_regular(p)]


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # dangling link, vanished
        return False


def _write_atomic(path: Path, write) -> int:
    """Write through ``write(file)`` all or nothing (:func:`atomic_write`); returns the size."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_write(path, to_file)
    return path.stat().st_size


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_split(
    items: list[tuple[Path, int | None]],
    classes: list[str],
    out: Path,
    shard_size: int,
    seed: int,
) -> tuple[int, int]:
    """One split's shards (sample order shuffled once from ``seed``), then its manifest.
    Returns (shards, bytes)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # --force: no manifest describes a half-done split
    order = np.random.default_rng(seed).permutation(len(items))
    width = max(9, len(str(len(items) - 1)))
    entries, total_bytes = [], 0
    for s, first in enumerate(range(0, len(items), shard_size)):
        chunk = order[first : first + shard_size]

        def write(f: BinaryIO, chunk=chunk, first=first) -> None:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for pos, i in enumerate(chunk, start=first):
                    path, label = items[i]
                    try:
                        with open_regular(path) as fh:
                            data, mtime = fh.read(), int(os.fstat(fh.fileno()).st_mtime)
                    except (OSError, UnreadableImage) as e:
                        raise MaekitError(
                            f"cannot read {path} ({e}); fix its permissions or remove it from SRC"
                        ) from e
                    key = f"{pos:0{width}d}"
                    _add_member(tar, f"{key}.{path.suffix.lower().lstrip('.')}", data, mtime)
                    if label is not None:
                        _add_member(tar, f"{key}.cls", str(label).encode("ascii"), mtime)

        total_bytes += _write_atomic(out / _shard_name(s), write)
        entries.append({"name": _shard_name(s), "count": len(chunk)})
    for stale in out.glob("shard-*.tar"):  # --force over a larger earlier run
        if stale.name not in {e["name"] for e in entries}:
            stale.unlink()
    manifest = {"format": FORMAT, "classes": classes, "shards": entries, "num_samples": len(items)}
    text = (json.dumps(manifest, indent=1) + "\n").encode()
    _write_atomic(out / MANIFEST, lambda f: f.write(text))
    return len(entries), total_bytes


def write_shards(
    src: str | Path, dst: str | Path, shard_size: int, seed: int = 0, force: bool = False
) -> list[str]:
    """Write the image folder ``src`` as tar shards under ``dst/<split>/``; one summary line
    per split. ``src/train`` and ``src/val`` are written when present, else ``src`` as train."""
    src, dst = Path(src), Path(dst)
    if shard_size <= 0:
        raise MaekitError(f"--shard_size must be a positive number of samples, got {shard_size}")
    if not src.is_dir():
        raise MaekitError(
            f"SRC {src} is not a folder; give an image folder (train/ and val/ class "
            "folders, class folders, or plain images)"
        )
    if dst.exists() and not dst.is_dir():
        raise MaekitError(f"DST {dst} is a file; give a folder for the shards")
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise MaekitError(f"DST {dst} is inside SRC {src}; write the shards to a folder outside it")
    splits = [(name, src / name) for name in SPLITS if (src / name).is_dir()] or [("train", src)]
    plans = []
    for split, root in splits:  # read every split and check DST before writing anything
        items, classes, skipped = _source_split(root)
        if not items:
            raise MaekitError(f"no images found in {root}; check SRC")
        for p in skipped[:10]:
            print(
                f"maekit: skipping {p}: not a regular file (FIFO, socket, device or dangling link)",
                file=sys.stderr,
                flush=True,
            )
        existing = _existing_shards(dst / split)
        if existing and not force:
            raise MaekitError(
                f"{existing[0].parent} already holds shards ({existing[0].name}); "
                "pass --force to replace them, or choose another DST"
            )
        plans.append((split, items, classes, skipped))
    lines = []
    for split, items, classes, skipped in plans:
        n_shards, size = _write_split(items, classes, dst / split, shard_size, seed)
        labels = counted(len(classes), "class", "classes") if classes else "no labels"
        note = f"; {len(skipped)} unreadable entries skipped (not regular files)" if skipped else ""
        lines.append(
            f"{split}: {counted(len(items), 'sample')} ({labels}) in "
            f"{counted(n_shards, 'shard')} of up to "
            f"{shard_size}, {size / 1e6:.1f} MB -> {dst / split}{note}"
        )
    return lines


def run(cfg: ShardConfig) -> list[str]:
    """``maekit shard SRC DST``: print and return the summary lines."""
    cfg.validate()
    lines = write_shards(cfg.src, cfg.dst, cfg.shard_size, cfg.seed, cfg.force)
    for line in lines:
        print(line)
    return lines
