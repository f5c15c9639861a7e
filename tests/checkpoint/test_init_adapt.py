"""``pretrain --init``: weights fitted to other channels and grids (maekit/checkpoint/adapt.py)."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from timm.models import adapt_input_conv

from maekit.checkpoint.adapt import adapt_output_channels, adapt_to_model, is_sincos
from maekit.checkpoint.pretrained import init_from_checkpoint
from maekit.data.fashion_mnist import FashionMNIST
from maekit.errors import MaekitError
from maekit.models import create_model
from maekit.models.pos_embed import interpolate_pos_embed, sincos_2d

TINY = dict(depth=2, decoder_depth=1, patch_size=8)
GRAY_MEAN, GRAY_STD = 0.449, 0.226  # the ImageNet statistics averaged over RGB


def tiny_mae(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return create_model("mae_vit_tiny_patch16", **{**TINY, "img_size": 32, **kw})


def save_official(path, model, input_size=32) -> None:
    """The official layout: {'model', 'epoch', 'args' (an argparse.Namespace)}."""
    args = argparse.Namespace(
        model="mae_vit_tiny_patch16", input_size=input_size, norm_pix_loss=False
    )
    torch.save({"model": model.state_dict(), "epoch": 799, "args": args}, path)


def test_input_conv_follows_timm_and_keeps_the_gray_response():
    w = torch.randn(8, 3, 4, 4)
    one = adapt_to_model({"patch_embed.proj.weight": w}, tiny_mae(in_chans=1, patch_size=4))[0]
    four = adapt_to_model({"patch_embed.proj.weight": w}, tiny_mae(in_chans=4, patch_size=4))[0]
    torch.testing.assert_close(
        one["patch_embed.proj.weight"], adapt_input_conv(1, w), rtol=0, atol=0
    )
    torch.testing.assert_close(
        four["patch_embed.proj.weight"], adapt_input_conv(4, w), rtol=0, atol=0
    )
    gray = torch.randn(2, 1, 8, 8)  # a gray image is an RGB image with three equal channels
    torch.testing.assert_close(
        F.conv2d(gray, one["patch_embed.proj.weight"], stride=4),
        F.conv2d(gray.expand(-1, 3, -1, -1), w, stride=4),
    )


def test_decoder_output_layer_predicts_the_mean_or_repeats():
    p, d = 4, 6
    w, b = torch.randn(p * p * 3, d), torch.randn(p * p * 3)
    x = torch.randn(5, d)
    rgb = (x @ w.T + b).reshape(5, p * p, 3)  # channel fastest, as patchify
    gray = x @ adapt_output_channels(w, p, 3, 1).T + adapt_output_channels(b, p, 3, 1)
    torch.testing.assert_close(gray, rgb.mean(dim=-1))
    five = (x @ adapt_output_channels(w, p, 3, 5).T).reshape(5, p * p, 5)
    torch.testing.assert_close(five[..., 3:], (x @ w.T).reshape(5, p * p, 3)[..., :2])


def test_full_checkpoint_into_a_one_channel_non_square_model(tmp_path):
    src = tiny_mae()
    save_official(tmp_path / "full.pth", src)
    model = tiny_mae(seed=5, img_size=(24, 40), in_chans=1)
    line = init_from_checkpoint(model, tmp_path / "full.pth")
    assert "adapted patch_embed.proj 3 -> 1 input channels (sum" in line
    assert "adapted decoder_pred 192 -> 64 outputs" in line
    assert "recomputed pos_embed and decoder_pos_embed for the 3x5 grid" in line
    assert "newly initialised: none" in line
    own = model.state_dict()
    torch.testing.assert_close(own["pos_embed"][0, 1:], sincos_2d(192, (3, 5)), rtol=0, atol=0)
    for k in (
        "blocks.1.attn.qkv.weight",
        "decoder_blocks.0.mlp.fc2.weight",
        "mask_token",
        "norm.bias",
    ):
        assert torch.equal(own[k], src.state_dict()[k]), k


def test_encoder_only_checkpoint_gets_a_fresh_decoder(tmp_path):
    src = tiny_mae()
    enc = {
        k: v for k, v in src.state_dict().items() if not k.startswith(("decoder_", "mask_token"))
    }
    torch.save({"model": enc}, tmp_path / "enc.pth")
    model = tiny_mae(seed=5)
    fresh = model.decoder_pred.weight.detach().clone()
    line = init_from_checkpoint(model, tmp_path / "enc.pth")
    assert "the checkpoint has no decoder: decoder freshly initialised" in line
    assert torch.equal(model.decoder_pred.weight, fresh)
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    # a checkpoint missing encoder weights is refused
    del enc["blocks.1.mlp.fc1.weight"]
    torch.save({"model": enc}, tmp_path / "broken.pth")
    with pytest.raises(MaekitError, match="lacks encoder weights.*blocks.1.mlp.fc1.weight"):
        init_from_checkpoint(tiny_mae(), tmp_path / "broken.pth")


def test_learned_table_is_resized_and_sincos_detected():
    grid = (4, 6)
    table = sincos_2d(32, grid, cls_token=True)[None]
    assert is_sincos(table, grid, 1) and not is_sincos(table + 0.01, grid, 1)
    learned = torch.randn(1, 1 + 4 * 6, 32)
    resized = interpolate_pos_embed(learned, (2, 3), 1, old_grid=grid)
    ref = (
        F.interpolate(
            learned[:, 1:].reshape(1, 4, 6, 32).permute(0, 3, 1, 2),
            size=(2, 3),
            mode="bicubic",
            align_corners=False,
        )
        .permute(0, 2, 3, 1)
        .reshape(1, 6, 32)
    )
    torch.testing.assert_close(resized, torch.cat([learned[:, :1], ref], dim=1))
    with pytest.raises(ValueError, match="not square"):
        interpolate_pos_embed(learned, (2, 3), 1)
    state = tiny_mae().state_dict()
    state["pos_embed"] = torch.randn(1, 17, 192)  # learned: resized, not recomputed
    model = tiny_mae(img_size=(16, 24))
    _, notes = adapt_to_model(state, model, (4, 4))
    assert any("resized pos_embed bicubically to the 2x3 grid" in n for n in notes)


def fashion_batch(n: int, size: tuple[int, int], chans: int, start: int = 0) -> torch.Tensor:
    """Real images: Fashion-MNIST resized, normalised with ImageNet-derived statistics."""
    ds = FashionMNIST("train")
    x = torch.tensor(ds.images[start : start + n]).float().div(255)[:, None]  # (N, 1, 28, 28)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    if chans == 1:
        return (x - GRAY_MEAN) / GRAY_STD
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def test_init_from_trained_weights_beats_random_init_on_gray_non_square(tmp_path):
    """Square RGB training, then a one-channel 24x40 model: the adapted weights still
    reconstruct, a random model does not."""
    src = tiny_mae(seed=0)
    opt = torch.optim.AdamW(src.parameters(), lr=1e-3, betas=(0.9, 0.95))
    data = fashion_batch(512, (32, 32), 3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(data), (32,), generator=gen)
        loss = src(data[idx], mask_ratio=0.75)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_official(tmp_path / "trained.pth", src)
    batch = fashion_batch(16, (24, 40), 1, start=1000)  # images not trained on
    noise = torch.rand(16, 15, generator=torch.Generator().manual_seed(1))
    init = tiny_mae(seed=7, img_size=(24, 40), in_chans=1).eval()
    init_from_checkpoint(init, tmp_path / "trained.pth")
    rand = tiny_mae(seed=7, img_size=(24, 40), in_chans=1).eval()
    with torch.no_grad():
        init_loss = init(batch, 0.75, noise)[0].item()
        rand_loss = rand(batch, 0.75, noise)[0].item()
    print(f"step-0 loss: init {init_loss:.4f}, random init {rand_loss:.4f}")
    assert init_loss < 0.6 * rand_loss, (init_loss, rand_loss)
