"""ViT encoder for fine-tuning and linear probing: timm's VisionTransformer, MAE-configured.

A thin subclass so that checkpoints load into ``timm.create_model('vit_*')`` unchanged:
LayerNorm eps 1e-6, qkv bias, and either a global-pool head (mean of the patch tokens,
cls excluded -> ``fc_norm`` -> ``head``; no ``norm``) or the cls-token head
(``norm`` -> cls -> ``head``), as in the MAE fine-tuning code.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer


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

    def no_weight_decay(self) -> set[str]:
        """Fine-tuning excludes these (besides 1-D params) from weight decay, as the official."""
        return {"pos_embed", "cls_token", "dist_token"}
