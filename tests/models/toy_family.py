"""A toy model family, written the way CONTRIBUTING.md says a new family is added: its module
(the two model classes and their rules) plus one ``register_family`` entry and its sizes.
Nothing in maekit/ knows it; tests/models/test_toy_family.py registers it and runs the
family contract and a pre-training run over it.

Its names differ from every real family's (``embed``, ``pos``, ``layers``, ``ln``), its
patch embedding is a Linear over patchified pixels and it has no cls token, so nothing that
guessed a family from key or attribute names would get it right.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from maekit.models.decoder import MaskedDecoder, init_linear_and_norm, run_checkpointed
from maekit.models.family import (
    CheckpointLayout,
    Exports,
    Family,
    keys_match,
    register_family,
    unregister_family,
)
from maekit.models.masking import patchify, random_masking
from maekit.models.pos_embed import sincos_2d
from maekit.models.registry import register_model, unregister_model


class _ToyEncoderPart(nn.Module):
    """What both toy models share: Linear patch embedding, fixed table, blocks, a norm."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, depth: int):
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        n = self.grid_size[0] * self.grid_size[1]
        self.embed = nn.Linear(patch_size * patch_size * in_chans, dim)
        self.pos = nn.Parameter(sincos_2d(dim, self.grid_size)[None], requires_grad=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.layers = nn.ModuleList(
            Block(dim, 2, 2.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        )
        self.ln = norm(dim)
        self.grad_checkpointing = False
        self.num_patches = n

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.embed(patchify(imgs, self.patch_size)) + self.pos  # (N, L, D)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.layers:
            x = run_checkpointed(self.grad_checkpointing, blk, x)
        return self.ln(x)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.run(self.tokens(imgs))  # (N, L, D): no prefix tokens


class ToyMAE(MaskedDecoder, _ToyEncoderPart):
    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 8,
        in_chans: int = 3,
        embed_dim: int = 32,
        depth: int = 2,
        decoder_embed_dim: int = 16,
        decoder_depth: int = 1,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, depth)
        self.norm_pix_loss = norm_pix_loss
        self.build_decoder(embed_dim, decoder_embed_dim, decoder_depth, 2, 2.0, prefix=0)
        self.init_decoder_tables()
        self.apply(init_linear_and_norm)

    def forward_encoder(self, imgs, mask_ratio, noise=None):
        x, mask, ids_restore = random_masking(self.tokens(imgs), mask_ratio, noise)
        return self.run(x), mask, ids_restore


class ToyEncoder(_ToyEncoderPart):
    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 8,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 32,
        depth: int = 2,
        global_pool: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, depth)
        self.uses_global_pool = True
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.forward_features(imgs).mean(dim=1)))

    def no_weight_decay(self) -> set[str]:
        return set()


def toy_layer_id(name: str, num_layers: int) -> int:
    if name.startswith(("embed.", "pos")):
        return 0
    if name.startswith("layers."):
        return int(name.split(".")[1]) + 1
    return num_layers


_KEYS = tuple(
    re.compile(p)
    for p in (
        r"embed\.(?:weight|bias)",
        r"pos",
        r"(?:decoder_blocks|layers)\.\d+\..+",
        r"(?:ln|fc_norm|head|decoder_norm|decoder_embed|decoder_pred)\.(?:weight|bias)",
        r"mask_token",
        r"decoder_pos_embed",
    )
)


def toy_owns(state: Mapping[str, torch.Tensor]) -> bool:
    return keys_match(state, _KEYS) and "embed.weight" in state


TOY = Family(
    name="toy",
    pretrain_cls=ToyMAE,
    encoder_cls=ToyEncoder,
    cls_token=False,
    prefix_tokens=0,
    layer_decay={"official": toy_layer_id},
    num_layers=lambda m: len(m.layers) + 1,
    units=lambda m: [*m.layers, *getattr(m, "decoder_blocks", ())],
    mask_cells=lambda m: m.num_patches,
    token_grid=lambda m: m.grid_size,
    owns=toy_owns,
    patch_of=lambda s: (
        round((s["embed.weight"].shape[1] // 3) ** 0.5) if "embed.weight" in s else None
    ),
    checkpoint=CheckpointLayout(
        input_convs=(),
        output_layer="decoder_pred",
        pos_tables=("pos", "decoder_pos_embed"),
        pretrain_only=("decoder_", "mask_token"),
    ),
    exports=Exports(
        refusals={"timm": "timm has no toy model", "hf": "transformers has no toy model"}
    ),
    pooled_norm=lambda m: getattr(m, "fc_norm", None),
)

SIZES = {"toy_mae_tiny": (ToyMAE, "pretrain"), "toy_vit_tiny": (ToyEncoder, "encoder")}


def register() -> None:
    register_family(TOY)
    for name, (cls, kind) in SIZES.items():
        register_model(name, cls, kind=kind)


def unregister() -> None:
    for name in SIZES:
        unregister_model(name)
    unregister_family(TOY.name)
