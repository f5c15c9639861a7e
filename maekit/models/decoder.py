"""The MAE decoder, loss and forward that every masked-autoencoder family shares.

A mixin rather than a submodule: the official names sit at the top level of the state dict
(``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.{j}``,
``decoder_norm``, ``decoder_pred``), in MAE's and ConvMAE's checkpoints alike. A family's
pre-training model calls :meth:`MaskedDecoder.build_decoder` after building its encoder and
defines ``forward_encoder(imgs, mask_ratio, noise) -> (latent, mask, ids_restore)``; this class
gives it ``forward_decoder``, ``forward_loss``, ``patchify`` / ``unpatchify`` and ``forward``.

``prefix`` is the number of tokens before the patch tokens (MAE's cls token: 1; ConvMAE: 0):
they pass through the decoder unshuffled and are dropped from the prediction.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from .loss import masked_patch_mse
from .masking import patchify, unpatchify
from .pos_embed import sincos_2d

# The decoder's names (for a family's ``owns`` whitelist); the blocks are timm ``Block``s.
DECODER_PATTERNS = (
    r"decoder_blocks\.\d+\.(?:norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.\w+",
    r"(?:decoder_norm|decoder_embed|decoder_pred)\.(?:weight|bias)",
    r"mask_token",
    r"decoder_pos_embed",
)


def run_checkpointed(enabled: bool, blk: nn.Module, x: torch.Tensor, *extra) -> torch.Tensor:
    """``blk(x, *extra)``, activation-checkpointed when ``enabled`` and grads are on: only the
    block's input is kept for backward, where the block runs again (non-reentrant: the RNG of
    drop path is restored, so gradients are exact)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(blk, x, *extra, use_reentrant=False)
    return blk(x, *extra)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(N, L, D) at (N, K) indices -> (N, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MaskedDecoder:
    """Mixin for an ``nn.Module`` with ``patch_size``, ``grid_size``, ``in_chans``,
    ``norm_pix_loss``, ``grad_checkpointing`` and ``forward_encoder``."""

    def build_decoder(
        self,
        embed_dim: int,
        decoder_embed_dim: int,
        decoder_depth: int,
        decoder_num_heads: int,
        mlp_ratio: float,
        prefix: int,
    ) -> None:
        """The decoder modules, registered in the official order (init draws follow it)."""
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.decoder_prefix = prefix
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        # Fixed sin-cos table; a Parameter (not a buffer) so the state-dict name matches.
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, prefix + num_patches, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(
                decoder_embed_dim,
                decoder_num_heads,
                mlp_ratio,
                qkv_bias=True,
                norm_layer=norm_layer,
            )
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(
            decoder_embed_dim, self.patch_size**2 * self.in_chans, bias=True
        )

    @torch.no_grad()
    def init_decoder_tables(self) -> None:
        """The decoder's fixed sin-cos table (with a zero row per prefix token)."""
        table = sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=False)
        rows = torch.zeros(self.decoder_prefix, table.shape[-1], dtype=table.dtype)
        self.decoder_pos_embed.copy_(torch.cat([rows, table])[None])

    # --- pure helpers bound to this model's geometry ---
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), p the overall stride (one token's patch)."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        return unpatchify(x, self.patch_size, self.grid_size, self.in_chans)

    # --- forward pieces ---
    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Latent (N, prefix + K, D) -> prediction (N, L, p*p*C) in the original patch order."""
        k = self.decoder_prefix
        x = self.decoder_embed(x)  # (N, prefix + K, Dd)
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + k - x.shape[1], -1)
        x_ = torch.cat([x[:, k:, :], mask_tokens], dim=1)  # (N, L, Dd), shuffled order
        x_ = gather_tokens(x_, ids_restore)  # unshuffle
        x = torch.cat([x[:, :k, :], x_], dim=1)  # prefix tokens stay first: (N, prefix + L, Dd)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = run_checkpointed(self.grad_checkpointing, blk, x)
        x = self.decoder_pred(self.decoder_norm(x))  # (N, prefix + L, p*p*C)
        return x[:, k:, :]

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error per patch, averaged over removed patches only."""
        return masked_patch_mse(self.patchify(imgs), pred, mask, self.norm_pix_loss)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)  # (N, L, p*p*C)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask

    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay beyond 1-D params; MAE pre-training excludes none
        (cls and mask tokens are decayed, as the official)."""
        return set()


def init_linear_and_norm(m: nn.Module) -> None:
    """The official MAE init: xavier-uniform Linear weights, zero biases, LayerNorm 1 / 0."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
