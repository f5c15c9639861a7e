"""Capturing and restoring every random stream a training step uses, for exact resume.

A checkpoint stores one :func:`capture` per rank (python ``random``, numpy's global RNG,
torch CPU and, where present, the current CUDA device). Data augmentation does not depend on
these streams (each sample is seeded from its key, see :mod:`maekit.data.robust`), so the
model-side randomness (masking noise, drop path, mixup) is all that has to be restored.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    """This process's RNG states as plain values (bytes, ints, lists): weights_only-loadable
    and safe to send through ``all_gather_object``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "keys": keys.astype(np.uint32).tobytes(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": numpy_state,
        "torch": torch.get_rng_state().numpy().tobytes(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().numpy().tobytes()
    return state


def _byte_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def restore(state: dict) -> None:
    """Inverse of :func:`capture`."""
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    keys = np.frombuffer(n["keys"], dtype=np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(_byte_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_byte_tensor(state["cuda"]))


def _to_plain(obj):
    """random.getstate() is nested tuples; store lists (tuples survive too, but be explicit)."""
    return [_to_plain(x) for x in obj] if isinstance(obj, tuple) else obj


def _to_tuple(obj):
    return tuple(_to_tuple(x) for x in obj) if isinstance(obj, list) else obj
