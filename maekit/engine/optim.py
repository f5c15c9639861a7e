"""Parameter groups and optimizers, following the official recipes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn


def weight_decay_groups(
    model: nn.Module, weight_decay: float, skip: Iterable[str] = ()
) -> list[dict]:
    """Two groups: no decay for biases, 1-D params (norms) and names in ``skip``; decay otherwise.

    Frozen parameters (the fixed sin-cos pos-embeds) are left out entirely. cls/mask tokens
    are 3-D and therefore decayed during MAE pre-training, as in the official code.
    """
    skip = set(skip)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def build_adamw(
    groups: list[dict],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    device: torch.device | None = None,
) -> torch.optim.AdamW:
    """AdamW; the fused CUDA kernel when all params live on a CUDA device."""
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
