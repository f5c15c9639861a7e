"""What ``--data_path`` names, as a list of shards with their sample counts.

``--data_path`` takes, besides image folders:

- a folder or URL holding ``train/shards.json`` (and ``val/shards.json`` for fine-tuning and
  linear probing), or holding ``shards.json`` itself (the training split);
- a pattern of ``.tar`` files, local or a URL: ``/data/in1k/{split}/shard-{000000..000127}.tar``
  (numeric ranges and ``{a,b}`` lists), globs (``/data/in1k/train/*.tar``); a literal
  ``{split}`` becomes ``train`` or ``val``. Counts come from the ``shards.json`` beside the
  shards; local shards without one are counted once by reading their tar headers.

URLs are opened with fsspec (``file://``, ``http(s)://``, ``s3://``... as installed).
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import MaekitError
from .format import FORMAT, MANIFEST
from .read import is_url, open_binary, scan_shard


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


MAX_SHARD_NAMES = 1_000_000  # a pattern naming more is a typo, refused before it is expanded


def _names_in(pattern: str) -> int:
    """How many names the brace groups of ``pattern`` make (the product of their sizes)."""
    n = 1
    for m in re.finditer(r"\{([^{}]*)\}", pattern):
        r = re.fullmatch(r"(\d+)\.\.(\d+)", m.group(1))
        n *= max(0, int(r.group(2)) - int(r.group(1)) + 1) if r else len(m.group(1).split(","))
    return n


def expand_braces(pattern: str) -> list[str]:
    """``a{000..002}b`` -> a000b, a001b, a002b (width kept); ``{x,y}`` -> both; nested and
    several groups expand left to right. A pattern of more than MAX_SHARD_NAMES names (e.g.
    ``{000000000..099999999}``, a digit too many) is refused before anything is allocated."""
    n = _names_in(pattern)
    if n > MAX_SHARD_NAMES:
        raise MaekitError(
            f"{pattern} names {n} shards, more than {MAX_SHARD_NAMES}: check the brace range "
            "(a digit too many?), e.g. {000000..000127}"
        )
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
        raise MaekitError(
            f"cannot expand {{{body}}} in {pattern}; use {{000000..000127}}, {{a,b}} or {{split}}"
        )
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
        raise MaekitError(
            f"{command} reads image folders, not tar shards ({data_path}); give the "
            "image folder the shards were written from"
        )


def _read_manifest(folder: str) -> dict | None:
    """The ``shards.json`` in ``folder`` (path or URL), or None when there is none."""
    path = _join(folder, MANIFEST)
    try:
        with open_binary(path) as f:
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
            raise bad(
                f"shards[{i}].name",
                f"{name!r} leaves the manifest's folder (shards are "
                "named by their file name alone)",
            )
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
    return ShardList(
        tuple(_join(folder, e["name"]) for e in entries),
        tuple(int(e["count"]) for e in entries),
        tuple(data.get("classes") or ()),
        source,
    )


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
                raise MaekitError(
                    f"the shards of {source} have different classes in their "
                    f"{MANIFEST} files; use shards of one dataset"
                )
            classes = classes or found
        name = f.rsplit("/", 1)[-1]
        if name in manifests[folder]:
            counts.append(manifests[folder][name])
        elif is_url(f):
            raise MaekitError(
                f"{f} is not listed in a {MANIFEST} beside it; shards read from URLs "
                f"need the manifest `maekit shard` writes (local shards are counted)"
            )
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
            raise MaekitError(
                f"--data_path {data_path} names one set of shards, but evaluation needs "
                f"{split} shards too: write the pattern with {{split}} (e.g. "
                ".../{split}/shard-{000000..000009}.tar) or give the folder holding "
                "train/ and val/"
            )
        pattern = data_path.replace("{split}", split)
        files = [f for name in expand_braces(pattern) for f in _glob(name)]
        missing = [f for f in files if not is_url(f) and not Path(f).is_file()]
        if not files or missing:
            raise MaekitError(
                f"--data_path {data_path}: no shard file {missing[0] if missing else pattern}; "
                "check the path and pattern"
            )
        return _from_files(files, data_path)
    base = data_path.rstrip("/")
    for folder in (_join(base, split), base) if split == "train" else (_join(base, split),):
        data = _read_manifest(folder)
        if data is not None:
            return _from_manifest(folder, data, data_path)
    if split == "train":
        raise MaekitError(
            f"--data_path {data_path} holds no {MANIFEST} (looked in train/ and the "
            "folder itself); give the folder `maekit shard` wrote, or a pattern of .tar "
            "files"
        )
    raise MaekitError(
        f"--data_path {data_path} has no {split}/{MANIFEST}; evaluation needs {split} "
        f"shards (`maekit shard` writes them from SRC/{split}/)"
    )
