"""The size tables and the family specs: every registered model, its defaults and its
family's rules (:class:`~.family.Family`), readable as data."""

from . import convvit as _convvit
from . import vit as _vit
from .convmae import MaskedAutoencoderConvViT
from .convvit import ConvViT
from .family import CheckpointLayout, Exports, Family, register_family
from .mae import MaskedAutoencoderViT
from .registry import register_model
from .vit import VisionTransformerEncoder
from .vit_timm import timm_create_call, to_timm

# Official decoder for B/L/H: 512 dim, 8 blocks, 16 heads. The CPU-sized encoders get a
# lighter decoder (the MAE paper's ablation shows depth and width matter little for
# linear-probe-free fine-tuning; we pick ~1/4 of the official cost).
_OFFICIAL_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)

# MAE pre-training + the ViT encoder: the official MAE's (= timm's) names.
VIT_FAMILY = register_family(
    Family(
        name="vit",
        pretrain_cls=MaskedAutoencoderViT,
        encoder_cls=VisionTransformerEncoder,
        cls_token=True,
        prefix_tokens=1,
        layer_decay={"official": _vit.vit_layer_id},
        num_layers=_vit.vit_num_layers,
        units=_vit.vit_units,
        mask_cells=_vit.vit_mask_cells,
        token_grid=_vit.vit_token_grid,
        owns=_vit.vit_owns,
        patch_of=_vit.vit_patch_of,
        checkpoint=CheckpointLayout(
            input_convs=("patch_embed.proj.weight",),
            output_layer="decoder_pred",
            pos_tables=("pos_embed", "decoder_pos_embed"),
            pretrain_only=("decoder_", "mask_token"),
            init_may_lack=("norm.",),
        ),
        exports=Exports(timm=to_timm, timm_call=timm_create_call, hf="vit"),
        pooled_norm=_vit.vit_pooled_norm,
    )
)

MAE_SIZES: dict[str, dict] = {
    # name:                   encoder dim/depth/heads,   decoder,          patch
    "mae_vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=3,
                                 decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4, patch_size=16),
    "mae_vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6,
                                  decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8, patch_size=16),
    "mae_vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, **_OFFICIAL_DECODER, patch_size=16),
    "mae_vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16, **_OFFICIAL_DECODER, patch_size=16),
    "mae_vit_huge_patch14": dict(embed_dim=1280, depth=32, num_heads=16, **_OFFICIAL_DECODER, patch_size=14),
}  # fmt: skip

for _name, _cfg in MAE_SIZES.items():
    register_model(_name, MaskedAutoencoderViT, kind="pretrain", **_cfg)

# Fine-tune / linear-probe encoders: the same encoder sizes, no decoder.
VIT_SIZES: dict[str, dict] = {
    "vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16),
    "vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16),
    "vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),
    "vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16),
    "vit_huge_patch14": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
}
# PLSC's names for the same encoders.
VIT_ALIASES = {
    "maevit_base_patch16": "vit_base_patch16",
    "maevit_large_patch16": "vit_large_patch16",
    "maevit_huge_patch14": "vit_huge_patch14",
}

for _name, _cfg in VIT_SIZES.items():
    register_model(_name, VisionTransformerEncoder, kind="encoder", **_cfg)
for _alias, _name in VIT_ALIASES.items():
    register_model(_alias, VisionTransformerEncoder, kind="encoder", **VIT_SIZES[_name])

# ConvMAE (three stages: conv, conv, transformer). patch_size is the overall stride, split as
# (P/4, 2, 2) over the stages (see convvit.py). The small variant is CPU-sized: about a
# quarter of Base's encoder width at the same depth, with a light decoder.
# ConvMAE pre-training + the ConvViT encoder: the official ConvMAE's names; no cls token.
_NO_CONVMAE = "this is a ConvMAE checkpoint and {lib} has no ConvMAE model; convert it --to maekit or --to safetensors instead"
CONVMAE_FAMILY = register_family(
    Family(
        name="convmae",
        pretrain_cls=MaskedAutoencoderConvViT,
        encoder_cls=ConvViT,
        cls_token=False,
        prefix_tokens=0,
        layer_decay={
            "official": _convvit.convvit_layer_id,
            "plsc": _convvit.convvit_layer_id_plsc,
        },
        num_layers=_convvit.convvit_num_layers,
        units=_convvit.convvit_units,
        mask_cells=_convvit.convvit_mask_cells,
        token_grid=_convvit.convvit_token_grid,
        owns=_convvit.convvit_owns,
        patch_of=_convvit.convvit_patch_of,
        checkpoint=CheckpointLayout(
            input_convs=("patch_embed1.proj.weight",),
            output_layer="decoder_pred",
            pos_tables=("pos_embed", "decoder_pos_embed"),
            pretrain_only=("decoder_", "mask_token"),
            init_may_lack=("norm.",),
        ),
        exports=Exports(
            refusals={
                "timm": _NO_CONVMAE.format(lib="timm"),
                "hf": _NO_CONVMAE.format(lib="transformers"),
            }
        ),
        pooled_norm=_convvit.convvit_pooled_norm,
        dense_option="dense_stages",
    )
)

_CONVVIT_SMALL = dict(embed_dim=(128, 256, 384), depth=(2, 2, 11), num_heads=6, patch_size=16)
_CONVVIT_BASE = dict(embed_dim=(256, 384, 768), depth=(2, 2, 11), num_heads=12, patch_size=16)

CONVMAE_SIZES: dict[str, dict] = {
    "convmae_convvit_small_patch16": dict(**_CONVVIT_SMALL, decoder_embed_dim=256, decoder_depth=4,
                                          decoder_num_heads=8),
    "convmae_convvit_base_patch16": dict(**_CONVVIT_BASE, **_OFFICIAL_DECODER),
}  # fmt: skip
CONVVIT_SIZES: dict[str, dict] = {
    "convvit_small_patch16": _CONVVIT_SMALL,
    "convvit_base_patch16": _CONVVIT_BASE,
}

for _name, _cfg in CONVMAE_SIZES.items():
    register_model(_name, MaskedAutoencoderConvViT, kind="pretrain", **_cfg)
for _name, _cfg in CONVVIT_SIZES.items():
    register_model(_name, ConvViT, kind="encoder", **_cfg)
