"""ConvMAE: masked autoencoding with a hybrid conv-transformer encoder (Gao et al. 2022).

The encoder is the ConvViT backbone (see convvit.py). One random mask is drawn on the
stage-3 token grid and upsampled block-wise to the stage-1 (4x) and stage-2 (2x) grids; the
conv blocks zero masked positions before their depthwise conv, so visible outputs never see
masked pixels. Stage 3 runs on the visible tokens only. Multi-scale fusion: the stage-1 and
stage-2 outputs are brought to the token grid by a 4x4/4 and a 2x2/2 conv
(``stage1_output_decode``, ``stage2_output_decode``), taken at the visible tokens and added
to the stage-3 output before the final LayerNorm. The decoder and loss are MAE's, without a
cls token. Names, shapes, eps and init follow the official code; ``forward`` has MAE's
signature. Single-device and precision-agnostic: no DDP, no autocast here.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from .convvit import ConvViTBackbone, _nchw, _nhwc
from .decoder import MaskedDecoder, gather_tokens, init_linear_and_norm
from .masking import draw_mask
from .pos_embed import sincos_2d


class MaskedAutoencoderConvViT(MaskedDecoder, ConvViTBackbone):
    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: tuple[int, int, int] = (256, 384, 768),
        depth: tuple[int, int, int] = (2, 2, 11),
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        dense_stages: bool = False,
    ) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        d1, d2, d3 = embed_dim
        self.norm_pix_loss = norm_pix_loss
        # Stages 1-2 on every cell, masked (the official way), instead of at the visible cells
        # only: the same loss and gradients at ~1.4x the FLOPs; kept as the reference.
        self.dense_stages = dense_stages
        L = self.num_patches

        # --- encoder: multi-scale fusion and the parts around stage 3 ---
        self.stage1_output_decode = nn.Conv2d(d1, d3, kernel_size=4, stride=4)
        self.stage2_output_decode = nn.Conv2d(d2, d3, kernel_size=2, stride=2)
        # Fixed sin-cos table (no cls slot); a Parameter so the state-dict name matches.
        self.pos_embed = nn.Parameter(torch.zeros(1, L, d3), requires_grad=False)
        self.norm = norm_layer(d3)

        # --- decoder (MAE's, without a cls token: decoder.py) ---
        self.build_decoder(
            d3, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, prefix=0
        )

        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Official init: sin-cos tables, xavier on every Linear, LayerNorm 1/0, convs torch's."""
        self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size)[None])
        self.init_decoder_tables()
        # The official treats the *stage-3* patch-embed conv like a Linear (xavier on its
        # matrix view); the other convs keep torch's default init.
        w = self.patch_embed3.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_linear_and_norm)  # xavier_uniform Linear, zero bias; LayerNorm 1/0

    # --- forward pieces ---
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = imgs.shape[0]
        ids_keep, mask, ids_restore = draw_mask(n, self.num_patches, mask_ratio, noise, imgs.device)
        if self.dense_stages:
            x, stage1, stage2 = self.forward_stages(imgs, visible=1 - mask)  # x: (N, L, D3)
            # multi-scale features on the token grid, (N, L, D3) each
            stage1 = _nhwc(self.stage1_output_decode(_nchw(stage1))).flatten(1, 2)
            stage2 = _nhwc(self.stage2_output_decode(_nchw(stage2))).flatten(1, 2)
            x = gather_tokens(x + self.pos_embed, ids_keep)  # (N, K, D3): visible tokens only
            stage1, stage2 = gather_tokens(stage1, ids_keep), gather_tokens(stage2, ids_keep)
        else:  # the same numbers, computed at the visible tokens' cells only
            x, stage1, stage2 = self.forward_visible_stages(imgs, ids_keep)  # x: (N, K, D3)
            # each token's 4x4 / 2x2 cells -> one (N, K, D3) feature per visible token
            stage1 = self.stage1_output_decode(_nchw(stage1)).reshape(n, -1, self.embed_dim)
            stage2 = self.stage2_output_decode(_nchw(stage2)).reshape(n, -1, self.embed_dim)
            x = x + gather_tokens(self.pos_embed.expand(n, -1, -1), ids_keep)
        for blk in self.blocks3:
            x = self.run_block(blk, x)
        x = x + stage1 + stage2
        return self.norm(x), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """The encoder on every token, in grid order, no masking: (N, L, D3) after the norm
        (k-NN, features). The same computation as :meth:`forward_encoder` with nothing masked."""
        x, stage1, stage2 = self.forward_stages(imgs)  # (N, L, D3)
        x = x + self.pos_embed
        for blk in self.blocks3:
            x = self.run_block(blk, x)
        x = x + _nhwc(self.stage1_output_decode(_nchw(stage1))).flatten(1, 2)
        x = x + _nhwc(self.stage2_output_decode(_nchw(stage2))).flatten(1, 2)
        return self.norm(x)
