"""Learning-rate rules as pure functions (linear scaling, warm-up + half-cycle cosine)."""

from __future__ import annotations

import math

import torch

from ..config import CommonConfig


def scaled_lr(blr: float, effective_batch: int) -> float:
    """Linear scaling rule: lr = blr * effective_batch / 256."""
    return blr * effective_batch / 256


def absolute_lr(cfg: CommonConfig, world_size: int) -> tuple[float, int]:
    """(absolute lr, effective batch): --lr if given, else --blr x effective batch / 256."""
    eff = cfg.batch_size * cfg.accum_iter * world_size
    return (cfg.lr if cfg.lr is not None else scaled_lr(cfg.blr, eff)), eff


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """lr at fractional epoch ``epoch``: linear warm-up, then half-cycle cosine to ``min_lr``."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr, honouring a per-group ``lr_scale`` (layer decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
