"""ViT encoder for fine-tuning and linear probing: timm's VisionTransformer, MAE-configured.

A thin subclass so that checkpoints load into ``timm.create_model('vit_*')`` unchanged:
LayerNorm eps 1e-6, qkv bias, and either a global-pool head (mean of the patch tokens,
cls excluded -> ``fc_norm`` -> ``head``; no ``norm``) or the cls-token head
(``norm`` -> cls -> ``head``), as in the MAE fine-tuning code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from .decoder import DECODER_PATTERNS
from .family import HEAD_PATTERNS


class VisionTransformerEncoder(VisionTransformer):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        global_pool: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool="avg" if global_pool else "token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            drop_path_rate=drop_path_rate,
        )
        self.uses_global_pool = global_pool
        self.patch_size = patch_size  # the geometry the family's rules read (as the MAE model)
        self.in_chans = in_chans

    def no_weight_decay(self) -> set[str]:
        """Fine-tuning excludes these (besides 1-D params) from weight decay, as the official."""
        return {"pos_embed", "cls_token", "dist_token"}


# --------------------------------------------------------------------------- the ViT family's rules
# (read through the family spec in zoo.py; see maekit/models/family.py)


def vit_layer_id(name: str, num_layers: int) -> int:
    """Official ViT layer ids: 0 for cls/pos/patch embed, i+1 for blocks.i, num_layers for the rest."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def vit_num_layers(model: nn.Module) -> int:
    return len(model.blocks) + 1


def vit_units(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (encoder, then the MAE decoder's): FSDP units, --grad_ckpt blocks."""
    return [*model.blocks, *getattr(model, "decoder_blocks", ())]


def vit_token_grid(model: nn.Module) -> tuple[int, int]:
    return tuple(model.patch_embed.grid_size)


def vit_mask_cells(model: nn.Module) -> int:
    """MAE masks single patches."""
    h, w = vit_token_grid(model)
    return h * w


# Every key a ViT / MAE state dict (our = the official = timm's names) may hold.
VIT_KEYS = tuple(
    re.compile(p)
    for p in (
        r"cls_token",
        r"pos_embed",
        r"patch_embed\.proj\.(?:weight|bias)",
        r"blocks\.\d+\.(?:norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|ls1|ls2)\.\w+",
        r"norm\.(?:weight|bias)",
        *DECODER_PATTERNS,
        *HEAD_PATTERNS,
    )
)


def vit_owns(state: Mapping[str, torch.Tensor]) -> bool:
    """A ViT / MAE state dict: only the ViT names, with the patch embedding and a position table
    (a Hiera or ConvMAE dict has other names, e.g. ``blocks.1.proj``, ``patch_embed1``)."""
    from .family import keys_match

    return (
        keys_match(state, VIT_KEYS) and "patch_embed.proj.weight" in state and "pos_embed" in state
    )


def vit_patch_of(state: Mapping[str, torch.Tensor]) -> int | None:
    """A ViT's patch-embedding conv is one patch (kernel = stride)."""
    w = state.get("patch_embed.proj.weight")
    return int(w.shape[-1]) if w is not None and w.ndim == 4 else None


def vit_pooled_norm(model: nn.Module) -> nn.Module | None:
    """The norm of the mean-pooled tokens: a fine-tuning encoder's ``fc_norm`` (an Identity in
    timm's cls-token mode); the pre-training model has none (its tokens are normalised)."""
    return getattr(model, "fc_norm", None)
