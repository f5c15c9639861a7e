"""The tiny geometry of the golden checkpoints, registered under names the CLI accepts.

The golden files stay a few hundred KB because the model is far below any shipped size, so the
tests register it themselves (in-process) before driving the CLI through ``maekit.cli.main``.
"""

from __future__ import annotations

from maekit.models.convmae import MaskedAutoencoderConvViT
from maekit.models.convvit import ConvViT
from maekit.models.mae import MaskedAutoencoderViT
from maekit.models.registry import _REGISTRY, register_model
from maekit.models.vit import VisionTransformerEncoder

ENCODER = dict(embed_dim=16, depth=2, num_heads=2, patch_size=8, mlp_ratio=4.0)
DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
IMG_SIZE = 32
# ConvMAE's three stages at the same tiny scale (for the default-recipe runs; no golden file).
CONV_ENCODER = dict(embed_dim=(8, 16, 16), depth=(1, 1, 1), num_heads=2, patch_size=16)


def register_golden_models() -> None:
    """``mae_vit_golden`` / ``convmae_golden`` (pre-training) and ``vit_golden`` /
    ``convvit_golden`` (encoders); safe to call twice."""
    if "mae_vit_golden" not in _REGISTRY:
        register_model(
            "mae_vit_golden", MaskedAutoencoderViT, kind="pretrain", **ENCODER, **DECODER
        )
    if "vit_golden" not in _REGISTRY:
        register_model("vit_golden", VisionTransformerEncoder, kind="encoder", **ENCODER)
    if "convmae_golden" not in _REGISTRY:
        register_model(
            "convmae_golden", MaskedAutoencoderConvViT, kind="pretrain", **CONV_ENCODER, **DECODER
        )
    if "convvit_golden" not in _REGISTRY:
        register_model("convvit_golden", ConvViT, kind="encoder", **CONV_ENCODER)
