"""The official ConvMAE, written from the recipe: test oracles and the layout benchmark's baseline.

1. The official state-dict names and shapes (``official_convmae_base``, ``official_convvit_encoder``),
   built from the recipe's description, not from the code.
2. The straightforward (official-layout) encoder forward. Activations stay NCHW as in the official code: every LayerNorm is wrapped in an
NCHW -> NHWC -> NCHW permute pair, 1x1 convs are real convolutions, and the token mask is
upsampled with ``F.interpolate(mode="nearest")``. It reuses the model's parameters, so its
output must equal the model's channels-last forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maekit.models.masking import draw_mask


def _ln(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _conv1x1(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias)


def patch_embed_nchw(pe, x: torch.Tensor) -> torch.Tensor:
    return pe.act(_ln(pe.norm, pe.proj(x)))


def conv_block_nchw(blk, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    y = _conv1x1(blk.conv1, _ln(blk.norm1, x))
    if visible is not None:
        y = visible * y
    x = x + blk.drop_path(_conv1x1(blk.conv2, blk.attn(y)))
    h = _conv1x1(blk.mlp.fc1, _ln(blk.norm2, x))
    return x + blk.drop_path(_conv1x1(blk.mlp.fc2, blk.mlp.act(h)))


def convmae_encoder_nchw(model, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    """Same contract as ``MaskedAutoencoderConvViT.forward_encoder``."""
    n = imgs.shape[0]
    gh, gw = model.grid_size
    ids_keep, mask, ids_restore = draw_mask(n, gh * gw, mask_ratio, noise)
    visible = (1 - mask).reshape(n, 1, gh, gw).to(imgs.dtype)
    vis1 = F.interpolate(visible, scale_factor=4, mode="nearest")
    vis2 = F.interpolate(visible, scale_factor=2, mode="nearest")

    x = patch_embed_nchw(model.patch_embed1, imgs)
    for blk in model.blocks1:
        x = conv_block_nchw(blk, x, vis1)
    s1 = model.stage1_output_decode(x).flatten(2).permute(0, 2, 1)
    x = patch_embed_nchw(model.patch_embed2, x)
    for blk in model.blocks2:
        x = conv_block_nchw(blk, x, vis2)
    s2 = model.stage2_output_decode(x).flatten(2).permute(0, 2, 1)
    x = patch_embed_nchw(model.patch_embed3, x).flatten(2).permute(0, 2, 1)
    x = model.patch_embed4(x) + model.pos_embed

    def keep(t: torch.Tensor) -> torch.Tensor:
        return torch.gather(t, 1, ids_keep.unsqueeze(-1).repeat(1, 1, t.shape[-1]))

    x = keep(x)
    for blk in model.blocks3:
        x = blk(x)
    x = x + keep(s1) + keep(s2)
    return model.norm(x), mask, ids_restore


def convvit_features_nchw(model, imgs: torch.Tensor) -> torch.Tensor:
    """Same contract as ``ConvViT.forward_features``."""
    x = patch_embed_nchw(model.patch_embed1, imgs)
    for blk in model.blocks1:
        x = conv_block_nchw(blk, x)
    x = patch_embed_nchw(model.patch_embed2, x)
    for blk in model.blocks2:
        x = conv_block_nchw(blk, x)
    x = patch_embed_nchw(model.patch_embed3, x).flatten(2).permute(0, 2, 1)
    x = model.patch_embed4(x) + model.pos_embed
    for blk in model.blocks3:
        x = blk(x)
    return x


# --- official state-dict layout ---


def _pe(prefix: str, cin: int, cout: int, k: int) -> dict:
    return {
        f"{prefix}.proj.weight": (cout, cin, k, k),
        f"{prefix}.proj.bias": (cout,),
        f"{prefix}.norm.weight": (cout,),
        f"{prefix}.norm.bias": (cout,),
    }


def _conv_block(prefix: str, d: int) -> dict:
    sd = {}
    for sub, shape in (
        ("norm1", None),
        ("conv1", (d, d, 1, 1)),
        ("attn", (d, 1, 5, 5)),
        ("conv2", (d, d, 1, 1)),
        ("norm2", None),
        ("mlp.fc1", (4 * d, d, 1, 1)),
        ("mlp.fc2", (d, 4 * d, 1, 1)),
    ):
        sd[f"{prefix}.{sub}.weight"] = shape or (d,)
        sd[f"{prefix}.{sub}.bias"] = (shape[0],) if shape else (d,)
    return sd


def vit_block(prefix: str, d: int) -> dict:
    sd = {}
    for sub, shape in (
        ("norm1", (d,)),
        ("attn.qkv", (3 * d, d)),
        ("attn.proj", (d, d)),
        ("norm2", (d,)),
        ("mlp.fc1", (4 * d, d)),
        ("mlp.fc2", (d, 4 * d)),
    ):
        sd[f"{prefix}.{sub}.weight"] = shape
        sd[f"{prefix}.{sub}.bias"] = (shape[0],)
    return sd


def official_convvit_encoder(dims=(256, 384, 768), depths=(2, 2, 11)) -> dict:
    """The ConvMAE-Base encoder as the recipe describes it, at 224 px."""
    d1, d2, d3 = dims
    sd = {
        **_pe("patch_embed1", 3, d1, 4),
        **_pe("patch_embed2", d1, d2, 2),
        **_pe("patch_embed3", d2, d3, 2),
        "patch_embed4.weight": (d3, d3),
        "patch_embed4.bias": (d3,),
        "pos_embed": (1, 196, d3),
    }
    for i in range(depths[0]):
        sd.update(_conv_block(f"blocks1.{i}", d1))
    for i in range(depths[1]):
        sd.update(_conv_block(f"blocks2.{i}", d2))
    for i in range(depths[2]):
        sd.update(vit_block(f"blocks3.{i}", d3))
    return sd


def official_convmae_base() -> dict:
    sd = official_convvit_encoder()
    sd.update(
        {
            "stage1_output_decode.weight": (768, 256, 4, 4),
            "stage1_output_decode.bias": (768,),
            "stage2_output_decode.weight": (768, 384, 2, 2),
            "stage2_output_decode.bias": (768,),
            "norm.weight": (768,),
            "norm.bias": (768,),
            "mask_token": (1, 1, 512),
            "decoder_pos_embed": (1, 196, 512),
            "decoder_embed.weight": (512, 768),
            "decoder_embed.bias": (512,),
        }
    )
    for j in range(8):
        sd.update(vit_block(f"decoder_blocks.{j}", 512))
    sd.update(
        {
            "decoder_norm.weight": (512,),
            "decoder_norm.bias": (512,),
            "decoder_pred.weight": (16 * 16 * 3, 512),
            "decoder_pred.bias": (16 * 16 * 3,),
        }
    )
    return sd


def assert_same_layout(got: dict, expected: dict) -> None:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, wrong
