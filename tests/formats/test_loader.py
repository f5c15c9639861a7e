"""One loader for every format: detection, official .pth files, prefixes, safetensors, API."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

import maekit
from maekit.checkpoint.pretrained import load_checkpoint
from maekit.errors import MaekitError
from maekit.formats import detect_format, load_state_dict, read_checkpoint

from .builders import tiny_encoder, tiny_mae, write_official_pth


def mae_outputs(model):
    torch.manual_seed(5)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        return model(imgs, mask_ratio=0.75, noise=noise)[:2]


def test_official_full_checkpoint_with_namespace_args(tmp_path):
    src = tiny_mae(seed=0)
    path = write_official_pth(tmp_path / "mae_pretrain_vit_tiny_full.pth", src.state_dict())
    ckpt = read_checkpoint(path)
    assert type(ckpt["args"]) is dict and ckpt["args"]["norm_pix_loss"] is True
    assert ckpt["epoch"] == 799 and ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)

    dst = tiny_mae(seed=1)
    load_checkpoint(path, dst, strict=True, verbose=False)
    (loss_a, pred_a), (loss_b, pred_b) = mae_outputs(src), mae_outputs(dst)
    assert torch.equal(loss_a, loss_b) and torch.equal(pred_a, pred_b)
    _, report = load_state_dict(path)
    assert report.source == "PyTorch checkpoint ('model' entry, epoch 799)"


def test_encoder_only_release_into_an_encoder(tmp_path, capsys):
    """mae_pretrain_vit_*.pth: {'model': encoder only}; the summary lists what is missing."""
    full = tiny_mae().state_dict()
    enc = {k: v for k, v in full.items() if not k.startswith(("decoder_", "mask_token"))}
    torch.save({"model": enc}, tmp_path / "mae_pretrain_vit_tiny.pth")
    model = tiny_encoder(global_pool=False)
    maekit.load_checkpoint(tmp_path / "mae_pretrain_vit_tiny.pth", model)
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    assert "missing (model keeps its own values): head.bias, head.weight" in line
    assert torch.equal(model.blocks[1].mlp.fc2.weight, enc["blocks.1.mlp.fc2.weight"])
    assert torch.equal(model.norm.weight, enc["norm.weight"])


@pytest.mark.parametrize(
    "wrap, note",
    [
        (lambda sd: sd, None),
        (lambda sd: {"state_dict": sd}, None),
        (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, "'module.' (32 keys)"),
        (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, "'_orig_mod.' (32 keys)"),
        (
            lambda sd: {"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
            "'module.' (32 keys), '_orig_mod.' (32 keys)",
        ),
    ],
)
def test_containers_and_wrapper_prefixes(tmp_path, wrap, note):
    sd = tiny_encoder().state_dict()
    path = tmp_path / "c.pth"
    torch.save(wrap(sd), path)
    state, report = load_state_dict(path)
    assert state.keys() == sd.keys() and all(torch.equal(state[k], sd[k]) for k in sd)
    assert len(sd) == 32
    assert (
        (f"; stripped {note}" in report.summary()) if note else ("stripped" not in report.summary())
    )


def test_legacy_torch_format(tmp_path):
    sd = tiny_encoder().state_dict()
    path = tmp_path / "old.pth"
    torch.save(
        {"model": sd, "args": argparse.Namespace(lr=0.1)},
        path,
        _use_new_zipfile_serialization=False,
    )
    assert detect_format(path) == "pickle"  # a pickle stream; the magic number says torch
    state, _ = load_state_dict(path)
    assert all(torch.equal(state[k], sd[k]) for k in sd)
    assert read_checkpoint(path)["args"] == {"lr": 0.1}


@pytest.mark.parametrize("name", ["model.safetensors", "weights.bin"])
def test_safetensors_by_content(tmp_path, name):
    src = tiny_encoder()
    path = tmp_path / name
    save_file(src.state_dict(), str(path))
    assert detect_format(path) == "safetensors"
    dst = tiny_encoder(seed=5)
    load_checkpoint(path, dst, strict=True, verbose=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    ckpt = read_checkpoint(path)
    assert ckpt["optimizer"] is None and ckpt["model"].keys() == src.state_dict().keys()


def test_strict_and_shape_errors(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"model": tiny_mae().state_dict()}, path)
    model = tiny_encoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MaekitError, match="does not match VisionTransformerEncoder exactly"):
        load_checkpoint(path, model, strict=True, verbose=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched

    torch.save({"model": tiny_encoder(num_classes=3).state_dict()}, path)
    with pytest.raises(MaekitError, match=r"head\.weight \(3, 192\) vs \(10, 192\)"):
        load_checkpoint(path, tiny_encoder(num_classes=10), verbose=False)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b"hello, not a checkpoint\n" * 10, "not a PyTorch, Paddle or safetensors file"),
        (b"PK\x03\x04" + b"\x00" * 40, "could not read checkpoint"),
    ],
)
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(MaekitError, match=match) as ei:
        load_state_dict(path)
    assert "\n" not in str(ei.value) and "bad.pth" in str(ei.value)


def test_no_state_dict_inside(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"epoch": 3, "model": {"a": 1}}, path)
    with pytest.raises(MaekitError, match="no state dict"):
        load_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(MaekitError, match="does not exist"):
        maekit.load_checkpoint(tmp_path / "nope.pth")
