"""Fitting pre-trained weights to a model of other input geometry: channels and patch grid.

Pure functions on state dicts, used by ``maekit pretrain --init`` (channels and grid) and by
``finetune``/``linprobe --finetune`` (channels; the grid by the official fine-tuning rule):

- input channels: the first conv (``patch_embed.proj`` / ConvMAE's ``patch_embed1.proj``) is
  adapted with timm's ``adapt_input_conv``: one channel = the sum of the RGB kernels (a gray
  image is an RGB image with three equal channels, so the response is unchanged); more
  channels = the kernels repeated and scaled by old / new, so the summed response keeps its size.
- the decoder's output layer (``decoder_pred``, p x p x C outputs per token, channel fastest)
  follows: one channel = the mean of the RGB predictions of each pixel (the best guess of a
  gray value from three equal channels); more channels = channel c predicts like old channel
  c mod C_old.
- position tables: a fixed sin-cos table is recomputed for the new grid (the model's own,
  built at construction); any other (learned) table is resized bicubically.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import adapt_input_conv

from ..models.family import Family, family_of
from ..models.pos_embed import interpolate_pos_embed, sincos_2d

SINCOS_ATOL = 1e-4  # float32 copies of the float64 table (official, PLSC, HF) agree far closer


def grid_of(args: dict, state: dict[str, torch.Tensor], family: Family) -> tuple[int, int] | None:
    """The patch grid a checkpoint was trained on, from its saved --input_size and patch size
    (the overall stride; else the family reads it from the weights); None when unknown."""
    size, patch = args.get("input_size"), args.get("patch_size")
    if patch is None:
        patch = family.patch_of(state)
    if size is None or patch is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    return h // patch, w // patch


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """(D, C_old, k, k) -> (D, in_chans, k, k), timm's rule (see the module docstring)."""
    return adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])


def adapt_output_channels(
    tensor: torch.Tensor, patch_size: int, old_chans: int, in_chans: int
) -> torch.Tensor:
    """``decoder_pred`` weight (p*p*C_old, Dd) or bias (p*p*C_old,) -> p*p*in_chans rows."""
    rest = tensor.shape[1:]
    t = tensor.reshape(patch_size * patch_size, old_chans, *rest)  # (p*p, C_old, ...)
    if in_chans == 1:
        t = t.float().mean(dim=1, keepdim=True).to(tensor.dtype)
    else:
        t = t[:, torch.arange(in_chans) % old_chans]
    return t.reshape(patch_size * patch_size * in_chans, *rest).contiguous()


def is_sincos(table: torch.Tensor, grid: tuple[int, int], extra: int) -> bool:
    """Is (1, extra + h*w, D) the fixed 2-D sin-cos table of ``grid`` (official layout)?"""
    dim = table.shape[-1]
    if dim % 4 or table.shape[1] != extra + grid[0] * grid[1]:
        return False
    ref = sincos_2d(dim, grid)
    return torch.allclose(table[0, extra:].float(), ref, atol=SINCOS_ATOL, rtol=0)


def adapt_channels(
    state: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state``'s input conv (and a pre-training model's output layer) made to fit
    ``model``'s input channels; (new state, one note per adaptation)."""
    state = dict(state)
    own = model.state_dict()
    layout = family_of(model).checkpoint
    notes: list[str] = []
    in_chans = model.in_chans
    old_chans = None
    for key in layout.input_convs:
        if key in state and key in own and state[key].shape[1] != in_chans:
            w = state[key]
            old_chans = w.shape[1]
            if w.shape[2:] != own[key].shape[2:]:
                break  # another patch size: reported as a shape mismatch by the caller
            state[key] = adapt_input_channels(w, in_chans)
            how = (
                f"sum of the {old_chans} kernels"
                if in_chans == 1
                else f"kernels repeated, scaled by {old_chans}/{in_chans}"
            )
            notes.append(
                f"adapted {key.rsplit('.', 1)[0]} {old_chans} -> {in_chans} input channels ({how}, timm's adapt_input_conv)"
            )
    p = model.patch_size
    for leaf in ("weight", "bias") if layout.output_layer else ():
        key = f"{layout.output_layer}.{leaf}"
        if old_chans and key in state and key in own and state[key].shape != own[key].shape:
            if state[key].shape[0] == p * p * old_chans:
                state[key] = adapt_output_channels(state[key], p, old_chans, in_chans)
                if leaf == "weight":
                    how = "mean of the" if in_chans == 1 else "repeated"
                    notes.append(
                        f"adapted {layout.output_layer} {p * p * old_chans} -> {p * p * in_chans} outputs ({how} per-channel predictions)"
                    )
    return state, notes


def adapt_to_model(
    state: dict[str, torch.Tensor], model: nn.Module, old_grid: tuple[int, int] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` made to fit ``model``'s channels and grid; (new state, one note per adaptation)."""
    state, notes = adapt_channels(state, model)
    own = model.state_dict()
    family = family_of(model)
    layout = family.checkpoint
    grid = tuple(family.token_grid(model))
    extra = family.prefix_tokens
    recomputed, resized, old_shown = [], [], ""
    for key in layout.pos_tables:
        if key not in state or key not in own:
            continue
        table = state[key]
        tokens = table.shape[1] - extra
        old = old_grid if old_grid and old_grid[0] * old_grid[1] == tokens else None
        if old is None:
            side = round(tokens**0.5)
            old = (side, side) if side * side == tokens else None
        if table.shape == own[key].shape and (old is None or old == grid):
            continue  # the same grid: the checkpoint's own table
        if old is None:
            continue  # unknown geometry: the caller reports the shape mismatch
        old_shown = f"{old[0]}x{old[1]}"
        if table.shape[-1] == own[key].shape[-1] and is_sincos(table, old, extra):
            del state[key]  # the model built the sin-cos table of its own grid
            recomputed.append(key)
        elif table.shape[-1] == own[key].shape[-1]:
            state[key] = interpolate_pos_embed(table, grid, extra, old)
            resized.append(key)
    shown = f"{grid[0]}x{grid[1]}"
    if recomputed:
        notes.append(
            f"recomputed {' and '.join(recomputed)} for the {shown} grid (fixed sin-cos; the checkpoint's was {old_shown})"
        )
    if resized:
        notes.append(f"resized {' and '.join(resized)} bicubically to the {shown} grid")
    return state, notes
