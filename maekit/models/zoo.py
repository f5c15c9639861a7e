"""The size table: every registered model and its defaults, readable as data."""

from .convmae import MaskedAutoencoderConvViT
from .convvit import ConvViT
from .mae import MaskedAutoencoderViT
from .registry import register_model
from .vit import VisionTransformerEncoder

# Official decoder for B/L/H: 512 dim, 8 blocks, 16 heads. The CPU-sized encoders get a
# lighter decoder (the MAE paper's ablation shows depth and width matter little for
# linear-probe-free fine-tuning; we pick ~1/4 of the official cost).
_OFFICIAL_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)

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
