"""Writing files all or nothing: a temp file beside the target, fsynced, renamed over it, and
the folder fsynced, so a crash mid-write never leaves a truncated file that looks valid.

The bottom of maekit's layers: checkpoints, tar shards, feature files, logs and converted
checkpoints are all written through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import MaekitError


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` all or nothing: ``write(tmp)`` fills a temp file in the same folder, which
    is fsynced and renamed over ``path``, then the folder is fsynced. On any failure the temp
    file is removed and ``path`` keeps its old content. (Checkpoints, shards, feature files.)
    An OS error (full disk, file size limit, read-only folder) is one line: a MaekitError."""
    try:
        _atomic_write(path, write)
    except OSError as e:
        raise MaekitError(
            f"could not write {path} ({e.strerror or e}); free disk space or choose another "
            "output (an existing file there is untouched)"
        ) from e


def check_overwrite(path: str | Path, owned: Callable[[Path], bool], what: str) -> None:
    """The guard of every output that may replace a file: ``path`` may exist only as a file
    this kind of output wrote before (``owned(path)``, e.g. an earlier extract's sidecar); a
    file maekit does not own there (a run's config.json, a checkpoint) is never overwritten."""
    path = Path(path)
    if path.exists() and not owned(path):
        raise MaekitError(
            f"{path} exists and is not {what}; maekit does not overwrite it: choose another "
            "output name"
        )


def _atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
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


def _torch_save(obj: object, tmp: Path) -> None:
    """The writer of :func:`atomic_save` (a function of its own so tests can slow it down)."""
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()


def atomic_save(obj: dict, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write`; any failure of the writer (an OS error, or
    the RuntimeError torch's zip writer raises for a full disk) is a one-line MaekitError and
    ``path`` keeps its old content."""
    try:
        _atomic_write(path, lambda tmp: _torch_save(obj, tmp))
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
    return MaekitError(
        f"could not write checkpoint {path}: {reason}; free disk space or choose "
        "another --output_dir, then run the same command to continue (earlier "
        "checkpoints are untouched)"
    )


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
        _atomic_write(dst, write)
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


def save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``state`` as a .safetensors file, written all or nothing (:func:`~maekit.files.atomic_write`)."""
    from safetensors.torch import save_file

    # safetensors wants contiguous tensors that share no memory
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    try:
        _atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    except OSError as e:
        raise MaekitError(f"could not write {path}: {e.strerror or e}") from e
    except Exception as e:  # safetensors' own error for a short write (full disk, size limit)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise MaekitError(
            f"could not write {path} ({type(e).__name__}: {first}; usually a full disk); "
            "free disk space or choose another output"
        ) from e
