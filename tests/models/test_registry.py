"""Model registry, every registered MAE model end to end, and the official state-dict layout.

The expected state dicts are built here from the recipe's description (names and sizes),
not from the code, and compared with models built on the meta device (no memory, fast).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn

from maekit.errors import MaekitError
from maekit.models import MaskedAutoencoderViT, create_model, get_entry, list_models
from maekit.models.registry import register_model

MAE_NAMES = [
    "mae_vit_tiny_patch16",
    "mae_vit_small_patch16",
    "mae_vit_base_patch16",
    "mae_vit_large_patch16",
    "mae_vit_huge_patch14",
]

# recipe: encoder dim/depth/heads; decoder 512 dim, 8 blocks, 16 heads, mlp ratio 4
OFFICIAL = {
    "mae_vit_base_patch16": dict(dim=768, depth=12, heads=12, patch=16),
    "mae_vit_large_patch16": dict(dim=1024, depth=24, heads=16, patch=16),
    "mae_vit_huge_patch14": dict(dim=1280, depth=32, heads=16, patch=14),
}

# timm's parameter counts of vit_{base,large}_patch16_224 / vit_huge_patch14_224 minus the
# 1000-class head: the MAE encoder (cls_token, pos_embed, patch_embed, blocks, norm).
TIMM_ENCODER_PARAMS = {
    "mae_vit_base_patch16": 86_567_656 - (768 * 1000 + 1000),
    "mae_vit_large_patch16": 304_326_632 - (1024 * 1000 + 1000),
    "mae_vit_huge_patch14": 632_045_800 - (1280 * 1000 + 1000),
}


# ---------------------------------------------------------------------------------------------
# registry behaviour
# ---------------------------------------------------------------------------------------------


def test_list_models_contains_the_mae_models():
    names = list_models()
    assert set(MAE_NAMES) <= set(names)
    assert names == sorted(names)
    assert set(MAE_NAMES) <= set(list_models("pretrain"))
    assert not set(MAE_NAMES) & set(list_models("encoder"))


def test_entries_point_at_the_mae_class_with_their_patch_size():
    for name in MAE_NAMES:
        entry = get_entry(name)
        assert entry.cls is MaskedAutoencoderViT
        assert entry.kind == "pretrain"
        assert entry.defaults["patch_size"] == (14 if name.endswith("14") else 16)


def test_unknown_model_raises_maekit_error_listing_available_names():
    with pytest.raises(MaekitError) as info:
        create_model("mae_vit_gigantic_patch3")
    msg = str(info.value)
    assert "mae_vit_gigantic_patch3" in msg
    for name in list_models():
        assert name in msg


def test_unknown_override_raises_maekit_error():
    with pytest.raises(MaekitError, match="not_an_argument"):
        create_model("mae_vit_tiny_patch16", not_an_argument=1)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("mae_vit_base_patch16", dict(img_size=30)),
        ("mae_vit_tiny_patch16", dict(img_size=32, patch_size=5)),
        ("mae_vit_huge_patch14", dict(img_size=224 + 16)),
        ("mae_vit_huge_patch14", dict(img_size=32)),
    ],
)
def test_img_size_not_divisible_by_patch_raises_maekit_error(name, overrides):
    with pytest.raises(MaekitError, match="divisible"):
        create_model(name, **overrides)


def test_overrides_replace_defaults():
    torch.manual_seed(0)
    m = create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8, norm_pix_loss=True)
    assert m.norm_pix_loss is True
    assert m.patch_size == 8
    assert m.grid_size == (4, 4)
    assert m.pos_embed.shape == (1, 17, 192)
    assert get_entry("mae_vit_tiny_patch16").defaults["patch_size"] == 16  # not mutated


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mae_vit_base_patch16", MaskedAutoencoderViT)


# ---------------------------------------------------------------------------------------------
# every registered model runs forward + backward at a tiny size
# ---------------------------------------------------------------------------------------------

# Full-depth ViT-L/ViT-H take ~10 s / ~25 s on 2 CPU cores just to build and run, so by
# default they are run at their real width/heads/patch with fewer blocks; their full-depth
# layout is checked on the meta device below. MAEKIT_FULL_MODELS=1 runs them at full depth.
_FULL = os.environ.get("MAEKIT_FULL_MODELS") == "1"
_SHALLOW = {} if _FULL else {"depth": 2, "decoder_depth": 2}
_TINY_RUN = {
    "mae_vit_tiny_patch16": dict(img_size=32),
    "mae_vit_small_patch16": dict(img_size=32),
    "mae_vit_base_patch16": dict(img_size=32),
    "mae_vit_large_patch16": dict(img_size=32, **_SHALLOW),
    "mae_vit_huge_patch14": dict(img_size=28, **_SHALLOW),
}


def test_every_registered_mae_model_has_a_tiny_run():
    # (the ConvMAE family has its own in tests/models/test_convmae.py)
    mae = {n for n in list_models("pretrain") if get_entry(n).cls is MaskedAutoencoderViT}
    assert mae == set(MAE_NAMES) == set(_TINY_RUN)


@pytest.mark.parametrize("name", MAE_NAMES)
def test_forward_backward_at_tiny_size(name):
    torch.manual_seed(0)
    overrides = _TINY_RUN[name]
    model = create_model(name, **overrides)
    size = overrides["img_size"]
    patch = get_entry(name).defaults["patch_size"]
    assert model.grid_size == (2, 2)
    imgs = torch.randn(2, 3, size, size)
    loss, pred, mask = model(imgs, mask_ratio=0.75)
    assert pred.shape == (2, 4, patch * patch * 3)
    assert mask.sum(dim=1).tolist() == [3.0, 3.0]
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname
        else:
            assert p.grad is None, pname
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.decoder_pred.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# official state-dict names and shapes
# ---------------------------------------------------------------------------------------------


def _block(prefix: str, d: int, mlp_ratio: int = 4) -> dict[str, tuple[int, ...]]:
    h = mlp_ratio * d
    return {
        f"{prefix}.norm1.weight": (d,),
        f"{prefix}.norm1.bias": (d,),
        f"{prefix}.attn.qkv.weight": (3 * d, d),
        f"{prefix}.attn.qkv.bias": (3 * d,),
        f"{prefix}.attn.proj.weight": (d, d),
        f"{prefix}.attn.proj.bias": (d,),
        f"{prefix}.norm2.weight": (d,),
        f"{prefix}.norm2.bias": (d,),
        f"{prefix}.mlp.fc1.weight": (h, d),
        f"{prefix}.mlp.fc1.bias": (h,),
        f"{prefix}.mlp.fc2.weight": (d, h),
        f"{prefix}.mlp.fc2.bias": (d,),
    }


def _expected_state_dict(
    dim: int, depth: int, patch: int, img: int = 224, dec_dim: int = 512, dec_depth: int = 8
) -> dict[str, tuple[int, ...]]:
    n = (img // patch) ** 2
    sd: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, n + 1, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        sd.update(_block(f"blocks.{i}", dim))
    sd.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    sd.update(
        {
            "mask_token": (1, 1, dec_dim),
            "decoder_pos_embed": (1, n + 1, dec_dim),
            "decoder_embed.weight": (dec_dim, dim),
            "decoder_embed.bias": (dec_dim,),
        }
    )
    for j in range(dec_depth):
        sd.update(_block(f"decoder_blocks.{j}", dec_dim))
    sd.update(
        {
            "decoder_norm.weight": (dec_dim,),
            "decoder_norm.bias": (dec_dim,),
            "decoder_pred.weight": (patch * patch * 3, dec_dim),
            "decoder_pred.bias": (patch * patch * 3,),
        }
    )
    return sd


def _meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return create_model(name)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_state_dict_names_and_shapes_match_the_official_layout(name):
    cfg = OFFICIAL[name]
    expected = _expected_state_dict(cfg["dim"], cfg["depth"], cfg["patch"])
    model = _meta_model(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, wrong
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    # heads as in the recipe
    assert model.blocks[0].attn.num_heads == cfg["heads"]
    assert model.decoder_blocks[0].attn.num_heads == 16
    # frozen pos-embeds only
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "decoder_pos_embed"}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameter_counts(name):
    cfg = OFFICIAL[name]
    expected = _expected_state_dict(cfg["dim"], cfg["depth"], cfg["patch"])
    expected_total = sum(math.prod(s) for s in expected.values())
    expected_encoder = sum(
        math.prod(s)
        for k, s in expected.items()
        if not k.startswith("decoder") and k != "mask_token"
    )
    assert expected_encoder == TIMM_ENCODER_PARAMS[name]  # the hand-built list agrees with timm

    model = _meta_model(name)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    encoder = sum(
        p.numel() for k, p in params.items() if not k.startswith("decoder") and k != "mask_token"
    )
    assert total == expected_total
    assert encoder == expected_encoder


def test_vit_base_mae_total_is_about_111_9m():
    total = sum(p.numel() for p in _meta_model("mae_vit_base_patch16").parameters())
    assert total == 111_907_840
    assert round(total / 1e6, 1) == 111.9
