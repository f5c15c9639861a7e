"""The linear-probe head in state dicts: ``head.0`` (BatchNorm1d, affine=False, eps 1e-6) then
``head.1`` (Linear), as the official linear probe builds it; exports fold it into one Linear."""

from __future__ import annotations

import torch

LINPROBE_BN_EPS = 1e-6  # the official linear probe's BatchNorm1d eps


def fold_linprobe_head(state: dict) -> dict:
    """head.0 (BatchNorm1d) + head.1 (Linear) -> one Linear ``head``: W' = W/s, b' = b - W' m."""
    mean, var = state["head.0.running_mean"].double(), state["head.0.running_var"].double()
    scale = 1.0 / torch.sqrt(var + LINPROBE_BN_EPS)
    shift = -mean * scale
    if "head.0.weight" in state:  # an affine BatchNorm, should one appear
        scale = scale * state["head.0.weight"].double()
        shift = shift * state["head.0.weight"].double() + state["head.0.bias"].double()
    weight, bias = state["head.1.weight"].double(), state["head.1.bias"].double()
    dtype = state["head.1.weight"].dtype
    out = {k: v for k, v in state.items() if not k.startswith(("head.0.", "head.1."))}
    out["head.weight"] = (weight * scale[None, :]).to(dtype)
    out["head.bias"] = (bias + weight @ shift).to(dtype)
    return out
