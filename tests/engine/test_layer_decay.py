"""Layer-wise lr decay groups on a real (tiny) fine-tuning ViT, by the official rules."""

from __future__ import annotations

import pytest
import torch

from maekit.engine.optim import layer_decay_groups
from maekit.models import create_model
from maekit.models.vit import vit_layer_id

WD = 0.05
LD = 0.75
DEPTH = 3
NUM_LAYERS = DEPTH + 1


def tiny_vit(global_pool: bool = True):
    torch.manual_seed(0)
    return create_model(
        "vit_tiny_patch16",
        img_size=32,
        patch_size=8,
        num_classes=10,
        depth=DEPTH,
        global_pool=global_pool,
    )


def expected_id(name: str) -> int:
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    assert name.split(".")[0] in ("norm", "fc_norm", "head"), name
    return NUM_LAYERS


def group_of(groups: list[dict]) -> dict[int, dict]:
    """id(param) -> its group; fails if a parameter sits in two groups."""
    out = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter is in two groups"
            out[id(p)] = g
    return out


@pytest.mark.parametrize("global_pool", [True, False])
def test_lr_scale_and_weight_decay_per_parameter(global_pool):
    model = tiny_vit(global_pool)
    groups = layer_decay_groups(model, WD, LD, skip=model.no_weight_decay())
    by_param = group_of(groups)
    names = dict(model.named_parameters())
    assert len(by_param) == len(names)  # every trainable param exactly once
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight"} <= set(names)
    assert ("fc_norm.weight" in names) == global_pool
    assert ("norm.weight" in names) != global_pool
    for name, p in names.items():
        g = by_param[id(p)]
        lid = expected_id(name)
        assert g["layer_id"] == lid, name
        assert g["lr_scale"] == pytest.approx(LD ** (NUM_LAYERS - lid)), name
        no_decay = p.ndim == 1 or name in ("pos_embed", "cls_token")
        assert g["weight_decay"] == (0.0 if no_decay else WD), name
        assert name in g["param_names"]


def test_specific_groups():
    model = tiny_vit()
    groups = layer_decay_groups(model, WD, LD, skip=model.no_weight_decay())
    by_param = group_of(groups)
    p = dict(model.named_parameters())
    assert by_param[id(p["cls_token"])]["lr_scale"] == pytest.approx(LD**4)
    assert by_param[id(p["pos_embed"])]["weight_decay"] == 0.0
    assert by_param[id(p["cls_token"])]["weight_decay"] == 0.0
    assert by_param[id(p["patch_embed.proj.weight"])]["weight_decay"] == WD
    assert by_param[id(p["patch_embed.proj.bias"])]["weight_decay"] == 0.0
    assert by_param[id(p["blocks.0.attn.qkv.weight"])]["lr_scale"] == pytest.approx(LD**3)
    assert by_param[id(p["blocks.2.mlp.fc2.weight"])]["lr_scale"] == pytest.approx(LD)
    assert by_param[id(p["head.weight"])]["lr_scale"] == 1.0
    assert by_param[id(p["fc_norm.weight"])]["weight_decay"] == 0.0
    assert by_param[id(p["head.weight"])]["weight_decay"] == WD
    # one group per (layer, decay): 5 layer ids x {decay, no decay}
    assert len(groups) == 2 * (NUM_LAYERS + 1)
    assert len({(g["layer_id"], g["weight_decay"]) for g in groups}) == len(groups)


def test_without_skip_pos_embed_and_cls_token_are_decayed():
    model = tiny_vit()
    by_param = group_of(layer_decay_groups(model, WD, LD))
    assert by_param[id(model.pos_embed)]["weight_decay"] == WD
    assert by_param[id(model.cls_token)]["weight_decay"] == WD


def test_frozen_parameters_are_left_out():
    model = tiny_vit()
    for p in model.blocks[0].parameters():
        p.requires_grad = False
    model.pos_embed.requires_grad = False
    groups = layer_decay_groups(model, WD, LD, skip=model.no_weight_decay())
    in_groups = {n for g in groups for n in g["param_names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert in_groups == trainable
    assert "pos_embed" not in in_groups
    assert not any(n.startswith("blocks.0.") for n in in_groups)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert all(g["params"] for g in groups)  # no empty groups


def test_num_layers_override():
    model = tiny_vit()
    groups = layer_decay_groups(model, WD, 0.5, num_layers=10)
    head = next(g for g in groups if "head.weight" in g["param_names"])
    blk = next(g for g in groups if "blocks.1.norm1.weight" in g["param_names"])
    assert head["layer_id"] == 10 and head["lr_scale"] == 1.0
    assert blk["lr_scale"] == pytest.approx(0.5 ** (10 - 2))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cls_token", 0),
        ("pos_embed", 0),
        ("patch_embed.proj.weight", 0),
        ("patch_embed.proj.bias", 0),
        ("blocks.0.norm1.weight", 1),
        ("blocks.0.attn.qkv.weight", 1),
        ("blocks.11.mlp.fc2.bias", 12),
        ("norm.weight", 13),
        ("fc_norm.bias", 13),
        ("head.weight", 13),
        ("head.1.bias", 13),
    ],
)
def test_vit_layer_id(name, expected):
    assert vit_layer_id(name, 13) == expected
