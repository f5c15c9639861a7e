"""Foreign checkpoint files written in-process, without Paddle (or the official code)."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from maekit.models import create_model

SMALL = dict(img_size=32, patch_size=8)


def tiny_mae(seed: int = 0, depth: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mae_vit_tiny_patch16", depth=depth, decoder_depth=1, **SMALL).eval()


def tiny_encoder(seed: int = 1, global_pool: bool = True, num_classes: int = 10, depth: int = 2):
    torch.manual_seed(seed)
    return create_model(
        "vit_tiny_patch16", depth=depth, num_classes=num_classes, global_pool=global_pool, **SMALL
    ).eval()


def _tensors(module: nn.Module):
    yield from module.named_parameters(recurse=False)
    yield from module.named_buffers(recurse=False)


def paddle_layout(model: nn.Module) -> dict[str, np.ndarray]:
    """``model``'s weights as Paddle keeps them: Linear weights [in, out], BatchNorm statistics
    as ``_mean``/``_variance`` and no step counter. Decided by module type, not by the name/ndim
    rule the loader uses, so the two are independent."""
    out = {}
    for mod_name, mod in model.named_modules():
        for name, t in _tensors(mod):
            arr = t.detach().numpy().copy()
            if isinstance(mod, nn.Linear) and name == "weight":
                arr = np.ascontiguousarray(arr.T)
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if name == "num_batches_tracked":
                    continue
                name = {"running_mean": "_mean", "running_var": "_variance"}.get(name, name)
            out[f"{mod_name}.{name}" if mod_name else name] = arr
    return out


@torch.no_grad()
def set_from_paddle(model: nn.Module, arrays: dict[str, np.ndarray]) -> nn.Module:
    """The reference: Paddle arrays set into our model directly, transposing Linear weights."""
    for mod_name, mod in model.named_modules():
        for name, t in _tensors(mod):
            if name == "num_batches_tracked":
                continue
            key = {"running_mean": "_mean", "running_var": "_variance"}.get(name, name)
            arr = torch.from_numpy(arrays[f"{mod_name}.{key}" if mod_name else key])
            t.copy_(arr.T if isinstance(mod, nn.Linear) and name == "weight" else arr)
    return model


def write_pd(path: Path, arrays: dict[str, np.ndarray], epoch: int = 7, protocol: int = 4) -> Path:
    """A PLSC ``checkpoint-N.pd``: tensors as (paddle_name, array) tuples, args a Namespace."""
    model = {k: (f"param_{i}.w_0", a) for i, (k, a) in enumerate(arrays.items())}
    optimizer = {f"param_{i}.w_0_moment1_0": (f"m_{i}", np.zeros(2, np.float32)) for i in range(3)}
    optimizer["LR_Scheduler"] = {"last_epoch": 10, "last_lr": 0.001}
    ckpt = {
        "model": model,
        "optimizer": optimizer,
        "epoch": epoch,
        "scaler": {"scale": np.array([1024.0], np.float32), "incr_count": 3},
        "args": argparse.Namespace(model="mae_vit_tiny_patch16", blr=1.5e-4, norm_pix_loss=True),
    }
    path.write_bytes(pickle.dumps(ckpt, protocol=protocol))
    return path


def write_pdparams(path: Path, arrays: dict[str, np.ndarray], protocol: int = 2) -> Path:
    """A flat ``.pdparams``: bare arrays plus Paddle's structured-name table."""
    flat = dict(arrays)
    flat["StructuredToParameterName@@"] = {k: f"param_{i}.w_0" for i, k in enumerate(arrays)}
    path.write_bytes(pickle.dumps(flat, protocol=protocol))
    return path


def write_official_pth(path: Path, state: dict, epoch: int = 799) -> Path:
    """An official MAE-style checkpoint: args pickled as an argparse.Namespace."""
    args = argparse.Namespace(
        model="mae_vit_tiny_patch16", blr=1.5e-4, norm_pix_loss=True, input_size=32
    )
    optimizer = {
        "state": {},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0, 1]}],
    }
    torch.save(
        {"model": state, "optimizer": optimizer, "epoch": epoch, "scaler": None, "args": args}, path
    )
    return path


# Issue 27's geometry: 4 channels, H != W (a 4 x 6 patch grid at patch 8).
WIDE = dict(img_size=(32, 48), patch_size=8, in_chans=4)
WIDE_ARGS = {"input_size": [32, 48], "patch_size": 8, "in_chans": 4}


def wide_mae(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mae_vit_tiny_patch16", depth=2, decoder_depth=1, **WIDE).eval()


def wide_encoder(seed: int = 1, global_pool: bool = False, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(
        "vit_tiny_patch16", depth=2, num_classes=num_classes, global_pool=global_pool, **WIDE
    ).eval()
