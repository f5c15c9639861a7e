"""The one way maekit reads weights: detect the format, load it safely, convert to our names.

Formats, recognised by content (the suffix only breaks ties):

- PyTorch ``.pth`` (zip or legacy): ours and the official MAE/ConvMAE files
  (``mae_pretrain_vit_*.pth``, ``*_full.pth``, ``mae_visualize_*.pth``, fine-tune and
  linear-probe checkpoints), timm weights, and bare state dicts. The weights are taken from
  ``model``, else ``state_dict``, else the dict itself; ``module.`` / ``_orig_mod.``
  prefixes are stripped. Read with ``torch.load(weights_only=True)``.
- PLSC Paddle ``.pd`` checkpoints and ``.pdparams`` (see :mod:`.paddle`), read with the
  restricted unpickler.
- ``.safetensors`` (no code at all in the format).
- Hugging Face ``save_pretrained`` folders (config.json + weights) of ViTMAEForPreTraining,
  ViTMAEModel and ViTForImageClassification, or their weights file alone (see :mod:`.hf`).

Our module names are timm's and the official ones, so only Paddle and HF files need renaming.
"""

from __future__ import annotations

import argparse
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.folder import UnreadableImage, open_regular
from ..errors import MaekitError
from .hf import CONFIG, hf_to_maekit, is_hf_dir, is_hf_state, read_hf_dir, read_json
from .paddle import read_paddle
from .report import LoadReport
from .safe_pickle import load_pickle, load_torch, unreadable

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
STATE_KEYS = ("model", "state_dict")  # where checkpoints keep their weights, in order


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]  # converted to our names
    extras: dict  # the other top-level entries (epoch, args as a dict, optimizer, ...)
    report: LoadReport


def detect_format(path: str | Path) -> str:
    """``'torch'`` (zip or legacy .pth), ``'pickle'`` (plain pickle: Paddle), ``'safetensors'``
    or ``'hf'`` (a Hugging Face save_pretrained folder)."""
    path = Path(path)
    if path.is_dir():
        if is_hf_dir(path):
            return "hf"
        raise MaekitError(
            f"checkpoint {path} is a directory without a config.json; give a checkpoint "
            f"file in it (e.g. {path / 'checkpoint-last.pth'}) or a Hugging Face "
            "save_pretrained folder"
        )
    if not path.exists():
        raise MaekitError(
            f"checkpoint {path} does not exist; check the path given to --resume/--finetune"
        )
    try:
        with open_regular(path) as f:  # a FIFO or device is refused, never waited on
            head = f.read(9)
    except UnreadableImage as e:
        raise MaekitError(f"could not read checkpoint {e}; give a checkpoint file") from e
    size = path.stat().st_size
    if not head:
        raise MaekitError(f"could not read checkpoint {path}: the file is empty")
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        return "safetensors"  # 8-byte header length, then the JSON header
    if head.startswith(b"PK"):  # torch.save's zip container (possibly truncated)
        return "torch"
    if head[0] == 0x80:  # pickle protocol >= 2: Paddle, or torch's legacy format (checked later)
        return "pickle"
    if path.suffix == ".safetensors":
        return "safetensors"
    raise MaekitError(
        f"could not read checkpoint {path}: not a PyTorch, Paddle or safetensors file; "
        "give a .pth, .pd, .pdparams or .safetensors checkpoint"
    )


def _plain_args(obj: dict) -> dict:
    """Official checkpoints pickle ``args`` as an argparse.Namespace; we keep a plain dict."""
    if isinstance(obj.get("args"), argparse.Namespace):
        return {**obj, "args": vars(obj["args"])}
    return obj


def _is_state(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def read_raw(path: str | Path) -> tuple[object, str]:
    """Load ``path`` safely without interpreting it: (object, format from :func:`detect_format`).
    The contents are checked to be plain data (:func:`check_contents`)."""
    if Path(path).is_dir() and (
        any(Path(path).glob("checkpoint*.pth")) or (Path(path) / "log.txt").exists()
    ):
        # a maekit run folder (its config.json is the run's, not a Hugging Face config)
        found = sorted(Path(path).glob("checkpoint*.pth"))
        names = [p.name for p in found]
        pick = next((n for n in ("checkpoint-best.pth", "checkpoint-last.pth") if n in names), None)
        example = f"{Path(path) / (pick or (names[-1] if names else 'checkpoint-last.pth'))}"
        raise MaekitError(
            f"{path} is a maekit run folder, not a checkpoint file; give a checkpoint in it, "
            f"e.g. {example}"
        )
    fmt = detect_format(path)
    if fmt == "hf":
        return read_hf_dir(path), fmt
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), fmt
        except Exception as e:
            raise unreadable(path, e) from e
    if fmt == "torch":
        obj = load_torch(path)
    else:
        obj = load_pickle(path)
        if isinstance(obj, int) and obj == torch.serialization.MAGIC_NUMBER:  # legacy torch file
            obj, fmt = load_torch(path), "torch"
    check_contents(obj, path)
    return obj, fmt


MAX_DEPTH = 64  # containers nested deeper than this are no checkpoint (ours nest about 6 deep)


def check_contents(obj: object, path: str | Path) -> None:
    """Refuse what loads safely but would break later with a traceback: numpy arrays of Python
    objects, containers nested absurdly deep (recursion in comparisons, printing), weights whose
    names are not strings. Iterative, so the check itself cannot overflow the stack."""
    stack = [(obj, 0)]
    while stack:
        x, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MaekitError(
                f"refusing {path}: its contents are nested more than {MAX_DEPTH} levels "
                "deep, which no checkpoint is; the file is damaged or crafted"
            )
        if isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise MaekitError(
                    f"refusing {path}: it holds a numpy array of Python objects "
                    f"(dtype {x.dtype}); checkpoints hold numeric arrays only"
                )
        elif isinstance(x, dict):
            stack.extend((item, depth + 1) for kv in x.items() for item in kv)
        elif isinstance(x, list | tuple | set | frozenset):
            stack.extend((item, depth + 1) for item in x)
        elif isinstance(x, argparse.Namespace):
            stack.append((vars(x), depth + 1))
    if not isinstance(obj, dict):
        return
    weights = [(k, obj[k]) for k in STATE_KEYS if isinstance(obj.get(k), dict)]
    if not weights and all(isinstance(v, torch.Tensor | np.ndarray) for v in obj.values()):
        weights = [("top-level", obj)]
    for where, state in weights:
        bad = next((k for k in state if not isinstance(k, str)), None)
        if bad is not None:
            raise MaekitError(
                f"refusing {path}: its {where!r} weights have a name that is not a string "
                f"({type(bad).__name__} {str(bad)[:40]}); the file is damaged or crafted"
            )


def _from_torch(obj: object, path: Path) -> tuple[dict, dict, str]:
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if _is_state(obj.get(key)):
                extras = _plain_args({k: v for k, v in obj.items() if k != key})
                epoch = f", epoch {extras['epoch']}" if isinstance(extras.get("epoch"), int) else ""
                return obj[key], extras, f"PyTorch checkpoint ('{key}' entry{epoch})"
        if _is_state(obj):
            return obj, {}, "PyTorch state dict"
    raise MaekitError(
        f"{path} holds no state dict (expected a 'model' or 'state_dict' entry of tensors, "
        "or a dict of tensors)"
    )


def strip_prefixes(state: dict) -> tuple[dict, dict[str, int]]:
    """Remove DDP's ``module.`` and torch.compile's ``_orig_mod.`` (in any nesting); counts."""
    out, counts = {}, {}
    for k, v in state.items():
        while k.startswith(WRAPPER_PREFIXES):
            prefix = next(p for p in WRAPPER_PREFIXES if k.startswith(p))
            counts[prefix] = counts.get(prefix, 0) + 1
            k = k[len(prefix) :]
        out[k] = v
    return out, counts


def read_file(path: str | Path) -> Checkpoint:
    """Load any supported checkpoint and convert its weights to our names."""
    return _convert(*read_raw(path), Path(path))


def _convert(obj: object, fmt: str, path: Path) -> Checkpoint:
    notes: list[str] = []
    if fmt == "hf":
        state, config = obj
        state, args, notes, arch = hf_to_maekit(state, config, str(path))
        extras, source = {"args": args}, f"Hugging Face {arch} folder"
    elif fmt == "safetensors":
        state, extras, source = obj, {}, "safetensors"
        if not state:
            raise MaekitError(f"{path} holds no tensors")
    elif fmt == "torch":
        state, extras, source = _from_torch(obj, path)
    else:
        state, extras, notes, source = read_paddle(obj, str(path))
    if fmt != "hf" and is_hf_state(state):  # a save_pretrained weights file given on its own
        sibling = path.parent / CONFIG
        config = read_json(sibling) if sibling.is_file() else None
        state, args, notes, arch = hf_to_maekit(state, config, str(path))
        extras = {**extras, "args": args}
        source = f"Hugging Face {arch} weights ({source})"
    state, stripped = strip_prefixes(state)
    if stripped:
        notes.insert(0, "stripped " + ", ".join(f"'{p}' ({n} keys)" for p, n in stripped.items()))
    return Checkpoint(state, extras, LoadReport(str(path), source, len(state), notes))


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely (tensors, numpy arrays, plain containers only), for
    resuming and for the ``args`` saved in it.

    PyTorch files come back as saved, with an official ``args`` Namespace turned into a dict;
    Paddle, safetensors and Hugging Face files as {model (in our names), epoch, args,
    optimizer: None, scaler: None}.
    """
    obj, fmt = read_raw(path)
    if fmt == "torch" and not (isinstance(obj, dict) and is_hf_state(obj)):
        if not isinstance(obj, dict):
            raise MaekitError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
        return _plain_args(obj)
    ckpt = _convert(obj, fmt, Path(path))
    return {"model": ckpt.model, "optimizer": None, "scaler": None, **ckpt.extras}


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """(state dict in our names, report) for any supported checkpoint."""
    ckpt = read_file(path)
    return ckpt.model, ckpt.report
