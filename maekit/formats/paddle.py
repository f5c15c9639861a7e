"""PLSC (PaddlePaddle) checkpoints -> our state dicts, without Paddle installed.

What Paddle writes (``paddle.save`` is pickle underneath):

- ``checkpoint-N.pd`` (PLSC's training checkpoints): a dict {model, optimizer, epoch, scaler,
  args}; every tensor is a tuple ``(paddle_name, numpy array)`` keyed by its structured name
  (``blocks.0.attn.qkv.weight``), and ``args`` is an argparse.Namespace.
- ``*.pdparams``: a flat {structured name: array or (name, array)} dict, plus a
  ``StructuredToParameterName@@`` table of Paddle's internal names.

PLSC's MAE/ViT modules carry the same structured names as ours; what differs is layout:
``paddle.nn.Linear`` stores its weight as [in, out] (we use [out, in]) and BatchNorm keeps
its statistics as ``_mean`` / ``_variance``. Optimizer and loss-scaler state are Paddle's own
and are ignored.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ..errors import MaekitError

NAME_TABLE_KEY = "StructuredToParameterName@@"
# Paddle BatchNorm buffer -> torch BatchNorm buffer
BATCHNORM_RENAMES = {"_mean": "running_mean", "_variance": "running_var"}


def _array_of(value: object) -> np.ndarray | None:
    """The numpy array in a Paddle state-dict value (bare, or a (name, array) tuple)."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        value = value[1]
    return value if isinstance(value, np.ndarray) else None


def is_paddle_state(obj: object) -> bool:
    """A non-empty dict whose values are all numpy arrays or (name, array) tuples."""
    if not isinstance(obj, dict):
        return False
    items = [v for k, v in obj.items() if k != NAME_TABLE_KEY]
    return bool(items) and all(_array_of(v) is not None for v in items)


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype == np.uint16:  # Paddle stores bfloat16 as raw uint16 (numpy has no bf16)
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True))  # own, writable memory


def paddle_to_torch(state: dict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert a Paddle state dict; returns (our state dict, notes on what was converted)."""
    out: dict[str, torch.Tensor] = {}
    transposed, batchnorms = 0, []
    for name, value in state.items():
        if name == NAME_TABLE_KEY:
            continue
        tensor = _to_tensor(_array_of(value))
        module, _, leaf = name.rpartition(".")
        if leaf in BATCHNORM_RENAMES:
            name = f"{module}.{BATCHNORM_RENAMES[leaf]}" if module else BATCHNORM_RENAMES[leaf]
            if module not in batchnorms:
                batchnorms.append(module)
        elif leaf == "weight" and tensor.ndim == 2:  # only nn.Linear has 2-D weights here
            tensor = tensor.t().contiguous()  # [in, out] -> [out, in]
            transposed += 1
        out[name] = tensor
    for module in batchnorms:  # torch's BatchNorm has a step counter Paddle does not keep
        out[f"{module}.num_batches_tracked" if module else "num_batches_tracked"] = torch.tensor(0)
    notes = []
    if transposed:
        notes.append(f"transposed {transposed} Linear weights [in, out] -> [out, in]")
    if batchnorms:
        notes.append(
            f"renamed BatchNorm _mean/_variance -> running_mean/running_var in {', '.join(batchnorms)}"
        )
    return out, notes


def read_paddle(obj: object, path: str) -> tuple[dict[str, torch.Tensor], dict, list[str], str]:
    """A plain-pickle object from ``path`` -> (state dict, other entries, notes, format name)."""
    if isinstance(obj, dict) and is_paddle_state(obj.get("model")):
        state, notes = paddle_to_torch(obj["model"])
        extras = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "scaler")}
        if isinstance(extras.get("args"), argparse.Namespace):
            extras["args"] = vars(extras["args"])
        ignored = [k for k in ("optimizer", "scaler") if obj.get(k) is not None]
        if ignored:
            notes.append(f"ignored Paddle {' and '.join(ignored)} state")
        epoch = f", epoch {obj['epoch']}" if isinstance(obj.get("epoch"), int) else ""
        return state, extras, notes, f"PLSC Paddle checkpoint (.pd{epoch})"
    if is_paddle_state(obj):
        state, notes = paddle_to_torch(obj)
        return state, {}, notes, "Paddle parameters (.pdparams)"
    raise MaekitError(
        f"{path} is a plain pickle but not a Paddle checkpoint (expected a dict of numpy arrays "
        "or a PLSC {'model': ...} checkpoint); give a .pth, .pd, .pdparams or .safetensors file"
    )
