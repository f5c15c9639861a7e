"""MAE: masked autoencoder with a ViT encoder and a light ViT decoder (He et al. 2021).

Module and parameter names equal the official implementation's (which are timm's
VisionTransformer names), so state dicts interchange in both directions.
The model is single-device and precision-agnostic: no DDP, no autocast here.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from .decoder import MaskedDecoder, init_linear_and_norm, run_checkpointed
from .masking import random_masking
from .pos_embed import sincos_2d


class MaskedAutoencoderViT(MaskedDecoder, nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        # Recompute block activations in backward (set by the phase's --grad_ckpt, as timm's).
        self.grad_checkpointing = False

        # --- encoder ---
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sin-cos table; a Parameter (not a buffer) so the state-dict name matches.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)

        # --- decoder (shared with the other MAE families: decoder.py) ---
        self.build_decoder(
            embed_dim, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, prefix=1
        )

        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Official init: sin-cos tables, xavier on Linear and the patch conv (as a matrix)."""
        self.pos_embed.copy_(
            sincos_2d(self.pos_embed.shape[-1], self.grid_size, cls_token=True)[None]
        )
        self.init_decoder_tables()
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(
            w.view(w.shape[0], -1)
        )  # like a Linear; conv bias keeps torch default
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_linear_and_norm)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every encoder and decoder block (timm's method name)."""
        self.grad_checkpointing = enable

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            x = run_checkpointed(self.grad_checkpointing, blk, x)
        return x

    # --- forward pieces ---
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.patch_embed(imgs)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)  # (N, K, D)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1+K, D)
        x = self._run_blocks(self.blocks, x)
        return self.norm(x), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Encoder on every patch, in the original order, no masking: (N, 1+L, D) after the norm.

        For feature extraction: forward_encoder(imgs, 0.0) also keeps every patch, but in a
        random order, which scrambles per-token outputs. timm encoders have the same method.
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]  # (N, L, D)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1+L, D)
        x = self._run_blocks(self.blocks, x)
        return self.norm(x)
