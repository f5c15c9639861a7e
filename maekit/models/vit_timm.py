"""The ViT family's export to timm: our encoders -> timm's ``VisionTransformer`` state dicts.

(The family spec in zoo.py names these functions; ``maekit convert --to timm`` calls them.)

Our ViT encoders *are* timm VisionTransformers and the MAE encoder uses the same module
names, so most keys carry over unchanged in both directions. What differs:

- an MAE pre-training checkpoint also holds the decoder and ``mask_token`` (dropped);
- the final norm: timm's ``global_pool='token'`` model applies ``norm`` to every token, its
  ``global_pool='avg'`` model has no ``norm`` and applies ``fc_norm`` to the pooled features.
  Exporting an MAE encoder for an 'avg' model moves ``norm`` to ``fc_norm`` (the usual choice
  for MAE features; the official fine-tuning instead starts ``fc_norm`` afresh);
- the linear-probe head ``BatchNorm1d(affine=False) -> Linear`` (``head.0``, ``head.1``) is
  folded into the single Linear ``head`` timm has (exact in eval mode).

timm -> ours needs no renaming: timm's files load through :mod:`.loader` as they are.
"""

from __future__ import annotations

import torch

from ..errors import MaekitError
from .family import describe_keys
from .probe_head import fold_linprobe_head
from .vit import vit_owns

MAE_ONLY_PREFIXES = ("decoder_", "mask_token")
# embed_dim -> (timm name stem, standard depth)
TIMM_VITS = {
    192: ("vit_tiny", 12),
    384: ("vit_small", 12),
    768: ("vit_base", 12),
    1024: ("vit_large", 24),
    1280: ("vit_huge", 32),
}


def _rename(state: dict, old: str, new: str) -> dict:
    return {(new + k[len(old) :] if k.startswith(old + ".") else k): v for k, v in state.items()}


def to_timm(
    state: dict[str, torch.Tensor], global_pool: bool | None = None
) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """Our encoder / MAE state dict -> timm ViT names.

    ``global_pool``: True for timm's ``global_pool='avg'``, False for ``'token'``, None to keep
    what the checkpoint was trained with (``fc_norm`` present -> avg). Returns (state, notes,
    global_pool used).
    """
    if not vit_owns(state):
        # Checked, not assumed: a Hiera or ConvMAE dict would otherwise pass through renamed.
        raise MaekitError(
            f"these weights are not a ViT / MAE state dict ({describe_keys(state)}); only the "
            "ViT family exports to timm's VisionTransformer names"
        )
    notes = []
    out = {k: v for k, v in state.items() if not k.startswith(MAE_ONLY_PREFIXES)}
    if len(out) < len(state):
        notes.append(f"dropped the MAE decoder and mask_token ({len(state) - len(out)} tensors)")
    has_norm, has_fc_norm = "norm.weight" in out, "fc_norm.weight" in out
    if global_pool is None:
        global_pool = has_fc_norm and not has_norm
    if global_pool and not has_fc_norm:
        out = _rename(out, "norm", "fc_norm")
        notes.append(
            "renamed norm -> fc_norm (timm's global_pool='avg' normalises pooled features)"
        )
    elif not global_pool and not has_norm:
        raise MaekitError(
            "this encoder was fine-tuned with global pooling (it has fc_norm, no norm), so it "
            "has no cls-token head; export it with --global_pool (timm global_pool='avg')"
        )
    else:
        unused = "norm" if global_pool else "fc_norm"
        n = sum(k.startswith(unused + ".") for k in out)
        if n:
            out = {k: v for k, v in out.items() if not k.startswith(unused + ".")}
            notes.append(
                f"dropped {unused} (unused by timm's global_pool={'avg' if global_pool else 'token'!r})"
            )
    if "head.0.running_mean" in out:
        out = fold_linprobe_head(out)
        out.pop("head.0.num_batches_tracked", None)
        notes.append("folded the linear-probe BatchNorm into the head Linear")
    return out, notes, global_pool


def _registered_heads(name: str | None) -> int | None:
    """num_heads of a registered model (the run's --model), None if unknown."""
    from .registry import get_entry, is_registered

    if not name or not is_registered(name):
        return None
    heads = get_entry(name).defaults.get("num_heads")
    return int(heads) if isinstance(heads, int) else None


def timm_create_call(
    state: dict[str, torch.Tensor], global_pool: bool, args: dict | None = None
) -> str:
    """The ``timm.create_model(...)`` call whose model loads ``state`` (a to_timm result) strictly.

    ``args["input_size"]``: the (H, W) the family checked against the position table
    (:meth:`~.family.Family.input_size`); without it the grid is taken as square."""
    dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    tokens = state["pos_embed"].shape[1] - (1 if "cls_token" in state else 0)
    size = (args or {}).get("input_size")
    if size is None:
        size = round(tokens**0.5) * patch
    elif not isinstance(size, int):
        h, w = (int(v) for v in size)
        size = h if h == w else (h, w)  # timm takes a tuple for H != W
    img_size = size
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    stem, std_depth = TIMM_VITS.get(dim, ("vit_base", 12))
    name = f"{stem}_patch{14 if stem == 'vit_huge' else 16}_224"
    kw = [
        f"pretrained=False, img_size={img_size}, patch_size={patch}, num_classes={num_classes}",
        f"global_pool={'avg' if global_pool else 'token'!r}",
    ]
    if in_chans != 3:
        kw.append(f"in_chans={in_chans}")
    if dim not in TIMM_VITS:  # a width timm has no name for: its heads from the saved model name
        heads = _registered_heads((args or {}).get("model"))
        kw.append(f"embed_dim={dim}, num_heads={heads or '<your model heads>'}")
    if depth != std_depth:
        kw.append(f"depth={depth}")
    return f"timm.create_model({name!r}, {', '.join(kw)})"
