"""Weight-decay groups on the real MAE model, and the AdamW builder."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from maekit.engine.optim import build_adamw, weight_decay_groups
from maekit.models import create_model

WD = 0.05


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return create_model("mae_vit_tiny_patch16", img_size=32, patch_size=4)


@pytest.fixture(scope="module")
def named_groups(mae):
    groups = weight_decay_groups(mae, WD)
    names = {id(p): n for n, p in mae.named_parameters()}
    by_wd = {}
    for g in groups:
        by_wd.setdefault(g["weight_decay"], []).extend(names[id(p)] for p in g["params"])
    return groups, by_wd


def test_two_groups_with_their_weight_decay(named_groups):
    groups, by_wd = named_groups
    assert len(groups) == 2
    assert sorted(by_wd) == [0.0, WD]


def test_biases_and_norm_weights_get_no_decay(mae, named_groups):
    _, by_wd = named_groups
    no_decay = set(by_wd[0.0])
    biases = [n for n, _ in mae.named_parameters() if n.endswith(".bias")]
    norms = [f"{m}.weight" for m, mod in mae.named_modules() if isinstance(mod, nn.LayerNorm)]
    assert biases and norms
    assert "patch_embed.proj.bias" in biases
    assert {"norm.weight", "decoder_norm.weight", "blocks.0.norm1.weight"} <= set(norms)
    assert set(biases) <= no_decay
    assert set(norms) <= no_decay
    # nothing else sneaks into the no-decay group
    assert no_decay == set(biases) | set(norms)


def test_tokens_linear_and_patch_embed_weights_get_decay(mae, named_groups):
    _, by_wd = named_groups
    decay = set(by_wd[WD])
    linears = [f"{m}.weight" for m, mod in mae.named_modules() if isinstance(mod, nn.Linear)]
    assert "decoder_pred.weight" in linears and "blocks.0.attn.qkv.weight" in linears
    assert {"cls_token", "mask_token", "patch_embed.proj.weight"} <= decay
    assert set(linears) <= decay
    assert decay == set(linears) | {"cls_token", "mask_token", "patch_embed.proj.weight"}


def test_frozen_pos_embeds_are_in_neither_group(named_groups):
    _, by_wd = named_groups
    everything = set(by_wd[0.0]) | set(by_wd[WD])
    assert "pos_embed" not in everything
    assert "decoder_pos_embed" not in everything


def test_every_trainable_param_exactly_once(mae, named_groups):
    groups, _ = named_groups
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in mae.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(trainable)


def test_skip_names_go_to_no_decay(mae):
    groups = weight_decay_groups(mae, WD, skip={"cls_token"})
    no_decay = {id(p) for p in groups[0]["params"]} if groups[0]["weight_decay"] == 0 else set()
    assert id(mae.cls_token) in no_decay


def test_build_adamw_on_cpu(mae):
    groups = weight_decay_groups(mae, WD)
    opt = build_adamw(groups, lr=2e-3, betas=(0.9, 0.95), device=torch.device("cpu"))
    assert type(opt) is torch.optim.AdamW
    assert len(opt.param_groups) == 2
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.95)
        assert g["lr"] == pytest.approx(2e-3)
        assert g["fused"]  # the fused CPU kernel (torch >= 2.4)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, WD]


def test_fused_adamw_makes_the_per_parameter_loop_update():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 4), nn.Linear(5, 4)
    b.load_state_dict(a.state_dict())
    fused = build_adamw(weight_decay_groups(a, 0.1), lr=0.05, device=torch.device("cpu"))
    loop = torch.optim.AdamW(weight_decay_groups(b, 0.1), lr=0.05, foreach=False)
    x = torch.randn(8, 5)
    for _ in range(3):
        for model, opt in ((a, fused), (b, loop)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    assert not torch.equal(a.weight, torch.zeros_like(a.weight))
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-6, atol=1e-7)


def test_build_adamw_steps_on_cpu():
    lin = nn.Linear(3, 2)
    opt = build_adamw(weight_decay_groups(lin, 0.1), lr=0.1, betas=(0.8, 0.9))
    before = lin.weight.detach().clone()
    lin(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, lin.weight)
