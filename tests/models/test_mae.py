"""MaskedAutoencoderViT behaviour at a tiny size (32x32 input, 4x4 patches -> 8x8 grid)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from maekit.models import MaskedAutoencoderViT, create_model
from maekit.models.masking import patchify, random_masking
from maekit.models.pos_embed import sincos_2d

IMG, P, C = 32, 4, 3
L = (IMG // P) ** 2  # 64 patches
N = 2


def _tiny(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return create_model("mae_vit_tiny_patch16", img_size=IMG, patch_size=P, **overrides).eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _tiny()


@pytest.fixture
def imgs() -> torch.Tensor:
    return torch.randn(N, C, IMG, IMG, generator=torch.Generator().manual_seed(42))


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.rand(N, L, generator=torch.Generator().manual_seed(7))


# ---------------------------------------------------------------------------------------------
# forward: signature, determinism, masking
# ---------------------------------------------------------------------------------------------


def test_forward_returns_loss_pred_mask(model, imgs, noise):
    with torch.no_grad():
        out = model(imgs, mask_ratio=0.75, noise=noise)
    assert isinstance(out, tuple) and len(out) == 3
    loss, pred, mask = out
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    assert pred.shape == (N, L, P * P * C)
    assert mask.shape == (N, L)
    assert mask.dtype == torch.float32
    assert mask.sum(dim=1).tolist() == [float(L - int(L * 0.25))] * N


def test_default_mask_ratio_is_0_75(model, imgs):
    with torch.no_grad():
        _, _, mask = model(imgs)
    assert mask.sum(dim=1).tolist() == [48.0, 48.0]


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_same_noise_gives_identical_outputs_and_the_random_masking_mask(model, imgs, noise, ratio):
    with torch.no_grad():
        loss1, pred1, mask1 = model(imgs, mask_ratio=ratio, noise=noise)
        loss2, pred2, mask2 = model(imgs, mask_ratio=ratio, noise=noise.clone())
    assert torch.equal(loss1, loss2)
    assert torch.equal(pred1, pred2)
    assert torch.equal(mask1, mask2)
    _, expected_mask, _ = random_masking(torch.zeros(N, L, 1), ratio, noise)
    assert torch.equal(mask1, expected_mask)


def test_different_noise_gives_a_different_mask(model, imgs, noise):
    with torch.no_grad():
        _, _, mask1 = model(imgs, noise=noise)
        _, _, mask2 = model(imgs, noise=1.0 - noise)  # reversed order: complementary keep sets
    assert not torch.equal(mask1, mask2)
    # with reversed noise the 16 kept patches must be among the 48 previously removed ones
    assert torch.all(mask1[mask2 == 0] == 1)


def test_forward_loss_is_what_forward_returns(model, imgs, noise):
    with torch.no_grad():
        loss, pred, mask = model(imgs, noise=noise)
        again = model.forward_loss(imgs, pred, mask)
    torch.testing.assert_close(loss, again)


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------


def _mask_from_noise(noise: torch.Tensor, ratio: float = 0.75) -> torch.Tensor:
    return random_masking(torch.zeros(*noise.shape, 1), ratio, noise)[1]


def test_loss_is_zero_when_removed_patches_are_exact_and_visible_ones_wrong(model, imgs, noise):
    mask = _mask_from_noise(noise)
    pred = patchify(imgs, P).clone()
    pred[mask == 0] += 1000.0  # visible patches wildly wrong
    loss = model.forward_loss(imgs, pred, mask)
    assert loss.item() == 0.0


def test_loss_counts_removed_patches_with_a_known_value(model, imgs, noise):
    mask = _mask_from_noise(noise)
    pred = patchify(imgs, P).clone()
    pred[mask == 1] += 2.0  # removed patches off by 2 everywhere -> per-patch mse 4
    torch.testing.assert_close(model.forward_loss(imgs, pred, mask), torch.tensor(4.0))
    # visible errors of any size change nothing
    pred[mask == 0] -= 50.0
    torch.testing.assert_close(model.forward_loss(imgs, pred, mask), torch.tensor(4.0))


def test_loss_is_mean_of_per_patch_mse_over_removed_patches(model, imgs):
    gen = torch.Generator().manual_seed(11)
    pred = torch.randn(N, L, P * P * C, generator=gen)
    mask = (torch.rand(N, L, generator=gen) < 0.6).float()
    target = patchify(imgs, P)
    per_patch = []
    for n in range(N):
        for patch in range(L):
            if mask[n, patch] == 1:
                diff = pred[n, patch].double() - target[n, patch].double()
                per_patch.append((diff**2).sum().item() / diff.numel())
    expected = sum(per_patch) / len(per_patch)
    loss = model.forward_loss(imgs, pred, mask)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    # and it is not the mean over all patches
    everything = ((pred - target) ** 2).mean().item()
    assert not math.isclose(loss.item(), everything, rel_tol=1e-3)


def test_norm_pix_loss_normalises_each_target_patch_with_unbiased_var(imgs):
    model = _tiny(norm_pix_loss=True)
    assert model.norm_pix_loss is True
    # give the patches different scales and offsets so the normalisation matters
    imgs = imgs * 3.0 + 0.5
    gen = torch.Generator().manual_seed(12)
    pred = torch.randn(N, L, P * P * C, generator=gen)
    mask = (torch.rand(N, L, generator=gen) < 0.75).float()

    def expected_loss(ddof: int) -> float:
        total, count = 0.0, 0
        for n in range(N):
            for i in range(IMG // P):
                for j in range(IMG // P):
                    # the patch, read straight from the image, in (p, q, c) order
                    t = imgs[n, :, i * P : (i + 1) * P, j * P : (j + 1) * P].permute(1, 2, 0)
                    t = t.reshape(-1).double()
                    mean = t.sum() / t.numel()
                    var = ((t - mean) ** 2).sum() / (t.numel() - ddof)
                    tn = (t - mean) / torch.sqrt(var + 1e-6)
                    patch = i * (IMG // P) + j
                    if mask[n, patch] == 1:
                        total += ((pred[n, patch].double() - tn) ** 2).mean().item()
                        count += 1
        return total / count

    unbiased, biased = expected_loss(1), expected_loss(0)
    assert not math.isclose(unbiased, biased, rel_tol=1e-4)  # the test can tell them apart
    loss = model.forward_loss(imgs, pred, mask).item()
    assert math.isclose(loss, unbiased, rel_tol=1e-5)

    # predicting the normalised target exactly on removed patches gives ~0
    target = patchify(imgs, P)
    tn = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert model.forward_loss(imgs, tn, mask).item() < 1e-10
    # ... while the raw target does not
    assert model.forward_loss(imgs, target, mask).item() > 0.1


# ---------------------------------------------------------------------------------------------
# encoder / decoder wiring
# ---------------------------------------------------------------------------------------------


def test_patch_embed_token_l_is_patch_l_of_patchify(model, imgs):
    """Token order of the conv patch embed is the patchify (row-major) order."""
    w = model.patch_embed.proj.weight  # (D, C, p, p)
    b = model.patch_embed.proj.bias
    expected = patchify(imgs, P) @ w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).T + b
    with torch.no_grad():
        tokens = model.patch_embed(imgs)
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-5)


def test_encoder_input_is_cls_plus_visible_tokens_with_their_pos_embed(model, imgs, noise):
    captured = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda m, a: captured.update(x=a[0]))
    try:
        with torch.no_grad():
            latent, mask, _ = model.forward_encoder(imgs, 0.75, noise)
            tokens = model.patch_embed(imgs)
    finally:
        hook.remove()
    x = captured["x"]
    keep = int(L * 0.25)
    assert x.shape == (N, 1 + keep, 192)
    assert latent.shape == (N, 1 + keep, 192)
    pos = model.pos_embed[0]
    ids_keep = torch.argsort(noise, dim=1)[:, :keep]
    for n in range(N):
        torch.testing.assert_close(x[n, 0], model.cls_token[0, 0] + pos[0])
        torch.testing.assert_close(x[n, 1:], tokens[n, ids_keep[n]] + pos[1 + ids_keep[n]])
        assert torch.all(mask[n, ids_keep[n]] == 0)


def test_decoder_input_is_unshuffled_with_mask_tokens_and_pos_embed(model, imgs, noise):
    captured = {}
    hook = model.decoder_blocks[0].register_forward_pre_hook(lambda m, a: captured.update(x=a[0]))
    try:
        with torch.no_grad():
            latent, mask, ids_restore = model.forward_encoder(imgs, 0.75, noise)
            pred = model.forward_decoder(latent, ids_restore)
            emb = model.decoder_embed(latent)
    finally:
        hook.remove()
    assert pred.shape == (N, L, P * P * C)
    x = captured["x"]
    assert x.shape == (N, 1 + L, 128)
    dpe = model.decoder_pos_embed[0]
    ids_keep = torch.argsort(noise, dim=1)[:, : int(L * 0.25)]
    for n in range(N):
        torch.testing.assert_close(x[n, 0], emb[n, 0] + dpe[0])  # cls stays first
        # visible tokens back at their original positions
        torch.testing.assert_close(x[n, 1 + ids_keep[n]], emb[n, 1:] + dpe[1 + ids_keep[n]])
        removed = torch.nonzero(mask[n]).squeeze(1)
        assert removed.numel() == 48
        torch.testing.assert_close(
            x[n, 1 + removed], model.mask_token[0].expand(48, -1) + dpe[1 + removed]
        )


def test_masked_pixels_do_not_change_the_encoder_output(model, imgs, noise):
    with torch.no_grad():
        latent1, mask, _ = model.forward_encoder(imgs, 0.75, noise)
        patches = patchify(imgs, P)
        changed = patches.clone()
        changed[mask == 1] = torch.randn(int(mask.sum()), P * P * C) * 10
        imgs2 = model.unpatchify(changed)
        assert not torch.allclose(imgs2, imgs)
        latent2, mask2, _ = model.forward_encoder(imgs2, 0.75, noise)
        assert torch.equal(mask, mask2)
        torch.testing.assert_close(latent2, latent1, rtol=0, atol=1e-5)

        # the converse: changing one visible patch does change the encoder output
        visible = patches.clone()
        n0, l0 = torch.nonzero(mask == 0)[0].tolist()
        visible[n0, l0] += 5.0
        latent3, _, _ = model.forward_encoder(model.unpatchify(visible), 0.75, noise)
        assert (latent3 - latent1).abs().max() > 1e-3


def test_backward_gradients(imgs, noise):
    model = _tiny().train()
    loss, _, _ = model(imgs, noise=noise)
    loss.backward()
    assert model.pos_embed.grad is None
    assert model.decoder_pos_embed.grad is None
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
    assert model.cls_token.grad.abs().sum() > 0
    assert model.mask_token.grad.abs().sum() > 0
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# init facts
# ---------------------------------------------------------------------------------------------


def test_pos_embeds_are_fixed_sincos_with_cls_row(model):
    assert model.pos_embed.requires_grad is False
    assert model.decoder_pos_embed.requires_grad is False
    grid = (IMG // P, IMG // P)
    assert torch.equal(model.pos_embed.data, sincos_2d(192, grid, cls_token=True)[None])
    assert torch.equal(model.decoder_pos_embed.data, sincos_2d(128, grid, cls_token=True)[None])
    assert torch.count_nonzero(model.pos_embed[0, 0]) == 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "pos_embed" not in trainable and "decoder_pos_embed" not in trainable
    assert {"cls_token", "mask_token"} <= trainable


def test_every_layernorm_has_eps_1e_6_and_unit_weight_zero_bias(model):
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    # 2 per encoder block + final, 2 per decoder block + final
    assert len(norms) == (2 * 12 + 1) + (2 * 4 + 1)
    for m in norms:
        assert m.eps == 1e-6
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_linear_layers_xavier_uniform_with_zero_bias(model):
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    # qkv, proj, fc1, fc2 per block + decoder_embed + decoder_pred
    assert len(linears) == 4 * (12 + 4) + 2
    for name, m in linears:
        assert m.bias is not None, name
        assert torch.count_nonzero(m.bias) == 0, name
        fan_out, fan_in = m.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        wmax = m.weight.abs().max().item()
        assert wmax <= bound, name
        assert wmax > 0.95 * bound, name  # torch's default would be bounded by 1/sqrt(fan_in)


def test_patch_embed_conv_is_xavier_on_its_matrix_view(model):
    w = model.patch_embed.proj.weight  # (192, 3, 4, 4) viewed as (192, 48)
    bound = math.sqrt(6.0 / (192 + 3 * P * P))
    assert bound > 1.05 / math.sqrt(3 * P * P)  # distinguishable from the conv default
    wmax = w.abs().max().item()
    assert 0.95 * bound < wmax <= bound


def test_cls_and_mask_tokens_are_normal_std_0_02(model):
    for t in (model.cls_token, model.mask_token):
        assert t.requires_grad
        assert 0.015 < t.std().item() < 0.025
        assert abs(t.mean().item()) < 0.006
    assert model.cls_token.shape == (1, 1, 192)
    assert model.mask_token.shape == (1, 1, 128)


def test_no_weight_decay_excludes_nothing_for_pretraining(model):
    # recipe: cls_token and mask_token DO get weight decay; the frozen pos-embeds are not trained
    assert model.no_weight_decay() == set()


# ---------------------------------------------------------------------------------------------
# patchify helpers and other geometries
# ---------------------------------------------------------------------------------------------


def test_patchify_methods_round_trip(model, imgs):
    x = model.patchify(imgs)
    assert x.shape == (N, L, P * P * C)
    assert torch.equal(x, patchify(imgs, P))
    assert torch.equal(model.unpatchify(x), imgs)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_non_square_input_and_channels(in_chans):
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(
        img_size=(16, 32),
        patch_size=8,
        in_chans=in_chans,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    assert m.grid_size == (2, 4)
    assert torch.equal(m.pos_embed.data, sincos_2d(32, (2, 4), cls_token=True)[None])
    assert torch.equal(m.decoder_pos_embed.data, sincos_2d(16, (2, 4), cls_token=True)[None])
    imgs = torch.randn(2, in_chans, 16, 32)
    loss, pred, mask = m(imgs, mask_ratio=0.5)
    assert pred.shape == (2, 8, 8 * 8 * in_chans)
    assert mask.sum(dim=1).tolist() == [4.0, 4.0]
    assert torch.isfinite(loss)
    assert m.unpatchify(pred).shape == imgs.shape
    assert torch.equal(m.unpatchify(m.patchify(imgs)), imgs)
