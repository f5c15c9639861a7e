"""Initialising a fine-tune / linear-probe encoder from an MAE pre-training checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maekit.checkpoint.pretrained import (
    adapt_state_dict,
    expected_missing_keys,
    load_pretrained_encoder,
)
from maekit.errors import MaekitError
from maekit.formats.loader import strip_prefixes
from maekit.models import create_model
from maekit.models.pos_embed import interpolate_pos_embed, sincos_2d

SMALL = dict(img_size=32, patch_size=8)
DEPTH = 3  # the same encoder as vit_tiny_patch16 (dim 192, 3 heads), fewer blocks: fast


@pytest.fixture(scope="module")
def mae_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sd = create_model("mae_vit_tiny_patch16", depth=DEPTH, **SMALL).state_dict()
    # a recognisable cls row (the sin-cos table has zeros there)
    sd["pos_embed"] = sd["pos_embed"].clone()
    sd["pos_embed"][:, 0] = torch.linspace(-1, 1, sd["pos_embed"].shape[-1])
    return sd


def save(tmp_path: Path, state: dict, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save({"model": state, "epoch": 3}, path)
    return path


def encoder(global_pool: bool = True, img_size: int = 32, num_classes: int = 10):
    torch.manual_seed(1)
    return create_model(
        "vit_tiny_patch16",
        img_size=img_size,
        patch_size=8,
        depth=DEPTH,
        num_classes=num_classes,
        global_pool=global_pool,
    )


@pytest.mark.parametrize("global_pool", [True, False])
def test_encoder_weights_are_loaded(tmp_path, mae_state, global_pool):
    model = encoder(global_pool)
    notes = load_pretrained_encoder(model, save(tmp_path, mae_state), global_pool)
    own = model.state_dict()
    shared = [k for k in own if k in mae_state]
    assert f"blocks.{DEPTH - 1}.mlp.fc2.weight" in shared and "patch_embed.proj.weight" in shared
    for k in shared:
        torch.testing.assert_close(own[k], mae_state[k], msg=k)
    missing = set(own) - set(mae_state)
    assert missing == expected_missing_keys(global_pool)
    assert ("norm.weight" in own) != global_pool  # cls-token head uses the pre-trained norm
    assert any("newly initialised" in n and "head.weight" in n for n in notes)


def test_new_head_has_the_official_init(tmp_path, mae_state):
    model = encoder()
    with torch.no_grad():  # make a stale init visible
        model.head.weight.fill_(1.0)
        model.head.bias.fill_(1.0)
    load_pretrained_encoder(model, save(tmp_path, mae_state), True)
    std = model.head.weight.std().item()
    assert 1.5e-5 < std < 2.5e-5
    assert model.head.weight.abs().max().item() < 2e-4
    assert torch.equal(model.head.bias, torch.zeros_like(model.head.bias))


def test_pos_embed_is_interpolated_for_a_bigger_input(tmp_path, mae_state):
    model = encoder(img_size=48)  # 6x6 grid instead of 4x4
    notes = load_pretrained_encoder(model, save(tmp_path, mae_state), True)
    pe = model.pos_embed.detach()
    assert pe.shape == (1, 1 + 36, 192)
    torch.testing.assert_close(pe[:, :1], mae_state["pos_embed"][:, :1])  # cls row kept
    torch.testing.assert_close(pe, interpolate_pos_embed(mae_state["pos_embed"], (6, 6), 1))
    assert any("interpolated pos_embed" in n for n in notes)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_interpolate_pos_embed_14_to_16_and_identity():
    table = sincos_2d(64, 14, cls_token=True)[None].clone()
    table[:, 0] = 3.0
    out = interpolate_pos_embed(table, (16, 16), 1)
    assert out.shape == (1, 1 + 256, 64)
    torch.testing.assert_close(out[:, 0], table[:, 0])  # cls row kept
    assert interpolate_pos_embed(table, (14, 14), 1) is table  # identity at the same size


def test_interpolate_pos_embed_keeps_the_row_major_layout():
    cols = torch.linspace(-1, 1, 14)
    grid = cols[None, :, None].expand(14, 14, 8)  # varies along columns (x) only
    table = torch.cat([torch.full((1, 8), 5.0), grid.reshape(196, 8)])[None]
    out = interpolate_pos_embed(table, (16, 16), 1)[0, 1:].reshape(16, 16, 8)
    torch.testing.assert_close(out, out[:1].expand(16, 16, 8))  # every row the same
    assert out[0, -1, 0] > out[0, 0, 0]  # increasing along the columns
    const = torch.cat([torch.zeros(1, 8), torch.full((196, 8), 0.25)])[None]
    torch.testing.assert_close(
        interpolate_pos_embed(const, (16, 16), 1)[0, 1:], torch.full((256, 8), 0.25)
    )


def test_missing_block_weight_is_rejected(tmp_path, mae_state):
    state = dict(mae_state)
    del state["blocks.0.attn.qkv.weight"]
    with pytest.raises(MaekitError, match=r"blocks\.0\.attn\.qkv\.weight"):
        load_pretrained_encoder(encoder(), save(tmp_path, state), True)


def test_checkpoint_of_another_width_is_rejected(tmp_path):
    torch.manual_seed(0)
    state = create_model("mae_vit_small_patch16", depth=2, **SMALL).state_dict()
    with pytest.raises(MaekitError) as info:
        load_pretrained_encoder(encoder(), save(tmp_path, state), True)
    msg = str(info.value)
    assert "shape mismatch" in msg or "width" in msg, msg
    assert "384" in msg and "192" in msg
    assert "--model" in msg


def test_shape_mismatch_in_a_block_is_rejected(tmp_path, mae_state):
    state = dict(mae_state)
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(10, 192)
    with pytest.raises(MaekitError, match=r"shape mismatch.*blocks\.1\.mlp\.fc1\.weight"):
        load_pretrained_encoder(encoder(), save(tmp_path, state), True)


def test_wrapper_prefixes_are_stripped(tmp_path, mae_state):
    state = {f"module.{k}": v for k, v in mae_state.items()}
    model = encoder()
    load_pretrained_encoder(model, save(tmp_path, state), True)
    torch.testing.assert_close(
        model.blocks[2].attn.qkv.weight, mae_state["blocks.2.attn.qkv.weight"]
    )
    assert strip_prefixes({"_orig_mod.a": 1, "module.b": 2, "c": 3})[0] == {
        "a": 1,
        "b": 2,
        "c": 3,
    }


def test_head_of_another_class_count_is_dropped(tmp_path, mae_state):
    donor = encoder(num_classes=5)
    state = {k: v for k, v in donor.state_dict().items()}
    model = encoder(num_classes=10)
    notes = load_pretrained_encoder(model, save(tmp_path, state), True)
    assert any("dropped head.weight" in n for n in notes), notes
    assert model.head.weight.shape == (10, 192)
    assert model.head.weight.std().item() < 1e-4  # re-initialised, std 2e-5
    torch.testing.assert_close(model.fc_norm.weight, donor.fc_norm.weight)

    adapted, adapt_notes = adapt_state_dict(dict(state), model)
    assert "head.weight" not in adapted and "head.bias" not in adapted
    assert len([n for n in adapt_notes if n.startswith("dropped")]) == 2


def test_finetuned_checkpoint_with_same_head_keeps_it(tmp_path):
    donor = encoder(num_classes=10)
    with torch.no_grad():
        donor.head.weight.fill_(0.5)
    model = encoder(num_classes=10)
    load_pretrained_encoder(model, save(tmp_path, donor.state_dict()), True)
    assert torch.equal(model.head.weight, donor.head.weight)


def test_missing_file(tmp_path):
    with pytest.raises(MaekitError, match="does not exist"):
        load_pretrained_encoder(encoder(), tmp_path / "nope.pth", True)


def test_file_without_state_dict(tmp_path):
    path = tmp_path / "junk.pth"
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(MaekitError, match="no state dict"):
        load_pretrained_encoder(encoder(), path, True)
