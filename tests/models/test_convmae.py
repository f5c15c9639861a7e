"""ConvMAE pre-training model: official semantics, names, shapes, masking without leakage.

The expected state dict is built here from the recipe's description (stage dims, strides,
block contents), not from the code; the official-layout oracle is tests/models/convmae_reference.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from maekit.errors import MaekitError
from maekit.models import create_model, get_entry, list_models
from maekit.models.convmae import MaskedAutoencoderConvViT
from maekit.models.convvit import stage_strides
from maekit.models.loss import masked_patch_mse
from maekit.models.masking import upsample_mask
from maekit.models.pos_embed import sincos_2d
from tests.models.convmae_reference import (
    assert_same_layout,
    convmae_encoder_nchw,
    official_convmae_base,
)

CONVMAE_NAMES = ["convmae_convvit_small_patch16", "convmae_convvit_base_patch16"]
# the small model, fewer blocks, 32 px with an overall stride of 4: an 8x8 token grid
SMALL = dict(img_size=32, patch_size=4, depth=(2, 2, 2), decoder_depth=1)


def small(**kw) -> MaskedAutoencoderConvViT:
    torch.manual_seed(0)
    return create_model("convmae_convvit_small_patch16", **{**SMALL, **kw})


@pytest.fixture(scope="module")
def model() -> MaskedAutoencoderConvViT:
    return small().eval()


@pytest.fixture
def imgs() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.rand(2, 64, generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------------------------------------
# mask upsampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor, size", [(4, 56), (2, 28)])
def test_upsampled_mask_matches_the_14x14_mask_block_wise(factor, size):
    mask = (torch.rand(3, 196, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    up = upsample_mask(mask, (14, 14), factor)
    assert up.shape == (3, size, size)
    for n in range(3):
        for i in range(size):
            for j in range(size):
                assert up[n, i, j] == mask[n, (i // factor) * 14 + j // factor]


def test_model_masks_its_conv_stages_with_the_upsampled_token_mask():
    """At 224 px the dense path's conv blocks get the 14x14 mask at 56x56 (stage 1) and 28x28
    (stage 2)."""
    torch.manual_seed(0)
    m = create_model(
        "convmae_convvit_small_patch16", depth=(1, 1, 1), decoder_depth=1, dense_stages=True
    )
    seen = {}
    for name in ("blocks1", "blocks2"):
        getattr(m, name)[0].register_forward_hook(
            lambda mod, args, out, name=name: seen.__setitem__(name, args[1])
        )
    noise = torch.rand(1, 196)
    with torch.no_grad():
        _, _, mask = m(torch.randn(1, 3, 224, 224), noise=noise)
    grid = mask.reshape(14, 14)
    for name, size in (("blocks1", 56), ("blocks2", 28)):
        vis = seen[name]
        assert vis.shape == (1, size, size, 1)
        f = size // 14
        expected = (1 - grid).repeat_interleave(f, 0).repeat_interleave(f, 1)
        assert torch.equal(vis[0, :, :, 0], expected)


# ---------------------------------------------------------------------------------------------
# masking: no leakage from masked patches
# ---------------------------------------------------------------------------------------------


def _repaint_masked_patches(imgs: torch.Tensor, mask: torch.Tensor, p: int, value: torch.Tensor):
    out = imgs.clone()
    gw = imgs.shape[-1] // p
    for n, tok in mask.nonzero().tolist():
        i, j = divmod(tok, gw)
        out[n, :, i * p : (i + 1) * p, j * p : (j + 1) * p] = value[
            n, :, i * p : (i + 1) * p, j * p : (j + 1) * p
        ]
    return out


def test_masked_pixels_do_not_change_the_encoder_output(model, imgs, noise):
    with torch.no_grad():
        latent, mask, _ = model.forward_encoder(imgs, 0.75, noise)
        other = _repaint_masked_patches(imgs, mask, 4, torch.randn_like(imgs) * 5)
        assert (other != imgs).any()
        latent2, mask2, _ = model.forward_encoder(other, 0.75, noise)
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(latent2, latent, rtol=0, atol=1e-6)


def test_visible_pixels_do_change_the_encoder_output(model, imgs, noise):
    """The control: the test above could fail."""
    with torch.no_grad():
        latent, mask, _ = model.forward_encoder(imgs, 0.75, noise)
        other = _repaint_masked_patches(imgs, 1 - mask, 4, torch.randn_like(imgs))
        latent2, _, _ = model.forward_encoder(other, 0.75, noise)
    assert (latent2 - latent).abs().max() > 1e-2


def test_without_the_masked_conv_masked_pixels_would_leak(model, imgs, noise):
    """The stage outputs at visible positions: unchanged with the mask, changed without it."""
    _, mask, _ = model.forward_encoder(imgs, 0.75, noise)
    other = _repaint_masked_patches(imgs, mask, 4, torch.randn_like(imgs) * 5)
    vis1 = upsample_mask(1 - mask, model.grid_size, 4).bool()  # (N, 32, 32)
    with torch.no_grad():
        masked = [model.forward_stages(x, visible=1 - mask)[1] for x in (imgs, other)]
        plain = [model.forward_stages(x)[1] for x in (imgs, other)]
    torch.testing.assert_close(masked[1][vis1], masked[0][vis1], rtol=0, atol=1e-6)
    assert (plain[1][vis1] - plain[0][vis1]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# forward semantics
# ---------------------------------------------------------------------------------------------


def test_forward_returns_loss_pred_mask(model, imgs, noise):
    loss, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (2, 64, 4 * 4 * 3)
    assert mask.shape == (2, 64) and mask.dtype == torch.float32
    assert mask.sum(dim=1).tolist() == [48.0, 48.0]  # int(64 * 0.25) = 16 kept
    # small noise is kept
    kept = mask == 0
    assert (
        noise[kept].reshape(2, -1).max(1).values < noise[~kept].reshape(2, -1).min(1).values
    ).all()


def test_same_noise_same_outputs_and_global_rng_without_noise(model, imgs, noise):
    with torch.no_grad():
        a = model(imgs, noise=noise)
        b = model(imgs, noise=noise)
        torch.manual_seed(5)
        c = model(imgs)
        torch.manual_seed(5)
        d = model(imgs)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(c[2], d[2]) and not torch.equal(a[2], c[2])


def test_loss_is_masked_patch_mse(model, imgs, noise):
    with torch.no_grad():
        loss, pred, mask = model(imgs, noise=noise)
    target = model.patchify(imgs)
    per_patch = ((pred - target) ** 2).mean(-1)
    torch.testing.assert_close(loss, (per_patch * mask).sum() / mask.sum())
    m = small(norm_pix_loss=True).eval()
    with torch.no_grad():
        loss_n, pred_n, mask_n = m(imgs, noise=noise)
    torch.testing.assert_close(loss_n, masked_patch_mse(target, pred_n, mask_n, norm_pix=True))


def test_decoder_input_is_unshuffled_with_mask_tokens_and_pos_embed(model, imgs, noise):
    seen = {}
    model.decoder_blocks[0].register_forward_hook(
        lambda mod, args, out: seen.setdefault("x", args[0])
    )
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(imgs, 0.75, noise)
        model.forward_decoder(latent, ids_restore)
        x = seen["x"] - model.decoder_pos_embed  # (N, L, Dd)
        embedded = model.decoder_embed(latent)  # (N, K, Dd), in keep order
    for n in range(2):
        kept = (mask[n] == 0).nonzero().flatten()
        order = kept[noise[n, kept].argsort()]  # keep order = ascending noise
        torch.testing.assert_close(x[n, order], embedded[n])
        removed = (mask[n] == 1).nonzero().flatten()
        torch.testing.assert_close(x[n, removed], model.mask_token[0].expand(len(removed), -1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_layout_equals_the_official_nchw_formulation(dtype, imgs, noise):
    m = small().to(dtype)
    x = imgs.to(dtype)
    latent, mask, ids = m.forward_encoder(x, 0.75, noise)
    # a fixed random readout (the squared norm of a LayerNorm output is ~constant: no gradient)
    w = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    (latent * w).sum().backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    ref, ref_mask, ref_ids = convmae_encoder_nchw(m, x, 0.75, noise)
    (ref * w).sum().backward()
    assert torch.equal(mask, ref_mask) and torch.equal(ids, ref_ids)
    encoder = {
        k
        for k, p in m.named_parameters()
        if p.requires_grad and not k.startswith(("decoder", "mask_token"))
    }
    assert set(grads) == encoder
    pairs = [("latent", latent, ref)] + [(k, g, m.get_parameter(k).grad) for k, g in grads.items()]
    for k, a, b in pairs:
        if dtype == torch.float64:  # the same numbers, up to float64 rounding
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=k)
        else:  # float32 sums in another order: relative error of the whole tensor
            assert (a - b).norm() <= 1e-5 * b.norm(), k


def test_backward_reaches_every_trainable_parameter(imgs, noise):
    m = small()
    loss, _, _ = m(imgs, noise=noise)
    loss.backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (
                name
            )
        else:
            assert p.grad is None, name


# ---------------------------------------------------------------------------------------------
# geometry: sizes, strides, registered variants
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patch, strides", [(16, (4, 2, 2)), (8, (2, 2, 2)), (4, (1, 2, 2)), (32, (8, 2, 2))]
)
def test_stage_strides_scale_with_the_patch_size(patch, strides):
    assert stage_strides(patch) == strides
    m = small(img_size=64, patch_size=patch, depth=(1, 1, 1))
    assert m.patch_embed1.proj.kernel_size == (strides[0],) * 2 == m.patch_embed1.proj.stride
    assert m.grid_size == (64 // patch, 64 // patch)
    assert m.pos_embed.shape == (1, (64 // patch) ** 2, 384)
    assert m.decoder_pred.out_features == patch * patch * 3
    _, pred, _ = m(torch.randn(1, 3, 64, 64))
    assert pred.shape == (1, (64 // patch) ** 2, patch * patch * 3)


@pytest.mark.parametrize("patch", [6, 2, 10])
def test_patch_size_not_a_multiple_of_4_is_a_clear_error(patch):
    with pytest.raises(MaekitError, match="multiple of 4"):
        create_model("convmae_convvit_small_patch16", img_size=120, patch_size=patch)


def test_input_size_not_divisible_is_a_clear_error():
    with pytest.raises(MaekitError, match="divisible"):
        create_model("convmae_convvit_small_patch16", img_size=40)


def test_wrong_input_size_at_forward_is_a_clear_error(model):
    with pytest.raises(ValueError, match="built for"):
        model(torch.randn(1, 3, 64, 64))


def test_non_square_input_and_channels():
    torch.manual_seed(0)
    m = MaskedAutoencoderConvViT(
        img_size=(32, 48),
        patch_size=4,
        in_chans=1,
        embed_dim=(16, 32, 64),
        depth=(1, 1, 1),
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    assert m.grid_size == (8, 12)
    loss, pred, mask = m(torch.randn(2, 1, 32, 48))
    assert pred.shape == (2, 96, 16) and mask.shape == (2, 96)
    assert m.unpatchify(m.patchify(torch.ones(1, 1, 32, 48))).shape == (1, 1, 32, 48)


def test_registered_convmae_models():
    assert set(CONVMAE_NAMES) <= set(list_models("pretrain"))
    for name in CONVMAE_NAMES:
        entry = get_entry(name)
        assert entry.cls is MaskedAutoencoderConvViT and entry.defaults["patch_size"] == 16
    assert get_entry("convmae_convvit_small_patch16").defaults["embed_dim"] == (128, 256, 384)
    every = {n for n in list_models("pretrain") if get_entry(n).cls is MaskedAutoencoderConvViT}
    assert every == set(CONVMAE_NAMES)


@pytest.mark.parametrize("size", [224, 256])
def test_base_runs_forward_backward_at_224_and_256(size):
    torch.manual_seed(0)
    m = create_model("convmae_convvit_base_patch16", img_size=size)
    loss, pred, mask = m(torch.randn(1, 3, size, size))
    g = size // 16
    assert pred.shape == (1, g * g, 768) and mask.shape == (1, g * g)
    loss.backward()
    assert m.patch_embed1.proj.weight.grad.abs().sum() > 0
    assert m.stage1_output_decode.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# init and eps
# ---------------------------------------------------------------------------------------------


def test_pos_embeds_are_fixed_sincos_without_cls_row(model):
    torch.testing.assert_close(model.pos_embed[0], sincos_2d(384, (8, 8)), rtol=0, atol=0)
    torch.testing.assert_close(model.decoder_pos_embed[0], sincos_2d(256, (8, 8)), rtol=0, atol=0)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "decoder_pos_embed"}


def test_layernorm_eps_1e5_in_conv_parts_and_1e6_elsewhere(model):
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    conv_part = ("patch_embed", "blocks1.", "blocks2.")
    assert any(n.startswith("blocks1.") for n in norms) and any(
        n.startswith("patch_embed3") for n in norms
    )
    for name, norm in norms.items():
        assert norm.eps == (1e-5 if name.startswith(conv_part) else 1e-6), name


def test_linear_xavier_and_mask_token_init():
    torch.manual_seed(0)
    m = create_model("convmae_convvit_base_patch16", depth=(1, 1, 1), decoder_depth=1)
    w = m.patch_embed4.weight
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.count_nonzero(m.patch_embed4.bias) == 0
    w3 = m.patch_embed3.proj.weight.view(768, -1)  # xavier on its matrix view, as the official
    assert w3.abs().max() <= math.sqrt(6 / sum(w3.shape)) and w3.abs().max() > 0.9 * math.sqrt(
        6 / sum(w3.shape)
    )
    assert abs(m.mask_token.std().item() - 0.02) < 0.004


# ---------------------------------------------------------------------------------------------
# official state-dict names and shapes
# ---------------------------------------------------------------------------------------------


def test_base_state_dict_equals_the_official_layout():
    with torch.device("meta"):
        m = create_model("convmae_convvit_base_patch16")
    assert_same_layout(
        {k: tuple(v.shape) for k, v in m.state_dict().items()}, official_convmae_base()
    )
    assert m.blocks3[0].attn.num_heads == 12 and m.decoder_blocks[0].attn.num_heads == 16
