"""The tiny geometry of the golden checkpoints, registered under names the CLI accepts.

The golden files stay a few hundred KB because the model is far below any shipped size, so the
tests register it themselves (in-process) before driving the CLI through ``maekit.cli.main``.
"""

from __future__ import annotations

from maekit.models.mae import MaskedAutoencoderViT
from maekit.models.registry import _REGISTRY, register_model
from maekit.models.vit import VisionTransformerEncoder

ENCODER = dict(embed_dim=16, depth=2, num_heads=2, patch_size=8, mlp_ratio=4.0)
DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
IMG_SIZE = 32


def register_golden_models() -> None:
    """``mae_vit_golden`` (pre-training) and ``vit_golden`` (encoder); safe to call twice."""
    if "mae_vit_golden" not in _REGISTRY:
        register_model(
            "mae_vit_golden", MaskedAutoencoderViT, kind="pretrain", **ENCODER, **DECODER
        )
    if "vit_golden" not in _REGISTRY:
        register_model("vit_golden", VisionTransformerEncoder, kind="encoder", **ENCODER)
