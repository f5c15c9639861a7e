"""The speed switches a phase applies to its model: fused attention, activation checkpointing,
torch.compile. Models never see the flags; :mod:`.parallelize` applies them to the built model.

- Fused attention: timm's attention modules carry a ``fused_attn`` attribute; when True they
  call ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels, no (N, H, L, L)
  score matrix kept for backward). It is on by default; the benchmark's reference turns it off.
- Activation checkpointing: any model with timm's ``set_grad_checkpointing(enable)`` (timm's
  VisionTransformer, our MAE): block activations are recomputed in backward instead of kept.
- ``torch.compile`` of the module the training step calls (the DDP wrapper in a multi-process
  run, so DDP's graph splitting at bucket boundaries applies).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import MaekitError


def set_fused_attention(model: nn.Module, enable: bool) -> int:
    """Switch every attention module that has timm's ``fused_attn`` flag; returns how many."""
    n = 0
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = enable
            n += 1
    return n


def fused_attention_modules(model: nn.Module) -> tuple[int, int]:
    """(attention modules using the fused kernel, attention modules with the flag)."""
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    return sum(bool(f) for f in flags), len(flags)


def enable_grad_checkpointing(model: nn.Module, name: str = "the model") -> None:
    """Recompute block activations in backward (--grad_ckpt): less memory, ~1/3 more compute."""
    if not hasattr(model, "set_grad_checkpointing"):
        raise MaekitError(
            f"{name} has no activation checkpointing (set_grad_checkpointing); drop --grad_ckpt"
        )
    model.set_grad_checkpointing(True)


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``; compilation itself happens on the first steps."""
    if not hasattr(torch, "compile"):
        raise MaekitError("--compile needs torch.compile (torch >= 2.0); drop --compile")
    return torch.compile(model)
