"""The training state (model, optimizer, grad scaler) saved to and restored from a checkpoint.

A checkpoint holds {model, optimizer, epoch, scaler, args} with args as a plain dict (+ the
``resume`` entry of a mid-epoch stop); it is written through :func:`maekit.files.atomic_save`.
This is the engine's end of the checkpoint layer (:mod:`maekit.checkpoint`): it knows the live
objects of a run, including a model sharded under ``--dist_mode fsdp``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint.rundir import progress_of
from ..checkpoint.state_dict import keys_error, shape_error, shape_mismatches, unwrap
from ..errors import MaekitError
from ..files import atomic_save
from ..formats.loader import read_checkpoint, strip_prefixes
from .fsdp import is_fsdp, load_full_state

RESUME_FIX = "resume with the same --model and sizes"


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
            named += [
                (f"optimizer state {i}: {k}", v)
                for k, v in st.items()
                if isinstance(v, torch.Tensor) and v.dim() > 0
            ]
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
    state = strip_prefixes(ckpt["model"])[0]
    bare = unwrap(model)
    wrong = shape_mismatches(state, bare)
    if wrong:
        raise shape_error(f"checkpoint {path}", state, bare, wrong, RESUME_FIX)
    if is_fsdp(bare):  # fsdp: every rank keeps its shard of the full tensors
        load_full_state(bare, state, optimizer, ckpt.get("optimizer"))
    else:
        result = bare.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise keys_error(
                f"checkpoint {path}", bare, result.missing_keys, result.unexpected_keys, RESUME_FIX
            )
        if optimizer is not None and ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    return progress_of(ckpt, path)[0], ckpt
