"""Checkpoint files: {model, optimizer, epoch, scaler, args} with args as a plain dict.

Saving is atomic (temp file in the same directory, fsync, rename), so a crash mid-save
never leaves a truncated ``checkpoint-*.pth`` that looks valid. Loading uses
``torch.load(weights_only=True)``: nothing inside a checkpoint can run code.

Files in an output folder: ``checkpoint-{epoch}.pth`` every ``--save_freq`` epochs and at the
last (pruned to the newest ``--keep_last``), ``checkpoint-last.pth`` after every epoch and on a
preemption stop (the auto-resume point), ``checkpoint-best.pth`` (fine-tuning, best top-1).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import MaekitError
from .sharding import is_sharded, load_full_state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` all or nothing: ``write(tmp)`` fills a temp file in the same folder, which
    is fsynced and renamed over ``path``, then the folder is fsynced. On any failure the temp
    file is removed and ``path`` keeps its old content. (Checkpoints, shards, feature files.)"""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: dict, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write`; an OS error becomes a one-line MaekitError."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            if os.environ.get("MAEKIT_DEBUG_SAVE_DELAY"):  # fault-injection hook (kill tests)
                time.sleep(float(os.environ["MAEKIT_DEBUG_SAVE_DELAY"]))

    try:
        atomic_write(path, write)
    except OSError as e:
        raise MaekitError(f"could not write checkpoint {path}: {e.strerror or e}; "
                          "free disk space or choose another --output_dir "
                          "(earlier checkpoints are untouched)") from e  # fmt: skip


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_link(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` a second name of the finished file ``src`` (hard link, atomic replace);
    copy when the file system has no hard links. No second write of a large checkpoint."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_save(read_checkpoint(src), dst)
        return
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


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


def progress_of(ckpt: dict) -> tuple[int, int]:
    """(epoch to continue at, step within it) that a checkpoint resumes to."""
    resume = ckpt.get("resume") or {}
    if "epoch" in resume:
        return int(resume["epoch"]), int(resume.get("step", 0))
    return int(ckpt.get("epoch", -1)) + 1, 0


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
            print(f"maekit: warning: skipping damaged checkpoint for auto-resume: {e}",
                  file=sys.stderr, flush=True)  # fmt: skip
            continue
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            print(f"maekit: warning: {path} is not a training checkpoint; not resuming from it",
                  file=sys.stderr, flush=True)  # fmt: skip
            continue
        prog = progress_of(ckpt)
        if best is None or prog > best[0]:
            best = (prog, path, ckpt)
    return None if best is None else (best[1], best[2])


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    scaler: torch.amp.GradScaler | None,
    args: dict,
    extra: dict | None = None,
    model_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> None:
    """Write {model, optimizer, epoch, scaler, args} (+ ``extra`` entries) atomically.

    ``model_state`` / ``optimizer_state``: already gathered full state dicts (fsdp), used
    instead of the modules' own."""
    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    state = {
        "model": unwrap(model).state_dict() if model_state is None else model_state,
        "optimizer": optimizer_state,
        "epoch": epoch,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "args": dict(args),
        **(extra or {}),
    }
    atomic_save(state, path)


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes (the loader's rule)."""
    from ..formats.loader import strip_prefixes  # formats imports this module: resolve lazily

    return strip_prefixes(state)[0]


def shape_mismatches(state: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """Keys present in both whose shapes differ (sorted)."""
    own = model.state_dict()
    return sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely (tensors, numpy arrays, plain containers only).

    Any format maekit reads (see :mod:`maekit.formats.loader`): PyTorch files come back as
    saved, with an official ``args`` Namespace turned into a dict; Paddle and safetensors
    files as {model (in our names), epoch, args, optimizer: None, scaler: None}.
    """
    from ..formats.loader import read_checkpoint_dict  # the formats package imports this module

    return read_checkpoint_dict(path)


def resume_from(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    ckpt: dict | None = None,
) -> tuple[int, dict]:
    """Restore model/optimizer/scaler from ``path`` (or its already-read contents ``ckpt``);
    return (epoch to start from, whole checkpoint)."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    if "model" not in ckpt:
        raise MaekitError(f"{path} has no 'model' entry; is it a maekit/MAE checkpoint?")
    state = strip_wrapper_prefixes(ckpt["model"])
    wrong = shape_mismatches(state, unwrap(model))
    if wrong:
        raise MaekitError(f"checkpoint {path} does not match the model: other shapes for {wrong[:8]}; "
                          "resume with the same --model and sizes")  # fmt: skip
    if is_sharded(unwrap(model)):  # fsdp: every rank keeps its shard of the full tensors
        load_full_state(unwrap(model), state, optimizer, ckpt.get("optimizer"))
    else:
        result = unwrap(model).load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise MaekitError(
                f"checkpoint {path} does not match the model: missing {result.missing_keys[:8]}, "
                f"unexpected {result.unexpected_keys[:8]}; resume with the same --model and sizes"
            )
        if optimizer is not None and ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    return progress_of(ckpt)[0], ckpt
