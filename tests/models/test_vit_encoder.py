"""The fine-tuning / linear-probe ViT: official configuration, registry names, timm interchange."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from maekit.models import create_model, get_entry, list_models
from maekit.models.vit import VisionTransformerEncoder

TINY = dict(img_size=32, patch_size=8, num_classes=10)


def tiny(global_pool: bool = True, **kw) -> VisionTransformerEncoder:
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16", global_pool=global_pool, **{**TINY, **kw})


def test_global_pool_head_has_fc_norm_and_no_norm():
    keys = set(tiny(True, depth=2).state_dict())
    assert {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"} <= keys
    assert not any(k.startswith("norm.") for k in keys)


def test_cls_token_head_has_norm_and_no_fc_norm():
    keys = set(tiny(False, depth=2).state_dict())
    assert {"norm.weight", "norm.bias", "head.weight", "head.bias"} <= keys
    assert not any(k.startswith("fc_norm.") for k in keys)


def test_state_dict_names_follow_timm():
    keys = set(tiny(True, depth=2).state_dict())
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    for i in range(2):
        for sub in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{sub}.weight", f"blocks.{i}.{sub}.bias"}  # qkv has a bias
    assert expected <= keys


@pytest.mark.parametrize("global_pool", [True, False])
def test_layer_norm_eps(global_pool):
    norms = [m for m in tiny(global_pool, depth=2).modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1
    assert all(m.eps == 1e-6 for m in norms)


def test_drop_path_rate_reaches_the_blocks():
    m = tiny(depth=3, drop_path_rate=0.2)
    assert isinstance(m.blocks[0].drop_path1, nn.Identity)  # linspace(0, rate, depth)
    assert m.blocks[2].drop_path1.drop_prob == pytest.approx(0.2)
    assert m.blocks[1].drop_path2.drop_prob == pytest.approx(0.1)
    plain = tiny(depth=3)
    assert all(isinstance(b.drop_path1, nn.Identity) for b in plain.blocks)


@pytest.mark.parametrize("global_pool", [True, False])
def test_forward_shape(global_pool):
    m = tiny(global_pool, depth=2).eval()
    with torch.no_grad():
        out = m(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_global_pool_is_mean_of_patch_tokens_without_cls():
    m = tiny(True, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = m.forward_features(x)  # (N, 1 + L, D); norm is Identity with global pool
        expected = m.head(m.fc_norm(tokens[:, 1:].mean(dim=1)))
        torch.testing.assert_close(m(x), expected)


def test_no_weight_decay_names():
    assert {"pos_embed", "cls_token"} <= tiny(depth=1).no_weight_decay()


SIZES = {
    "vit_tiny_patch16": (192, 12, 3, 16),
    "vit_small_patch16": (384, 12, 6, 16),
    "vit_base_patch16": (768, 12, 12, 16),
    "vit_large_patch16": (1024, 24, 16, 16),
    "vit_huge_patch14": (1280, 32, 16, 14),
}
ALIASES = {
    "maevit_base_patch16": "vit_base_patch16",
    "maevit_large_patch16": "vit_large_patch16",
    "maevit_huge_patch14": "vit_huge_patch14",
}


def test_registry_has_encoders_and_plsc_aliases():
    encoders = set(list_models("encoder"))
    assert set(SIZES) | set(ALIASES) <= encoders
    for name in [*SIZES, *ALIASES]:
        entry = get_entry(name)
        assert entry.kind == "encoder"
        assert entry.cls is VisionTransformerEncoder
    assert not encoders & set(list_models("pretrain"))


@pytest.mark.parametrize("name", list(SIZES))
def test_size_table(name):
    dim, depth, heads, patch = SIZES[name]
    with torch.device("meta"):
        m = create_model(name, num_classes=7)
    assert m.embed_dim == dim and len(m.blocks) == depth
    assert m.blocks[0].attn.num_heads == heads
    assert tuple(m.patch_embed.patch_size) == (patch, patch)
    assert m.pos_embed.shape == (1, 1 + (224 // patch) ** 2, dim)
    assert m.head.weight.shape == (7, dim)


@pytest.mark.parametrize("alias", list(ALIASES))
def test_aliases_build_the_same_shapes(alias):
    with torch.device("meta"):
        a = create_model(alias, num_classes=5)
        b = create_model(ALIASES[alias], num_classes=5)
    sa = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    sb = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    assert sa == sb


@pytest.mark.parametrize("global_pool", [True, False])
def test_state_dict_loads_strictly_into_timm(global_pool):
    ours = tiny(global_pool, depth=2).eval()
    # make every tensor non-default so the comparison means something
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in ours.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    theirs = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=10,
        img_size=32,
        patch_size=8,
        depth=2,
        global_pool="avg" if global_pool else "token",
    )
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


# --------------------------------------------------------------------------- linear probe head


def test_attach_probe_head():
    from maekit.phases.linprobe import attach_probe_head

    m = attach_probe_head(tiny(False, depth=2))
    assert isinstance(m.head, nn.Sequential) and len(m.head) == 2
    bn, linear = m.head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine
    assert bn.eps == 1e-6 and bn.num_features == 192
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (10, 192)
    assert 0.005 < linear.weight.std().item() < 0.015  # trunc_normal std 0.01
    assert torch.equal(linear.bias, torch.zeros(10))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    keys = {k for k in m.state_dict() if k.startswith("head.")}
    assert keys == {
        "head.0.running_mean",
        "head.0.running_var",
        "head.0.num_batches_tracked",
        "head.1.weight",
        "head.1.bias",
    }
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
