"""One run per output folder: an advisory lock held for the run's life.

Two runs writing the same ``--output_dir`` would log every epoch twice, overwrite each other's
checkpoints and delete each other's temp files as "stale". The main process of a run holds
``flock(LOCK_EX)`` on ``OUTPUT_DIR/.maekit.lock`` (its pid written inside, for the message) from
start-up until the run ends (:func:`unlock_output_dirs`, called however the run ends) or the
process dies; the kernel drops the lock when the process dies, however it dies, so a killed run
never leaves a lock behind. Only the lock holder removes stale temp files.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MaekitError

LOCK_NAME = ".maekit.lock"

# Locks this process holds, by folder: a second run in the same process (tests, notebooks)
# reuses its own lock instead of refusing itself. Open until the run ends or the process exits.
_held: dict[Path, int] = {}


def lock_output_dir(folder: str | Path) -> Path:
    """Take the folder's lock or raise a MaekitError naming the pid that holds it."""
    folder = Path(folder).resolve()
    if folder in _held:
        return folder / LOCK_NAME
    path = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): no protection, as before
        return path
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise MaekitError(
            f"cannot create {path} ({e.strerror or e}); choose another --output_dir"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"pid {holder}" if holder else "another process"
        raise MaekitError(
            f"--output_dir {folder} is in use by another maekit run ({who}); wait for it "
            "to finish or stop it, or give this run another --output_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[folder] = fd
    return path


def unlock_output_dirs() -> None:
    """Release every lock this process holds: the run is over (finished, failed or stopped), so
    a notebook that ran it does not keep its folder from the next process."""
    while _held:
        _, fd = _held.popitem()
        os.close(fd)  # closing the last descriptor drops the flock


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def holds_lock(folder: str | Path) -> bool:
    return Path(folder).resolve() in _held
