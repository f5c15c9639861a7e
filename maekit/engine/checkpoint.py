"""Checkpoint files: {model, optimizer, epoch, scaler, args} with args as a plain dict.

Saving is atomic (temp file in the same directory, fsync, rename), so a crash mid-save
never leaves a truncated ``checkpoint-*.pth`` that looks valid. Loading uses
``torch.load(weights_only=True)``: nothing inside a checkpoint can run code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import MaekitError


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def atomic_save(obj: dict, path: str | Path) -> None:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MaekitError(f"could not write checkpoint {path}: {e.strerror or e}; "
                          "choose another --output_dir (earlier checkpoints are untouched)") from e  # fmt: skip
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise MaekitError(f"could not write checkpoint {path}: {e.strerror or e}; "
                              "free disk space or choose another --output_dir "
                              "(earlier checkpoints are untouched)") from e  # fmt: skip
        raise


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    scaler: torch.amp.GradScaler | None,
    args: dict,
    extra: dict | None = None,
) -> None:
    """Write {model, optimizer, epoch, scaler, args} (+ ``extra`` entries) atomically."""
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "args": dict(args),
        **(extra or {}),
    }
    atomic_save(state, path)


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


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
    path: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
) -> tuple[int, dict]:
    """Restore model/optimizer/scaler from ``path``; return (epoch to start from, whole checkpoint)."""
    ckpt = read_checkpoint(path)
    if "model" not in ckpt:
        raise MaekitError(f"{path} has no 'model' entry; is it a maekit/MAE checkpoint?")
    state = strip_wrapper_prefixes(ckpt["model"])
    wrong = shape_mismatches(state, unwrap(model))
    if wrong:
        raise MaekitError(f"checkpoint {path} does not match the model: other shapes for {wrong[:8]}; "
                          "resume with the same --model and sizes")  # fmt: skip
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
    return int(ckpt.get("epoch", -1)) + 1, ckpt
