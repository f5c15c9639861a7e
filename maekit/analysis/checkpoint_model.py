"""A model restored from a maekit checkpoint for analysis (reconstructions, features, kNN).

Model name and sizes come from the ``args`` dict saved in every maekit checkpoint
(``model``, ``input_size``, ``patch_size``, ``in_chans``, ``norm_pix_loss``, ``mean``, ``std``);
flags override
them, and are needed for files without ``args`` (e.g. the released ``mae_pretrain_*.pth``).
Pre-training checkpoints give the MAE model; fine-tune / linear-probe checkpoints give the
encoder without its head (the head is not needed for features).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..checkpoint.state_dict import keys_error, shape_error, shape_mismatches
from ..config import CheckpointModelConfig
from ..config.fields import check_stats
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, resolve_stats
from ..errors import MaekitError
from ..formats.loader import read_checkpoint, strip_prefixes
from ..models import create_model, get_entry


@dataclass
class CheckpointModel:
    model: nn.Module
    name: str
    kind: str  # "pretrain" (MAE with decoder) or "encoder" (fine-tune / linear-probe ViT)
    input_size: int | list[int]  # [height, width] when not square
    in_chans: int
    norm_pix_loss: bool
    has_decoder: bool
    source: str  # the checkpoint path, or "random init"
    mean: tuple[float, ...] = IMAGENET_MEAN  # the normalisation the model was trained with
    std: tuple[float, ...] = IMAGENET_STD
    args: dict = field(default_factory=dict)  # the checkpoint's saved args ({} for none)


def read_state(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict without wrapper prefixes, saved args or {}) of a checkpoint file."""
    if not Path(path).exists():
        raise MaekitError(f"--checkpoint {path} does not exist; give a checkpoint-*.pth file")
    ckpt = read_checkpoint(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise MaekitError(
            f"--checkpoint {path} holds no state dict (expected a 'model' entry of tensors)"
        )
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    return strip_prefixes(state)[0], args


def load_checkpoint_model(
    cfg: CheckpointModelConfig,
    random_init: bool = False,
    norm_pix_loss: bool | None = None,
    need_decoder: bool = False,
) -> CheckpointModel:
    """Build the model the checkpoint (or, with ``random_init``, ``cfg.model``) describes; eval mode."""
    state, args = ({}, {}) if random_init else read_state(cfg.checkpoint)
    name = cfg.model or args.get("model")
    if not name:
        raise MaekitError(
            f"--checkpoint {cfg.checkpoint} has no saved config (args); pass --model "
            "(and --input_size/--patch_size if not the model's defaults)"
        )
    entry = get_entry(name)
    layout = entry.family.checkpoint
    input_size = cfg.input_size or args.get("input_size") or entry.defaults.get("img_size", 224)
    patch_size = cfg.patch_size or args.get("patch_size")
    in_chans = cfg.in_chans or args.get("in_chans") or 3
    kw = {"img_size": input_size, "in_chans": in_chans}
    if patch_size:
        kw["patch_size"] = patch_size
    if norm_pix_loss is None:
        norm_pix_loss = bool(args.get("norm_pix_loss", False))
    if entry.kind == "pretrain":
        kw["norm_pix_loss"] = norm_pix_loss
    else:
        # No head: features only. A global-pool checkpoint carries the pooled-token norm.
        heads = tuple(k.rsplit(".", 1)[0] + "." for k in layout.head)
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
        kw["num_classes"] = 0
        kw["global_pool"] = layout.pool_norm[0] in state if state else True
    if random_init:
        torch.manual_seed(cfg.seed)
    model = create_model(name, **kw)
    has_decoder = entry.kind == "pretrain"
    source = "random init"
    if not random_init:
        source = cfg.checkpoint
        wrong = shape_mismatches(state, model)
        if wrong:
            raise shape_error(
                f"--checkpoint {cfg.checkpoint}",
                state,
                model,
                wrong,
                f"pass the --model/--input_size/--patch_size it was trained with "
                f"(now {name} at {input_size} px)",
            )
        result = model.load_state_dict(state, strict=False)
        # The decoder is not needed for features (released encoder-only files lack it).
        decoder = layout.pretrain_only
        decoder_missing = [k for k in result.missing_keys if k.startswith(decoder)]
        missing = [k for k in result.missing_keys if not k.startswith(decoder)]
        unexpected = [k for k in result.unexpected_keys if not k.startswith(decoder)]
        if missing or unexpected:
            raise keys_error(
                f"--checkpoint {cfg.checkpoint}",
                model,
                missing,
                unexpected,
                f"pass the --model it was trained with (now {name})",
            )
        has_decoder = has_decoder and not decoder_missing
    if need_decoder and not has_decoder:
        what = "a fine-tuned encoder" if entry.kind == "encoder" else "encoder-only weights"
        raise MaekitError(
            f"--checkpoint {cfg.checkpoint} is {what} ({name}) without the MAE decoder; "
            "reconstructions need a full pre-training checkpoint"
        )
    model.eval()
    mean, std = cfg.mean, cfg.std
    saved_mean, saved_std = args.get("mean"), args.get("std")
    if mean is None and saved_mean and len(saved_mean) == in_chans:
        mean = saved_mean
    if std is None and saved_std and len(saved_std) == in_chans:
        std = saved_std
    check_stats(mean, std, in_chans)
    mean, std = resolve_stats(in_chans, mean, std)
    return CheckpointModel(
        model, name, entry.kind, input_size, in_chans, norm_pix_loss, has_decoder, source, mean, std,
        args,
    )  # fmt: skip
