"""ConvViT (fine-tune / linear-probe encoder): official layout, global pooling, layer decay,
loading ConvMAE pre-training checkpoints, the linear-probe head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from maekit.checkpoint.pretrained import expected_missing_keys, load_pretrained_encoder
from maekit.engine.optim import layer_decay_groups, layer_rule
from maekit.errors import MaekitError
from maekit.models import create_model, get_entry, list_models
from maekit.models.convvit import ConvViT, convvit_layer_id, convvit_layer_id_plsc
from maekit.models.family import family_of_name
from maekit.models.pos_embed import interpolate_pos_embed
from maekit.phases.linprobe import attach_probe_head
from tests.models.convmae_reference import (
    assert_same_layout,
    convvit_features_nchw,
    official_convvit_encoder,
    vit_block,
)

DEPTH = (1, 2, 3)  # few blocks, but two in stage 2 to tell the layer-id rules apart
SMALL = dict(img_size=32, patch_size=4, depth=DEPTH)


def convvit(**kw) -> ConvViT:
    torch.manual_seed(1)
    return create_model("convvit_small_patch16", **{**SMALL, "num_classes": 10, **kw})


def test_registered_encoders():
    assert {"convvit_small_patch16", "convvit_base_patch16"} <= set(list_models("encoder"))
    assert get_entry("convvit_base_patch16").defaults["embed_dim"] == (256, 384, 768)
    assert get_entry("convvit_small_patch16").cls is ConvViT


def test_base_state_dict_equals_the_official_layout():
    with torch.device("meta"):
        m = create_model("convvit_base_patch16")
    expected = official_convvit_encoder()
    expected.update(
        {
            "fc_norm.weight": (768,),
            "fc_norm.bias": (768,),
            "head.weight": (1000, 768),
            "head.bias": (1000,),
        }
    )
    assert_same_layout({k: tuple(v.shape) for k, v in m.state_dict().items()}, expected)
    assert all(p.requires_grad for p in m.parameters())  # pos_embed is learned when fine-tuning
    assert (
        m.fc_norm.eps == 1e-6 and m.blocks3[0].norm1.eps == 1e-6 and m.blocks1[0].norm1.eps == 1e-5
    )


def test_global_pool_only():
    assert family_of_name("convvit_small_patch16").cls_token is False  # the family says so
    with pytest.raises(ValueError, match="no cls token"):
        convvit(global_pool=False)
    m = convvit()
    assert m.uses_global_pool and not hasattr(m, "norm") and not hasattr(m, "cls_token")


def test_forward_is_mean_of_tokens_then_fc_norm_then_head():
    m = convvit().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = m.forward_features(x)
        assert tokens.shape == (2, 64, 384)
        torch.testing.assert_close(m(x), m.head(m.fc_norm(tokens.mean(1))))
    assert m(x).shape == (2, 10)


def test_channels_last_layout_equals_the_official_nchw_formulation():
    m = convvit().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            m.forward_features(x), convvit_features_nchw(m, x), rtol=1e-12, atol=1e-12
        )


def test_drop_path_grows_linearly_over_all_stages():
    m = convvit(drop_path_rate=0.5)
    blocks = [*m.blocks1, *m.blocks2, *m.blocks3]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in [*m.blocks1, *m.blocks2]]
    rates += [getattr(b.drop_path1, "drop_prob", 0.0) for b in m.blocks3]
    expected = torch.linspace(0, 0.5, len(blocks)).tolist()
    assert rates == pytest.approx(expected)


def test_base_runs_forward_backward_at_256():
    """(224 and 256 for the pre-training model in test_convmae.py; its encoder is this one)"""
    size = 256
    torch.manual_seed(0)
    m = create_model("convvit_base_patch16", img_size=size, num_classes=5)
    assert m.pos_embed.shape == (1, (size // 16) ** 2, 768)
    out = m(torch.randn(1, 3, size, size))
    assert out.shape == (1, 5)
    out.sum().backward()
    assert m.patch_embed1.proj.weight.grad.abs().sum() > 0 and m.pos_embed.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# layer decay
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, official, plsc",
    [
        ("pos_embed", 0, 0),
        ("patch_embed1.proj.weight", 0, 0),
        ("patch_embed3.norm.bias", 0, 0),
        ("patch_embed4.weight", 0, 0),
        ("blocks1.0.attn.weight", 0, 1),
        ("blocks2.1.mlp.fc2.weight", 0, 2),
        ("blocks3.0.norm1.weight", 1, 1),
        ("blocks3.10.attn.qkv.bias", 11, 11),
        ("fc_norm.weight", 12, 12),
        ("head.bias", 12, 12),
    ],
)
def test_convvit_layer_ids(name, official, plsc):
    assert convvit_layer_id(name, 12) == official
    assert convvit_layer_id_plsc(name, 12) == plsc


@pytest.mark.parametrize("rule", ["official", "plsc"])
def test_layer_decay_groups_follow_the_rule(rule):
    m = convvit()
    layer_id, num_layers = layer_rule(m, rule)
    assert num_layers == DEPTH[2] + 1
    groups = layer_decay_groups(
        m, 0.05, 0.5, skip=m.no_weight_decay(), layer_id=layer_id, num_layers=num_layers
    )
    seen = {}
    for g in groups:
        for name in g["param_names"]:
            seen[name] = g
    params = dict(m.named_parameters())
    assert set(seen) == set(params)
    for name, g in seen.items():
        if name.startswith("blocks3."):
            lid = int(name.split(".")[1]) + 1
        elif name.startswith(("blocks1.", "blocks2.")):
            lid = int(name.split(".")[1]) + 1 if rule == "plsc" else 0
        elif name.startswith(("fc_norm", "head")):
            lid = num_layers
        else:
            assert name == "pos_embed" or name.startswith("patch_embed"), name
            lid = 0
        assert g["lr_scale"] == pytest.approx(0.5 ** (num_layers - lid)), name
        no_decay = params[name].ndim == 1 or name == "pos_embed"
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name


def test_default_layer_rule_is_picked_by_model_type():
    assert layer_rule(convvit()) == (convvit_layer_id, DEPTH[2] + 1)
    groups = layer_decay_groups(convvit(), 0.05, 0.5)
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["blocks2.1.conv1.weight"]["layer_id"] == 0
    vit = create_model("vit_tiny_patch16", img_size=32, patch_size=8, depth=2, num_classes=3)
    assert layer_rule(vit, "plsc")[1] == 3  # ViTs have one rule


# ---------------------------------------------------------------------------------------------
# loading a ConvMAE pre-training checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def convmae_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    pre = create_model("convmae_convvit_small_patch16", decoder_depth=1, **SMALL)
    state = pre.state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint-0.pth"
    torch.save({"model": state, "epoch": 0}, path)
    return path, state


def test_convmae_checkpoint_loads_into_convvit(convmae_ckpt):
    path, state = convmae_ckpt
    m = convvit()
    notes = load_pretrained_encoder(m, path, global_pool=True)
    own = m.state_dict()
    for k, v in own.items():
        if k in state:
            torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)
    assert (
        set(own) - set(state)
        == expected_missing_keys(True)
        == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    )
    unused = set(state) - set(own)
    assert unused == {
        k
        for k in state
        if k.startswith(
            ("decoder", "stage1_output_decode", "stage2_output_decode", "norm.", "mask_token")
        )
    }
    assert m.head.weight.std() < 1e-4  # the official new-head init: trunc_normal(std=2e-5)
    assert any("head.weight" in n for n in notes)


def test_missing_conv_block_weight_is_rejected(convmae_ckpt, tmp_path):
    path, state = convmae_ckpt
    broken = {k: v for k, v in state.items() if k != "blocks2.1.attn.weight"}
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(MaekitError, match="blocks2.1.attn.weight"):
        load_pretrained_encoder(convvit(), tmp_path / "broken.pth", global_pool=True)


def test_pos_embed_is_interpolated_for_another_input_size(convmae_ckpt):
    path, state = convmae_ckpt
    m = convvit(img_size=48)  # 12x12 tokens from the 8x8 pre-training grid, no cls row
    notes = load_pretrained_encoder(m, path, global_pool=True)
    expected = interpolate_pos_embed(state["pos_embed"], (12, 12), num_extra_tokens=0)
    assert expected.shape == (1, 144, 384)
    torch.testing.assert_close(m.pos_embed.data, expected)
    assert any("interpolated pos_embed" in n for n in notes)
    assert m(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_checkpoint_of_another_width_is_rejected(tmp_path):
    torch.manual_seed(0)
    other = create_model(
        "convmae_convvit_base_patch16", img_size=32, patch_size=4, depth=(1, 1, 1), decoder_depth=1
    )
    torch.save({"model": other.state_dict()}, tmp_path / "base.pth")
    with pytest.raises(MaekitError, match="--model"):
        load_pretrained_encoder(convvit(depth=(1, 1, 1)), tmp_path / "base.pth", global_pool=True)


# ---------------------------------------------------------------------------------------------
# linear probe head
# ---------------------------------------------------------------------------------------------


def test_linear_probe_head_attaches_and_freezes_the_rest():
    m = attach_probe_head(convvit())
    assert isinstance(m.head[0], nn.BatchNorm1d) and not m.head[0].affine and m.head[0].eps == 1e-6
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    out = m(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert m.head[1].weight.grad is not None and m.blocks3[0].attn.qkv.weight.grad is None
    assert set(m.state_dict()) >= {"head.0.running_mean", "head.0.running_var", "head.1.weight"}


def test_vit_block_names_are_timm_names():
    """The stage-3 blocks are timm Blocks: the names the recipe lists for ViT blocks."""
    m = convvit()
    names = {k for k in m.state_dict() if k.startswith("blocks3.0.")}
    assert names == set(vit_block("blocks3.0", 384))
