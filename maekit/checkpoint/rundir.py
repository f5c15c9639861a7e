"""The checkpoints of a run folder and which one a run continues from.

Files in an output folder: ``checkpoint-{epoch}.pth`` every ``--save_freq`` epochs and at the
last (pruned to the newest ``--keep_last``), ``checkpoint-last.pth`` after every epoch and on a
preemption stop (the auto-resume point), ``checkpoint-best.pth`` (fine-tuning, best top-1).
Every save is atomic (:mod:`maekit.files`): a crash leaves at most a ``.checkpoint-*.tmp``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..errors import MaekitError
from ..formats.loader import read_checkpoint

PERIODIC = re.compile(r"^checkpoint-(\d+)\.pth$")
LAST, BEST = "checkpoint-last.pth", "checkpoint-best.pth"


def periodic_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``checkpoint-{N}.pth`` files in ``folder`` as (N, path), newest first."""
    found = []
    for p in Path(folder).glob("checkpoint-*.pth"):
        m = PERIODIC.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def prune_checkpoints(folder: str | Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` periodic checkpoints (never last/best)."""
    if keep_last is None:
        return []
    doomed = [p for _, p in periodic_checkpoints(folder)[max(1, keep_last) :]]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Temp files of saves that a crash interrupted (never valid checkpoints)."""
    stale = [p for p in Path(folder).glob(".checkpoint-*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def progress_of(ckpt: dict, path: str | Path = "checkpoint") -> tuple[int, int]:
    """(epoch to continue at, step within it) that a checkpoint resumes to.

    ``epoch`` (and ``resume``'s epoch/step) must be integers: -1 or more for ``epoch``
    (official files use -1 for "no epoch finished"), 0 or more for the others."""
    resume = ckpt.get("resume") or {}
    if not isinstance(resume, dict):
        raise MaekitError(
            f"{path}: 'resume' is a {type(resume).__name__}, not a dict; "
            "it is not a maekit training checkpoint"
        )
    if "epoch" in resume:
        return (
            _count(resume["epoch"], "resume.epoch", path, 0),
            _count(resume.get("step", 0), "resume.step", path, 0),
        )
    return _count(ckpt.get("epoch", -1), "epoch", path, -1) + 1, 0


def _count(value: object, key: str, path: str | Path, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise MaekitError(
            f"{path}: '{key}' is {str(value)[:40]!r}, not an integer >= {lowest}; "
            "the checkpoint is damaged or was not written by a training run"
        )
    return value


def holds_checkpoints(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run's checkpoints (last, best or periodic; damaged ones too)."""
    folder = Path(folder)
    return any((folder / n).is_file() for n in (LAST, BEST)) or bool(periodic_checkpoints(folder))


def _run_file(name: str, with_events: bool) -> bool:
    """A file a training run writes in its output folder (what :func:`archive_run` moves)."""
    return bool(
        name in (LAST, BEST, "log.txt", "config.json")
        or PERIODIC.match(name)
        or re.match(r"^reconstruction-\d+\.png$", name)
        or (with_events and name.startswith("events.out.tfevents."))
    )


def archive_run(folder: str | Path, with_events: bool) -> Path | None:
    """Move the files of the run in ``folder`` into ``folder/previous-N`` (the first free N):
    a run that starts over there (``--no_auto_resume``, a ``--resume`` from elsewhere) must
    neither mix its log and checkpoints with the old run's nor overwrite them. Only the
    files a run writes move (``with_events``: TensorBoard's too); None if there were none."""
    folder = Path(folder)
    names = sorted(
        p.name for p in folder.iterdir() if p.is_file() and _run_file(p.name, with_events)
    )
    if not names:
        return None
    n = 1
    while (folder / f"previous-{n}").exists():
        n += 1
    dest = folder / f"previous-{n}"
    try:
        dest.mkdir()
        for name in names:
            (folder / name).rename(dest / name)
    except OSError as e:
        raise MaekitError(
            f"could not move the previous run in {folder} to {dest} ({e.strerror or e}); "
            "give a new --output_dir"
        ) from e
    return dest


def find_resume_checkpoint(folder: str | Path) -> tuple[Path, dict] | None:
    """The checkpoint in ``folder`` that resumes furthest and loads cleanly, with its contents.

    ``checkpoint-last.pth`` is tried first; a periodic checkpoint newer than it (a crash between
    the two writes) wins. Damaged files are skipped with a warning, never deleted.
    """
    folder = Path(folder)
    candidates = [folder / LAST] if (folder / LAST).is_file() else []
    candidates += [p for _, p in periodic_checkpoints(folder)]
    best: tuple[tuple[int, int], Path, dict] | None = None
    for path in candidates:
        m = PERIODIC.match(path.name)
        if best is not None and m and int(m.group(1)) + 1 <= best[0][0]:
            break  # periodic files are newest first: nothing older can win
        try:
            ckpt = read_checkpoint(path)
        except MaekitError as e:
            print(
                f"maekit: warning: skipping damaged checkpoint for auto-resume: {e}",
                file=sys.stderr,
                flush=True,
            )
            continue
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            print(
                f"maekit: warning: {path} is not a training checkpoint; not resuming from it",
                file=sys.stderr,
                flush=True,
            )
            continue
        try:
            prog = progress_of(ckpt, path)
        except MaekitError as e:
            print(
                f"maekit: warning: skipping damaged checkpoint for auto-resume: {e}",
                file=sys.stderr,
                flush=True,
            )
            continue
        if best is None or prog > best[0]:
            best = (prog, path, ckpt)
    return None if best is None else (best[1], best[2])
