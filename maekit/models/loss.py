"""The MAE reconstruction loss, shared by MAE and ConvMAE: a pure function."""

from __future__ import annotations

import torch


def masked_patch_mse(
    target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False
) -> torch.Tensor:
    """Mean squared error per patch, averaged over the removed patches only.

    target, pred: (N, L, p*p*C) (target from ``patchify``); mask: (N, L), 1 = removed.
    With ``norm_pix`` each target patch is normalised by its own mean and unbiased variance.
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the official
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (N, L)
    return (loss * mask).sum() / mask.sum()
