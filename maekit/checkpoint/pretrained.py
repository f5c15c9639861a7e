"""Pre-trained weights into a model: ``--finetune``, ``pretrain --init``, and
:func:`load_checkpoint` (``maekit.load_checkpoint``, any file into any model).

Fine-tuning / linear probing an encoder from a pre-training checkpoint.

Any checkpoint format is accepted (:mod:`maekit.formats`: official/our .pth, PLSC .pd and
.pdparams, safetensors, timm). The official rules: take ``ckpt['model']``; drop ``head.*``
when its shape differs from the new head's; resize ``pos_embed`` bicubically to the new patch grid (cls row kept); load
non-strictly; the missing keys must be exactly the head (+ ``fc_norm`` with global pool);
re-initialise the head with trunc_normal(std=2e-5). Decoder, ``mask_token`` and (with
global pool) the encoder ``norm`` are simply unused.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from ..errors import MaekitError
from ..formats.loader import load_state_dict, read_file, strip_prefixes
from ..models.family import HEAD_KEYS, POOL_NORM_KEYS, CheckpointLayout, family_of
from ..models.pos_embed import interpolate_pos_embed
from .adapt import adapt_channels, adapt_to_model, grid_of
from .state_dict import keys_error, shape_error, shape_mismatches


def expected_missing_keys(global_pool: bool, layout: CheckpointLayout | None = None) -> set[str]:
    """The keys a pre-training checkpoint lacks for an encoder: its head (+ the pooled-token norm
    with global pool); ``layout``: the encoder family's (timm's names by default)."""
    keys = set(layout.head if layout else HEAD_KEYS)
    if global_pool:
        keys |= set(layout.pool_norm if layout else POOL_NORM_KEYS)
    return keys


def adapt_state_dict(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    source: str = "the checkpoint",
    old_grid: tuple[int, int] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Pre-trained weights -> this model's shapes. Returns (state, notes on what changed)."""
    state, notes = adapt_channels(strip_prefixes(state)[0], model)  # RGB weights -> N channels
    own = model.state_dict()
    family = family_of(model)
    for k in family.checkpoint.head:
        if k in state and k in own and state[k].shape != own[k].shape:
            notes.append(f"dropped {k} {tuple(state[k].shape)} (new head is {tuple(own[k].shape)})")
            del state[k]
    for key in family.checkpoint.pos_tables:  # the encoder's tables (no decoder's here)
        if key not in state or key not in own or state[key].shape == own[key].shape:
            continue
        extra = family.prefix_tokens
        grid = tuple(family.token_grid(model))
        old = tuple(state[key].shape)
        try:
            n_old = state[key].shape[1] - extra
            known = old_grid if old_grid and old_grid[0] * old_grid[1] == n_old else None
            state[key] = interpolate_pos_embed(state[key], grid, extra, known)
        except ValueError as e:
            raise MaekitError(
                f"--finetune {source}: cannot resize {key} {old} to a {grid} grid: {e}"
            ) from e
        if state[key].shape != own[key].shape:
            raise MaekitError(
                f"--finetune {source}: shape mismatch for {key} {old} vs the model's {tuple(own[key].shape)}; "
                "the checkpoint has another width (embed_dim): pick the matching --model"
            )
        notes.append(f"interpolated {key} {old} -> {tuple(state[key].shape)}")
    return state, notes


def refuse_non_finite(state: dict[str, torch.Tensor], flag: str) -> None:
    """Weights with NaN or inf would train to a non-finite loss at step 1, with advice about
    the lr that cannot help: refused at load, naming the tensors."""
    bad = [
        (k, int((~torch.isfinite(v)).sum()))
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        total = sum(n for _, n in bad)
        raise MaekitError(
            f"{flag} holds {total} non-finite (NaN or inf) values in {len(bad)} tensors (e.g. "
            f"{bad[0][0]}): the file is damaged or was saved from a run that diverged; give "
            "another checkpoint (an earlier one of that run)"
        )


def load_pretrained_encoder(model: nn.Module, path: str | Path, global_pool: bool) -> list[str]:
    """Load ``path`` (any format :mod:`maekit.formats` reads) into ``model`` by the official
    fine-tuning rules; returns the one-line summary for the log."""
    ckpt = read_file(path)
    state, report = ckpt.model, ckpt.report
    args = ckpt.extras.get("args") if isinstance(ckpt.extras.get("args"), dict) else {}
    family = family_of(model)
    refuse_non_finite(state, f"--finetune {path}")
    state, notes = adapt_state_dict(state, model, str(path), grid_of(args, state, family))
    report.notes += notes
    wrong = shape_mismatches(state, model)
    if wrong:
        raise shape_error(
            f"--finetune {path}",
            state,
            model,
            wrong,
            "pick the --model (and --patch_size/--input_size) it was pre-trained with",
        )
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys)
    expected = expected_missing_keys(global_pool, family.checkpoint)
    offending = sorted(missing - expected)
    if offending:
        raise MaekitError(
            f"--finetune {path} does not match {type(model).__name__}: missing keys "
            f"{', '.join(offending[:10])}{' ...' if len(offending) > 10 else ''} "
            f"(only {', '.join(sorted(expected))} may be missing); "
            "pick the --model it was pre-trained with, and --global_pool/--cls_token to match"
        )
    if family.checkpoint.head[0] in missing:  # a pre-training checkpoint: new head, official init
        trunc_normal_(model.head.weight, std=2e-5)
        nn.init.zeros_(model.head.bias)
    report.loaded = len(state) - len(result.unexpected_keys)
    report.missing, report.unused = sorted(missing), list(result.unexpected_keys)
    report.missing_label = "newly initialised"
    return [report.summary()]


def init_from_checkpoint(model: nn.Module, path: str | Path) -> str:
    """``pretrain --init``: the weights of ``path`` (any format maekit reads) in a pre-training
    model, fitted to its channels and grid (:mod:`.adapt`); returns the one-line summary.

    Encoder weights must all be there; a missing decoder keeps its fresh initialisation.
    """
    ckpt = read_file(path)
    report = ckpt.report
    args = ckpt.extras.get("args") if isinstance(ckpt.extras.get("args"), dict) else {}
    original = strip_prefixes(ckpt.model)[0]
    refuse_non_finite(original, f"--init {path}")
    layout = family_of(model).checkpoint
    state, notes = adapt_to_model(original, model, grid_of(args, original, family_of(model)))
    recomputed = {k for k in original if k not in state}  # fixed tables the model rebuilt
    report.notes += notes
    wrong = shape_mismatches(state, model)
    if wrong:
        raise shape_error(
            f"--init {path}",
            state,
            model,
            wrong,
            "pick the --model (and --patch_size) it was trained with",
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in recomputed]
    # A file may lack the decoder (released encoder-only files, ViTMAEModel, fine-tuned encoders)
    # and what the family lists (a global-pool encoder's final norm): initialised afresh.
    needed = [
        k for k in missing if not k.startswith((*layout.pretrain_only, *layout.init_may_lack))
    ]
    if needed:
        raise MaekitError(
            f"--init {path} lacks encoder weights of {type(model).__name__}: "
            f"{', '.join(needed[:6])}{' ...' if len(needed) > 6 else ''}; "
            "pick the --model it was trained with"
        )
    if any(k.startswith(layout.pretrain_only) for k in missing):
        report.notes.append("the checkpoint has no decoder: decoder freshly initialised")
    report.loaded = len(state) - len(result.unexpected_keys)
    report.missing, report.unused = sorted(missing), list(result.unexpected_keys)
    report.missing_label = "newly initialised"
    return "init from " + report.summary()


def load_checkpoint(
    path: str | Path, model: nn.Module | None = None, strict: bool = False, verbose: bool = True
) -> dict[str, torch.Tensor]:
    """Read any supported checkpoint into a state dict with our (= timm's) names.

    With ``model``, also load it (non-strict unless ``strict``; shapes must match) and report
    missing and unused keys. ``verbose`` prints the one-line summary.
    """
    state, report = load_state_dict(path)
    if model is not None:
        own = model.state_dict()
        wrong = shape_mismatches(state, model)
        if wrong:
            raise shape_error(str(path), state, model, wrong, "pick the model it was saved from")
        report.missing = [k for k in own if k not in state]
        report.unused = [k for k in state if k not in own]
        report.loaded = len(state) - len(report.unused)
        if strict and (report.missing or report.unused):
            raise keys_error(
                str(path),
                model,
                report.missing,
                report.unused,
                "pass strict=False to load the keys both have",
            )
        model.load_state_dict(state, strict=False)
    if verbose:
        print(report.summary())
    return state
