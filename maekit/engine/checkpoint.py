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
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import MaekitError
from .fsdp import is_fsdp, load_full_state


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
    """``torch.save`` through :func:`atomic_write`; any failure of the writer (an OS error, or
    the RuntimeError torch's zip writer raises for a full disk) is a one-line MaekitError and
    ``path`` keeps its old content."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            if os.environ.get("MAEKIT_DEBUG_SAVE_DELAY"):  # fault-injection hook (kill tests)
                time.sleep(float(os.environ["MAEKIT_DEBUG_SAVE_DELAY"]))

    try:
        atomic_write(path, write)
    except MaekitError:
        raise
    except Exception as e:  # OSError (ENOSPC, EFBIG, EIO...), torch's RuntimeError, ...
        raise write_error(path, e) from e


def write_error(path: str | Path, e: BaseException) -> MaekitError:
    """One line for a failed checkpoint write. torch's zip writer reports a short write (full
    disk, file size limit) as ``RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos``: that is named as what it almost always is."""
    if isinstance(e, OSError):
        reason = e.strerror or str(e)
    else:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        reason = f"the writer failed ({type(e).__name__}: {first}; usually a full disk)"
    return MaekitError(f"could not write checkpoint {path}: {reason}; free disk space or choose "
                       "another --output_dir, then run the same command to continue (earlier "
                       "checkpoints are untouched)")  # fmt: skip


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


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` an independent copy of the finished file ``src``, atomically.

    Not a hard link: a periodic (or best) checkpoint that shares its bytes with
    ``checkpoint-last.pth`` is damaged with it, and the fallback of auto-resume would then have
    no copy of that epoch. The copy is a reflink where the file system has them (btrfs, xfs:
    no second write), else the kernel's in-place copy (``copy_file_range``/``sendfile``)."""
    src, dst = Path(src), Path(dst)

    def write(tmp: Path) -> None:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            if not _reflink(fin.fileno(), fout.fileno()):
                shutil.copyfileobj(fin, fout, 16 << 20)

    try:
        atomic_write(dst, write)
    except MaekitError:
        raise
    except Exception as e:
        raise write_error(dst, e) from e


def _reflink(src_fd: int, dst_fd: int) -> bool:
    """FICLONE: share the extents copy-on-write (Linux btrfs/xfs); False where unsupported."""
    try:
        import fcntl

        fcntl.ioctl(dst_fd, 0x40049409, src_fd)  # FICLONE = _IOW(0x94, 9, int)
        return True
    except (ImportError, OSError):
        return False


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
        raise MaekitError(f"{path}: 'resume' is a {type(resume).__name__}, not a dict; "
                          "it is not a maekit training checkpoint")  # fmt: skip
    if "epoch" in resume:
        return (_count(resume["epoch"], "resume.epoch", path, 0),
                _count(resume.get("step", 0), "resume.step", path, 0))  # fmt: skip
    return _count(ckpt.get("epoch", -1), "epoch", path, -1) + 1, 0


def _count(value: object, key: str, path: str | Path, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise MaekitError(f"{path}: '{key}' is {str(value)[:40]!r}, not an integer >= {lowest}; "
                          "the checkpoint is damaged or was not written by a training run")  # fmt: skip
    return value


def nonfinite_entries(
    model_state: dict | None = None,
    module: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    limit: int = 4,
) -> list[str]:
    """Names of up to ``limit`` weights, gradients or optimizer-state tensors holding NaN/inf.

    One fused reduction (``_foreach_norm``, the L2 norm: NaN and inf propagate into it) over
    every floating tensor, read with one host sync per device. A norm that overflowed although
    every value is finite (values near 1e19 in fp32) is re-checked element-wise, as are the
    names: only when something looks wrong."""
    named: list[tuple[str, torch.Tensor]] = []
    if model_state is not None:
        named += [(k, v) for k, v in model_state.items() if isinstance(v, torch.Tensor)]
    if module is not None:
        for k, p in unwrap(module).named_parameters():
            named.append((k, p.detach()))
            if p.grad is not None:
                named.append((f"{k} (gradient)", p.grad.detach()))
        named += [(k, b) for k, b in unwrap(module).named_buffers()]
    if optimizer is not None:
        for i, st in enumerate(optimizer.state.values()):
            named += [(f"optimizer state {i}: {k}", v) for k, v in st.items()
                      if isinstance(v, torch.Tensor) and v.dim() > 0]  # fmt: skip
    named = [(k, _local(v)) for k, v in named]
    named = [(k, v) for k, v in named if v.is_floating_point() and v.numel() > 0]
    if not named:
        return []
    norms = torch._foreach_norm([v for _, v in named])
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for n in norms:
        by_device.setdefault(n.device, []).append(n.float())
    if all(bool(torch.isfinite(torch.stack(ns)).all()) for ns in by_device.values()):
        return []
    suspects = [
        (k, v) for (k, v), n in zip(named, norms, strict=True) if not bool(torch.isfinite(n))
    ]
    return [k for k, v in suspects if not bool(torch.isfinite(v).all())][:limit]


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (fsdp); plain tensors as they are."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


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
        try:
            prog = progress_of(ckpt, path)
        except MaekitError as e:
            print(f"maekit: warning: skipping damaged checkpoint for auto-resume: {e}",
                  file=sys.stderr, flush=True)  # fmt: skip
            continue
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


def mismatch_text(state: dict[str, torch.Tensor], model: torch.nn.Module, keys: list[str]) -> str:
    """``key (file shape) vs (model shape), ...`` for the error messages of every loader."""
    own = model.state_dict()
    return ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in keys)


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
    if not isinstance(ckpt.get("model"), dict):
        raise MaekitError(f"{path} has no 'model' entry of weights; is it a maekit/MAE checkpoint?")
    progress_of(ckpt, path)  # a damaged epoch/resume entry is refused before anything is loaded
    state = strip_wrapper_prefixes(ckpt["model"])
    wrong = shape_mismatches(state, unwrap(model))
    if wrong:
        raise MaekitError(f"checkpoint {path} does not match the model: other shapes for {wrong[:8]}; "
                          "resume with the same --model and sizes")  # fmt: skip
    if is_fsdp(unwrap(model)):  # fsdp: every rank keeps its shard of the full tensors
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
    return progress_of(ckpt, path)[0], ckpt
