"""Image data as WebDataset tar shards: ``maekit shard`` writes them, ``--data_path`` streams them.

**Format.** ``DST/<split>/shard-000000.tar, ...`` (split = train, val). A sample is the tar
members sharing a key: ``<key>.<ext>`` holds the original image file's bytes (extension of the
source, lower-case) and, when the source has class folders, ``<key>.cls`` holds the class index
in ASCII. Keys are the zero-padded position of the sample in its split. ``shards.json`` beside
the shards lists them with their sample counts and the class names; it is written last.

**--data_path** takes, besides image folders:

- a folder or URL holding ``train/shards.json`` (and ``val/shards.json`` for fine-tuning and
  linear probing), or holding ``shards.json`` itself (the training split);
- a pattern of ``.tar`` files, local or a URL: ``/data/in1k/{split}/shard-{000000..000127}.tar``
  (numeric ranges and ``{a,b}`` lists), globs (``/data/in1k/train/*.tar``); a literal
  ``{split}`` becomes ``train`` or ``val``. Counts come from the ``shards.json`` beside the
  shards; local shards without one are counted once by reading their tar headers.

URLs are opened with fsspec (``file://``, ``http(s)://``, ``s3://``... as installed).

**Epoch semantics** (training). The N samples of the split form one stream: the shards in an
order permuted from (seed, epoch), each shard's samples in file order. Rank r of W takes the
stream positions [r*L, (r+1)*L) with L = ceil(N / W), positions past N wrapping to the start
(as DistributedSampler pads: a few samples twice when W does not divide N), so a rank opens
only about 1/W of the shards. Its L samples make L // B full batches (``drop_last``: the
L % B rest is left out, as with the map-style loader); data worker k of K reads a contiguous
block of whole batches and mixes them with a shuffle buffer seeded from (seed, epoch, rank, k).
Every sample is augmented after seeding from (seed, epoch, its position in the unpermuted
stream), so its augmentation does not depend on W, K or B; the batches' composition does.
A mid-epoch resume reads and discards the batches already trained (images are not decoded).
Evaluation: rank r takes positions [r*N//W, (r+1)*N//W) (all of them without --dist_eval)
in file order, no wrap, no shuffle.

Unreadable images are replaced by the next readable sample of the batch and counted, as in
:mod:`maekit.data.robust`.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import os
import random
import re
import stat
import sys
import tarfile
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..engine.preemption import ignore_stop_signals
from ..errors import MaekitError
from ..files import atomic_write
from .folder import (
    DEFAULT_MAX_PIXELS,
    FlatImageFolder,
    UnreadableImage,
    decode_rgb,
    image_folder,
    open_regular,
)
from .robust import TooManyBadImages, keep_global_rng, sample_seed, seed_all

FORMAT = "maekit-shards/1"
MANIFEST = "shards.json"
IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMG_EXTENSIONS)
SHUFFLE_BUFFER = 1000  # samples mixed by each worker's shuffle buffer (raw bytes, not decoded)
DEBUG_LOG_ENV = "MAEKIT_DEBUG_SAMPLE_LOG"  # path prefix: each rank logs its batches' keys
SPLITS = ("train", "val")
_SHARD_ORDER, _BUFFER = 1, 2  # tags separating the random streams derived from (seed, epoch)


# --------------------------------------------------------------------------- writing


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
                        raise MaekitError(f"cannot read {path} ({e}); fix its permissions "
                                          "or remove it from SRC") from e  # fmt: skip
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
        raise MaekitError(f"SRC {src} is not a folder; give an image folder (train/ and val/ class "
                          "folders, class folders, or plain images)")  # fmt: skip
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
            print(f"maekit: skipping {p}: not a regular file (FIFO, socket, device or dangling link)",
                  file=sys.stderr, flush=True)  # fmt: skip
        existing = _existing_shards(dst / split)
        if existing and not force:
            raise MaekitError(f"{existing[0].parent} already holds shards ({existing[0].name}); "
                              "pass --force to replace them, or choose another DST")  # fmt: skip
        plans.append((split, items, classes, skipped))
    lines = []
    for split, items, classes, skipped in plans:
        n_shards, size = _write_split(items, classes, dst / split, shard_size, seed)
        labels = f"{len(classes)} classes" if classes else "no labels"
        note = f"; {len(skipped)} unreadable entries skipped (not regular files)" if skipped else ""
        lines.append(f"{split}: {len(items)} samples ({labels}) in {n_shards} shards of up to "
                     f"{shard_size}, {size / 1e6:.1f} MB -> {dst / split}{note}")  # fmt: skip
    return lines


def run(cfg) -> list[str]:
    """``maekit shard SRC DST``: print and return the summary lines."""
    cfg.validate()
    lines = write_shards(cfg.src, cfg.dst, cfg.shard_size, cfg.seed, cfg.force)
    for line in lines:
        print(line)
    return lines


# --------------------------------------------------------------------------- locating shards


def is_url(path: str) -> bool:
    return "://" in path


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def expand_braces(pattern: str) -> list[str]:
    """``a{000..002}b`` -> a000b, a001b, a002b (width kept); ``{x,y}`` -> both; nested and
    several groups expand left to right."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        options = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
        if not options:
            raise MaekitError(f"empty range {{{body}}} in {pattern}; write {{LOW..HIGH}}")
    elif "," in body:
        options = body.split(",")
    else:
        raise MaekitError(f"cannot expand {{{body}}} in {pattern}; use {{000000..000127}}, "
                          "{a,b} or {split}")  # fmt: skip
    return [s for opt in options for s in expand_braces(head + opt + tail)]


def _is_pattern(path: str) -> bool:
    return path.endswith(".tar") or any(c in path for c in "{*?[")


def is_shard_path(data_path: str) -> bool:
    """True when ``data_path`` names tar shards: a URL, a ``.tar`` pattern, or a folder with
    ``shards.json`` or ``train/shards.json``."""
    p = Path(data_path)
    if not is_url(data_path) and p.is_dir():  # a folder, even one named like a pattern
        return (p / MANIFEST).is_file() or (p / "train" / MANIFEST).is_file()
    return is_url(data_path) or _is_pattern(data_path)


def refuse_shards(data_path: str, command: str) -> None:
    """Commands that index samples (k-NN, feature extraction, visualisation) need a folder."""
    if data_path and is_shard_path(data_path):
        raise MaekitError(f"{command} reads image folders, not tar shards ({data_path}); give the "
                          "image folder the shards were written from")  # fmt: skip


def _open(path: str) -> BinaryIO:
    """A local file or (through fsspec) a URL, opened for binary reading."""
    if not is_url(path):
        return open(path, "rb")
    import fsspec

    try:
        return fsspec.open(path, "rb").open()
    except ImportError as e:
        raise MaekitError(f"cannot read {path}: {e}") from e


def _read_manifest(folder: str) -> dict | None:
    """The ``shards.json`` in ``folder`` (path or URL), or None when there is none."""
    path = _join(folder, MANIFEST)
    try:
        with _open(path) as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise MaekitError(f"cannot read {path} ({e}); re-create it with `maekit shard`") from e
    entries = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(entries, list) or data.get("format") != FORMAT:
        raise MaekitError(f"{path} is not a {FORMAT} manifest; re-create it with `maekit shard`")
    _check_manifest(data, path)
    return data


def _check_manifest(data: dict, path: str) -> None:
    """Every entry a plain file name beside the manifest with a sample count; classes strings.
    One line naming the manifest and the key, before any shard is opened."""

    def bad(key: str, what: str) -> MaekitError:
        return MaekitError(f"{path}: {key} {what}; re-create the shards with `maekit shard`")

    for i, e in enumerate(data["shards"]):
        if not isinstance(e, dict):
            raise bad(f"shards[{i}]", "is not an object with name and count")
        name, count = e.get("name"), e.get("count")
        if not isinstance(name, str) or not name:
            raise bad(f"shards[{i}].name", f"is {name!r}, not a file name")
        if "/" in name or "\\" in name or name in (".", "..") or ":" in name:
            raise bad(f"shards[{i}].name", f"{name!r} leaves the manifest's folder (shards are "
                      "named by their file name alone)")  # fmt: skip
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise bad(
                f"shards[{i}].count",
                f"is {str(count)[:40]!r}, not a sample count (an integer >= 0)",
            )
    classes = data.get("classes")
    if classes is not None and (
        not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
    ):
        raise bad("classes", "is not a list of class names")


def _glob(pattern: str) -> list[str]:
    if not any(c in pattern for c in "*?["):
        return [pattern]
    if not is_url(pattern):
        return sorted(glob.glob(pattern))
    import fsspec

    fs, _ = fsspec.core.url_to_fs(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(pattern))


@dataclass(frozen=True)
class ShardList:
    """Shard locations with their sample counts (in stream order) and the class names."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...]
    source: str  # what the user gave, for messages


def _from_manifest(folder: str, data: dict, source: str) -> ShardList:
    entries = data["shards"]
    return ShardList(tuple(_join(folder, e["name"]) for e in entries),
                     tuple(int(e["count"]) for e in entries), tuple(data.get("classes") or ()),
                     source)  # fmt: skip


def _from_files(files: list[str], source: str) -> ShardList:
    """Counts from the manifests beside the files; local files without one are scanned."""
    manifests: dict[str, dict[str, int]] = {}
    classes: tuple[str, ...] = ()
    counts, max_label = [], -1
    for f in files:
        folder = _parent(f)
        if folder not in manifests:
            data = _read_manifest(folder)
            manifests[folder] = {e["name"]: int(e["count"]) for e in (data or {}).get("shards", [])}
            found = tuple((data or {}).get("classes") or ())
            if found and classes and found != classes:
                raise MaekitError(f"the shards of {source} have different classes in their "
                                  f"{MANIFEST} files; use shards of one dataset")  # fmt: skip
            classes = classes or found
        name = f.rsplit("/", 1)[-1]
        if name in manifests[folder]:
            counts.append(manifests[folder][name])
        elif is_url(f):
            raise MaekitError(f"{f} is not listed in a {MANIFEST} beside it; shards read from URLs "
                              f"need the manifest `maekit shard` writes (local shards are counted)")  # fmt: skip
        else:
            n, top = scan_shard(f)
            counts.append(n)
            max_label = max(max_label, top)
    if not classes and max_label >= 0:  # no manifest: classes numbered by the labels seen
        classes = tuple(str(i) for i in range(max_label + 1))
    return ShardList(tuple(files), tuple(counts), classes, source)


def resolve_shards(data_path: str, split: str) -> ShardList:
    """The shards of ``split`` named by ``data_path`` (folder/URL with manifests, or pattern)."""
    if _is_pattern(data_path) and (is_url(data_path) or not Path(data_path).is_dir()):
        if "{split}" not in data_path and split != "train":
            raise MaekitError(f"--data_path {data_path} names one set of shards, but evaluation needs "
                              f"{split} shards too: write the pattern with {{split}} (e.g. "
                              ".../{split}/shard-{000000..000009}.tar) or give the folder holding "
                              "train/ and val/")  # fmt: skip
        pattern = data_path.replace("{split}", split)
        files = [f for name in expand_braces(pattern) for f in _glob(name)]
        missing = [f for f in files if not is_url(f) and not Path(f).is_file()]
        if not files or missing:
            raise MaekitError(f"--data_path {data_path}: no shard file {missing[0] if missing else pattern}; "
                              "check the path and pattern")  # fmt: skip
        return _from_files(files, data_path)
    base = data_path.rstrip("/")
    for folder in (_join(base, split), base) if split == "train" else (_join(base, split),):
        data = _read_manifest(folder)
        if data is not None:
            return _from_manifest(folder, data, data_path)
    if split == "train":
        raise MaekitError(f"--data_path {data_path} holds no {MANIFEST} (looked in train/ and the "
                          "folder itself); give the folder `maekit shard` wrote, or a pattern of .tar "
                          "files")  # fmt: skip
    raise MaekitError(f"--data_path {data_path} has no {split}/{MANIFEST}; evaluation needs {split} "
                      f"shards (`maekit shard` writes them from SRC/{split}/)")  # fmt: skip


# --------------------------------------------------------------------------- reading a shard


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


def _read_samples(
    path: str, start: int = 0, stop: int | None = None, images: bool = True
) -> Iterator[tuple[int, str, str, bytes, bytes | None]]:
    """(index in shard, key, image ext, image bytes, .cls bytes or None) of the samples
    ``start <= index < stop`` of a shard, in file order. A sample is a key with an image member.
    Members of earlier samples are skipped unread (local files seek past them; URLs are read
    as a stream); reading stops at ``stop``. ``images=False`` reads only the labels."""
    mode = "r|" if is_url(path) else "r:"
    try:
        with _open(path) as f, tarfile.open(fileobj=f, mode=mode) as tar:
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
        raise MaekitError(f"shard {path} is not a readable tar file ({e}); re-create it with "
                          "`maekit shard`") from e  # fmt: skip


MAX_CLASSES = 1_000_000  # a label at or above this is damage, not a class index


def _label(cls: bytes | None, shard: str, key: str, num_classes: int | None = None) -> int | None:
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
        raise MaekitError(f"{shard}: {key}.cls is not a class index ({cls[:20]!r}); re-create the "
                          "shards with `maekit shard`") from e  # fmt: skip
    top = min(num_classes, MAX_CLASSES) if num_classes else MAX_CLASSES
    if not 0 <= label < top:
        known = f"the {num_classes} classes of its {MANIFEST}" if num_classes else "a class index"
        raise MaekitError(f"{shard}: {key}.cls holds {label}, outside 0..{top - 1} ({known}); re-create "
                          "the shards with `maekit shard`")  # fmt: skip
    return label


def scan_shard(path: str) -> tuple[int, int]:
    """(samples, largest class index or -1) of a local shard, from its headers and labels."""
    n, top = 0, -1
    for _, key, _, _, cls in _read_samples(path, images=False):
        n += 1
        label = _label(cls, path, key)
        top = max(top, -1 if label is None else label)
    return n, top


# --------------------------------------------------------------------------- the dataset


class ShardDataset:
    """A split stored as tar shards: what ``build_dataset`` returns for a shard ``--data_path``.

    It has the length and ``classes`` the phases read; samples are streamed by
    :class:`ShardLoader` / :func:`shard_eval_loader`, not indexed.
    """

    streamed = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # images with more are skipped as unreadable

    def __init__(self, shards: ShardList, split: str, transform) -> None:
        self.shards = shards
        self.split = split
        self.transform = transform
        self.classes = list(shards.classes)
        # Where each shard's samples start in the unpermuted stream (the augmentation seed index).
        self.offsets = tuple(itertools.accumulate(shards.counts, initial=0))[:-1]

    def __len__(self) -> int:
        return sum(self.shards.counts)

    def __getitem__(self, i: int):
        raise MaekitError(f"{self.shards.source} is tar shards, read as a stream; this command needs "
                          "an image folder")  # fmt: skip


def load_shard_dataset(
    data_path: str, split: str, transform, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> ShardDataset:
    ds = ShardDataset(resolve_shards(data_path, split), split, transform)
    ds.max_pixels = max_pixels
    if len(ds) == 0:
        raise MaekitError(f"the {split} shards of {data_path} hold no images; check --data_path")
    return ds


# --------------------------------------------------------------------------- the epoch plan


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    """The shards' order in epoch ``epoch``: a permutation drawn from (seed, epoch)."""
    ss = np.random.SeedSequence([seed % 2**63, epoch, _SHARD_ORDER])
    return [int(i) for i in np.random.default_rng(ss).permutation(n_shards)]


def train_blocks(
    total: int, world: int, rank: int, batch: int, workers: int
) -> list[tuple[int, int]]:
    """Stream positions [start, stop) of each data worker of ``rank`` in a training epoch:
    contiguous whole batches of the rank's L = ceil(total / world) positions (past ``total``:
    wrapped)."""
    per_rank = -(-total // world)
    nb, base = per_rank // batch, rank * per_rank
    return [(base + k * nb // workers * batch, base + (k + 1) * nb // workers * batch)
            for k in range(workers)]  # fmt: skip


def eval_blocks(
    total: int, world: int, rank: int, batch: int, workers: int
) -> list[tuple[int, int]]:
    """Evaluation: the rank's positions [rank*total//world, (rank+1)*total//world) (no wrap),
    in whole batches per worker, the last one possibly short."""
    lo, hi = rank * total // world, (rank + 1) * total // world
    nb = -(-(hi - lo) // batch)
    return [(lo + k * nb // workers * batch, min(hi, lo + (k + 1) * nb // workers * batch))
            for k in range(workers)]  # fmt: skip


def resume_plan(batches: list[int], skip: int) -> tuple[list[int], int]:
    """(batches each worker skips, worker rotation) that resume an epoch after ``skip`` batches.

    The DataLoader takes batch j of worker 0, 1, ..., K-1 in turn (a finished worker drops
    out), so the epoch's batch order is (j, k) in lexicographic order. Skipping the first
    ``skip`` of them and letting loader slot w run worker (w + rotation) % K, with rotation the
    worker of the first remaining batch, gives exactly the remaining order.
    """
    order = [(j, k) for j in range(max(batches, default=0)) for k in range(len(batches))
             if batches[k] > j]  # fmt: skip
    skips = [0] * len(batches)
    for _, k in order[:skip]:
        skips[k] += 1
    return skips, (order[skip][1] if skip < len(order) else 0)


def segments(
    order: list[int], counts: tuple[int, ...], start: int, stop: int
) -> list[tuple[int, int, int]]:
    """Stream positions [start, stop) (modulo the total: the wrap) as (shard, first, end) reads
    of the shards in ``order``."""
    order = [i for i in order if counts[i] > 0]
    starts = list(itertools.accumulate((counts[i] for i in order), initial=0))
    total, out, p = starts[-1], [], start
    while p < stop:
        q = p % total
        j = bisect_right(starts, q) - 1
        n = min(stop - p, starts[j + 1] - q)
        out.append((order[j], q - starts[j], q - starts[j] + n))
        p += n
    return out


# --------------------------------------------------------------------------- streaming


def _shuffled(records: Iterator[Record], size: int, rng: random.Random) -> Iterator[Record]:
    """A shuffle buffer of ``size`` records: same records out, locally mixed."""
    buf: list[Record] = []
    for rec in records:
        if len(buf) < size:
            buf.append(rec)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = rec
    rng.shuffle(buf)
    yield from buf


class _Stream(IterableDataset):
    """The samples of one rank, each loader worker reading its block (see the module doc).

    Yields whole batches: training ``(images, targets, skipped, keys)``, evaluation
    ``(images, targets)`` or None when no image of the batch could be read.
    """

    def __init__(self, data: ShardDataset, batch_size: int, seed: int, workers: int,
                 train: bool, shuffle_buffer: int = SHUFFLE_BUFFER) -> None:  # fmt: skip
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.workers, self.train, self.shuffle_buffer = max(1, workers), train, shuffle_buffer
        # Set by the loader before each epoch's iterator starts (workers get a copy then).
        self.epoch, self.rank, self.rotation = 0, 0, 0
        self.blocks: list[tuple[int, int]] = []
        self.order: list[int] = list(range(len(data.shards.counts)))
        self.skips = [0] * self.workers
        self._warned = 0
        self._last_good: tuple[Record, object] | None = None

    def __iter__(self):
        info = get_worker_info()
        k = ((info.id if info is not None else 0) + self.rotation) % self.workers
        start, stop = self.blocks[k]
        records = self._records(start, stop)
        if self.train:
            ss = np.random.SeedSequence([self.seed % 2**63, self.epoch, _BUFFER, self.rank, k])
            rng = random.Random(int(ss.generate_state(1, np.uint64)[0]))
            records = _shuffled(records, self.shuffle_buffer, rng)
        # A resumed epoch: read and discard this worker's batches already trained.
        records = itertools.islice(records, self.skips[k] * self.batch_size, None)
        batch = self._train_batch if self.train else self._eval_batch
        while chunk := list(itertools.islice(records, self.batch_size)):
            # Build the batch, then yield outside the guard: the caller's draws must not be undone.
            with keep_global_rng(info is None):
                out = batch(chunk)
            yield out

    def _records(self, start: int, stop: int) -> Iterator[Record]:
        shards, counts = self.data.shards, self.data.shards.counts
        for s, first, end in segments(self.order, counts, start, stop):
            url, n = shards.urls[s], first
            for i, key, ext, data, cls in _read_samples(url, first, end):
                label = _label(cls, url, key, len(self.data.classes) or None)
                yield Record(self.data.offsets[s] + i, key, ext, data, label, url)
                n = i + 1
            if n < end:
                raise MaekitError(f"shard {url} holds {n} samples, its manifest says {counts[s]}; "
                                  "re-create the shards with `maekit shard`")  # fmt: skip

    def _decode(self, rec: Record):
        try:
            name = f"{rec.shard}:{rec.key}.{rec.ext}"
            return decode_rgb(io.BytesIO(rec.data), name, self.data.max_pixels)
        except UnreadableImage as e:
            if self._warned < 10:
                self._warned += 1
                print(f"maekit: skipping unreadable image {e}", file=sys.stderr, flush=True)
            return None

    def _target(self, rec: Record) -> int:
        if rec.label is None:
            if self.data.classes:
                raise MaekitError(f"{rec.shard}: sample {rec.key} has no .cls label while the others "
                                  "have; re-create the shards with `maekit shard`")  # fmt: skip
            return 0
        return rec.label

    def _train_batch(self, chunk: list[Record]):
        """Each sample seeded from (seed, epoch, its index); an unreadable one is replaced by
        the next readable sample of the batch (or this worker's last one) and counted."""
        images = [self._decode(rec) for rec in chunk]
        good = [i for i, img in enumerate(images) if img is not None]
        if good:
            self._last_good = (chunk[good[-1]], images[good[-1]])
        elif self._last_good is None:
            raise TooManyBadImages(f"no image of the {len(chunk)} samples from {chunk[0].shard} "
                                   f"(key {chunk[0].key} on) could be read; check the shards")  # fmt: skip
        xs, targets, skipped = [], [], []
        for i in range(len(chunk)):
            j = (
                i
                if images[i] is not None
                else next((g for g in good if g > i), good[0] if good else None)
            )
            rec, img = (chunk[j], images[j]) if j is not None else self._last_good
            seed_all(sample_seed(self.seed, self.epoch, rec.index))
            xs.append(self.data.transform(img) if self.data.transform is not None else img)
            targets.append(self._target(rec))
            skipped.append(int(images[i] is None))
        keys = [rec.key for rec in chunk]
        return torch.stack(xs), torch.tensor(targets), torch.tensor(skipped), keys

    def _eval_batch(self, chunk: list[Record]):
        """Unreadable images are left out (warned about), as in engine/evaluate.py."""
        kept = [(rec, img) for rec in chunk if (img := self._decode(rec)) is not None]
        if not kept:
            return None
        transform = self.data.transform or (lambda x: x)
        xs = [transform(img) for _, img in kept]
        return torch.stack(xs), torch.tensor([self._target(rec) for rec, _ in kept])


class ShardLoader:
    """The training loader over tar shards, in place of the map-style DataLoader.

    Batches are (images, targets, skipped counts) like :func:`maekit.data.build_train_loader`'s.
    ``len()`` is the number of batches still to come this epoch. The training loop calls
    ``loader.sampler.set_epoch(e)`` and ``loader.sampler.start_at(n_samples)``: the loader is
    its own sampler. Workers restart each epoch (they get the epoch with the stream), and the
    DataLoader has its own generator, so starting an epoch never draws from the global RNG.
    """

    def __init__(self, dataset: ShardDataset, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int, pin_memory: bool, shuffle_buffer: int = SHUFFLE_BUFFER) -> None:  # fmt: skip
        self.dataset, self.batch_size, self.rank = dataset, batch_size, rank
        self.stream = _Stream(dataset, batch_size, seed, num_workers, True, shuffle_buffer)
        self.stream.rank = rank
        self.stream.blocks = train_blocks(
            len(dataset), world_size, rank, batch_size, self.stream.workers
        )
        self.worker_batches = [(b - a) // batch_size for a, b in self.stream.blocks]
        self.loader = DataLoader(self.stream, batch_size=None, num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=False,
                                 worker_init_fn=ignore_stop_signals,
                                 generator=torch.Generator().manual_seed(seed))  # fmt: skip
        self.sampler = self
        self.epoch, self.skip = 0, 0
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.skip = epoch, 0

    def start_at(self, n_samples: int) -> None:
        """Skip this rank's first ``n_samples`` of the epoch (whole batches; read, not decoded)."""
        self.skip = min(max(0, int(n_samples)) // self.batch_size, sum(self.worker_batches))

    def __len__(self) -> int:
        return sum(self.worker_batches) - self.skip

    def batches_with_keys(self) -> Iterator[tuple[tuple, list[str]]]:
        """((images, targets, skipped), sample keys) of each batch still to come this epoch."""
        s = self.stream
        s.epoch = self.epoch
        s.order = shard_order(len(self.dataset.shards.counts), self.seed, self.epoch)
        s.skips, s.rotation = resume_plan(self.worker_batches, self.skip)
        if len(self) == 0:
            return
        for images, targets, skipped, keys in self.loader:
            yield (images, targets, skipped), keys

    def __iter__(self):
        prefix = os.environ.get(DEBUG_LOG_ENV)
        log = open(f"{prefix}.rank{self.rank}", "a") if prefix else None
        try:
            for batch, keys in self.batches_with_keys():
                if log is not None:
                    log.write(f"{self.epoch} {' '.join(keys)}\n")
                    log.flush()
                yield batch
        finally:
            if log is not None:
                log.close()


class ShardEvalLoader:
    """Evaluation batches (images, targets) of a rank's share of the shards, in file order."""

    def __init__(self, dataset: ShardDataset, batch_size: int, rank: int, world_size: int,
                 num_workers: int, pin_memory: bool) -> None:  # fmt: skip
        self.stream = _Stream(dataset, batch_size, 0, num_workers, False)
        self.stream.blocks = eval_blocks(
            len(dataset), world_size, rank, batch_size, self.stream.workers
        )
        self.loader = DataLoader(self.stream, batch_size=None, num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=False,
                                 worker_init_fn=ignore_stop_signals, generator=torch.Generator())  # fmt: skip
        self.batch_size = batch_size

    def __len__(self) -> int:
        return sum(-(-(b - a) // self.batch_size) for a, b in self.stream.blocks)

    def __iter__(self):
        if len(self) == 0:
            return
        yield from self.loader


def shard_eval_loader(dataset: ShardDataset, batch_size: int, rank: int, world_size: int,
                      sharded: bool, num_workers: int, pin_memory: bool) -> ShardEvalLoader:  # fmt: skip
    """``sharded`` (--dist_eval under torchrun): this rank's exact share; else every sample."""
    if not sharded:
        rank, world_size = 0, 1
    return ShardEvalLoader(dataset, batch_size, rank, world_size, num_workers, pin_memory)
