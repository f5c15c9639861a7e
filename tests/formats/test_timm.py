"""Export to timm's own ``vit_*`` models (strict=True, equal outputs) and back."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from maekit.checkpoint.pretrained import load_checkpoint
from maekit.cli import main
from maekit.errors import MaekitError
from maekit.formats.export import export_timm
from maekit.models.vit_timm import timm_create_call, to_timm
from maekit.phases.linprobe import attach_probe_head

from .builders import tiny_encoder, tiny_mae

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def timm_vit(global_pool: bool, num_classes: int, depth: int = 2):
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        num_classes=num_classes,
        global_pool="avg" if global_pool else "token",
        depth=depth,
    ).eval()


def export(tmp_path, src_path, *flags, name="timm.pth") -> dict:
    out = tmp_path / name
    assert main(["convert", str(src_path), str(out), "--to", "timm", *flags]) == 0
    return load_checkpoint(out, verbose=False)


@torch.no_grad()
def mae_block_tokens(mae) -> torch.Tensor:
    """MAE encoder without masking, before its final norm: (N, 1+L, D)."""
    x = mae.patch_embed(X) + mae.pos_embed[:, 1:]
    cls = (mae.cls_token + mae.pos_embed[:, :1]).expand(len(X), -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in mae.blocks:
        x = blk(x)
    return x


def test_mae_encoder_to_timm_token_pool(tmp_path, capsys):
    mae = tiny_mae()
    torch.save({"model": mae.state_dict()}, tmp_path / "mae.pth")
    state = export(tmp_path, tmp_path / "mae.pth")
    assert "load it with: timm.create_model('vit_tiny_patch16_224'" in capsys.readouterr().out
    model = timm_vit(global_pool=False, num_classes=0)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        # ascending noise keeps every patch in its own order: the unmasked MAE encoder
        latent, _, _ = mae.forward_encoder(X, 0.0, noise=torch.arange(16.0).expand(3, 16))
        torch.testing.assert_close(model.forward_features(X), latent, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(X), latent[:, 0], rtol=0, atol=1e-5)
        torch.testing.assert_close(mae.norm(mae_block_tokens(mae)), latent, rtol=0, atol=1e-5)


def test_mae_encoder_to_timm_global_pool(tmp_path):
    mae = tiny_mae()
    torch.save({"model": mae.state_dict()}, tmp_path / "mae.pth")
    state = export(tmp_path, tmp_path / "mae.pth", "--global_pool")
    assert "fc_norm.weight" in state and "norm.weight" not in state
    model = timm_vit(global_pool=True, num_classes=0)
    model.load_state_dict(state, strict=True)
    pooled = mae_block_tokens(mae)[:, 1:].mean(1)
    expected = F.layer_norm(pooled, (192,), mae.norm.weight, mae.norm.bias, eps=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("global_pool", [True, False])
@pytest.mark.parametrize("name", ["timm.pth", "timm.safetensors"])
def test_finetuned_encoder_to_timm_logits_equal(tmp_path, global_pool, name):
    ours = tiny_encoder(global_pool=global_pool, num_classes=10)
    torch.save({"model": ours.state_dict(), "epoch": 9}, tmp_path / "ft.pth")
    state = export(tmp_path, tmp_path / "ft.pth", name=name)  # the pooling is read from the file
    model = timm_vit(global_pool, num_classes=10)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(model(X), ours(X))


def test_the_printed_create_model_call_builds_a_matching_model(tmp_path):
    ours = tiny_encoder(global_pool=True, num_classes=7, depth=3)
    state, _, pool = to_timm(ours.state_dict())
    call = timm_create_call(state, pool)
    assert "depth=3" in call and "num_classes=7" in call and "global_pool='avg'" in call
    model = eval(call, {"timm": timm}).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(model(X), ours(X))


def test_linear_probe_head_is_folded(tmp_path):
    ours = attach_probe_head(tiny_encoder(global_pool=False, num_classes=10)).eval()
    with torch.no_grad():
        ours.head[0].running_mean.uniform_(-1, 1)
        ours.head[0].running_var.uniform_(0.2, 3)
        ours.head[1].weight.normal_(0, 0.1)
    torch.save({"model": ours.state_dict()}, tmp_path / "lp.pth")
    state = export(tmp_path, tmp_path / "lp.pth")
    model = timm_vit(global_pool=False, num_classes=10)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(X), ours(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("global_pool", [True, False])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights_load_into_our_encoder(tmp_path, global_pool, suffix):
    """The reverse: timm's own state dict needs no renaming."""
    torch.manual_seed(3)
    theirs = timm_vit(global_pool, num_classes=10)
    path = tmp_path / f"timm{suffix}"
    if suffix == ".pth":
        torch.save(theirs.state_dict(), path)
    else:
        save_file(theirs.state_dict(), str(path))
    ours = tiny_encoder(seed=11, global_pool=global_pool, num_classes=10)
    load_checkpoint(path, ours, strict=True, verbose=False)
    with torch.no_grad():
        assert torch.equal(ours(X), theirs(X))
    back = tmp_path / "ours.pth"  # and `maekit convert --to maekit` keeps it loadable
    assert main(["convert", str(path), str(back), "--to", "maekit"]) == 0
    assert set(torch.load(back, weights_only=True)) == {"model"}


def test_global_pool_encoder_has_no_token_head(tmp_path, capsys):
    torch.save({"model": tiny_encoder(global_pool=True).state_dict()}, tmp_path / "ft.pth")
    code = main(
        [
            "convert",
            str(tmp_path / "ft.pth"),
            str(tmp_path / "t.pth"),
            "--to",
            "timm",
            "--cls_token",
        ]
    )
    assert code == 2 and "--global_pool" in capsys.readouterr().err
    assert not (tmp_path / "t.pth").exists()


def test_convmae_is_refused():
    with pytest.raises(MaekitError, match="ConvMAE"):
        export_timm(
            {"patch_embed4.weight": torch.zeros(2, 2), "blocks3.0.norm1.weight": torch.zeros(2)},
            None,
        )


@pytest.mark.parametrize("global_pool", [True, False])
def test_timm_hiera_state_dict_is_refused_not_renamed(global_pool):
    # Before the family spec, to_timm took timm's Hiera dict as a ViT, renamed norm -> fc_norm
    # and returned 157 tensors. A real Hiera from timm, not a hand-made key list.
    hiera = timm.create_model("hiera_tiny_224", pretrained=False, num_classes=0)
    with pytest.raises(MaekitError) as err:
        to_timm(hiera.state_dict(), global_pool=global_pool)
    line = str(err.value)
    assert "\n" not in line and "not a ViT" in line
