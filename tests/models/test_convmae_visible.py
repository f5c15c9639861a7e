"""ConvMAE's conv stages at the visible cells only (the default) against the dense masked path
(``dense_stages=True``, the official computation): the same loss and gradients in float64."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from maekit.models import create_model
from maekit.models.convvit import VisibleCells

# The registered widths (stages 1-2 as registered), a shorter stage 3 and decoder: the conv
# stages are what the two paths compute differently.
SHORT = dict(depth=(2, 2, 2), decoder_depth=1)
# (size, patch): square and not, every stage-1 stride (P/4 = 1, 2, 4), masks on a 1-token-wide
# grid edge
GEOMETRIES = [((32, 32), 4), ((48, 80), 8), ((64, 96), 16), ((16, 112), 16)]


def pair(name: str, size, patch, **kw):
    """The same weights built twice: visible-cell and dense."""
    models = []
    for dense in (False, True):
        torch.manual_seed(0)
        m = create_model(name, img_size=size, patch_size=patch, dense_stages=dense, **SHORT, **kw)
        models.append(m.double())
    return models


def loss_and_grads(model, imgs, noise, ratio):
    model.zero_grad(set_to_none=True)
    loss, pred, mask = model(imgs, mask_ratio=ratio, noise=noise)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), pred.detach(), mask, grads


def assert_same(a, b):
    (la, pa, ma, ga), (lb, pb, mb, gb) = a, b
    assert torch.equal(ma, mb)
    torch.testing.assert_close(la, lb, rtol=1e-12, atol=0)
    torch.testing.assert_close(pa, pb, rtol=1e-11, atol=1e-12)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for k in ga:  # every gradient, to float64 rounding
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("name", ["convmae_convvit_small_patch16", "convmae_convvit_base_patch16"])
@pytest.mark.parametrize("size, patch", GEOMETRIES)
def test_visible_cells_give_the_dense_loss_and_gradients(name, size, patch):
    visible, dense = pair(name, size, patch, norm_pix_loss=True)
    assert not visible.dense_stages and dense.dense_stages
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    cells = visible.num_patches
    for ratio in (0.75, 0.5):  # two masks per geometry, of two ratios
        noise = torch.rand(2, cells, generator=g)
        assert_same(loss_and_grads(visible, imgs, noise, ratio),
                    loss_and_grads(dense, imgs, noise, ratio))  # fmt: skip


def test_every_trainable_parameter_gets_a_gradient_on_both_paths():
    visible, dense = pair("convmae_convvit_small_patch16", (32, 32), 4)
    imgs = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    noise = torch.rand(2, 64)
    want = {k for k, p in dense.named_parameters() if p.requires_grad}
    assert set(loss_and_grads(visible, imgs, noise, 0.75)[3]) == want
    assert set(loss_and_grads(dense, imgs, noise, 0.75)[3]) == want


def test_grad_ckpt_on_the_visible_path_gives_the_same_gradients():
    visible, dense = pair("convmae_convvit_small_patch16", (48, 80), 8)
    imgs = torch.randn(2, 3, 48, 80, dtype=torch.float64)
    noise = torch.rand(2, visible.num_patches)
    plain = loss_and_grads(visible, imgs, noise, 0.75)
    visible.set_grad_checkpointing(True)
    assert_same(loss_and_grads(visible, imgs, noise, 0.75), plain)
    assert_same(plain, loss_and_grads(dense, imgs, noise, 0.75))


def test_the_visible_path_computes_only_the_visible_cells():
    """The conv blocks see (N*K, f, f, C) rows: a quarter of the cells at mask ratio 0.75."""
    torch.manual_seed(0)
    m = create_model("convmae_convvit_small_patch16", depth=(1, 1, 1), decoder_depth=1)
    seen = {}
    for name in ("blocks1", "blocks2"):
        getattr(m, name)[0].register_forward_hook(
            lambda mod, args, out, name=name: seen.__setitem__(name, (args[0].shape, args[1]))
        )
    with torch.no_grad():
        m(torch.randn(2, 3, 224, 224), mask_ratio=0.75)
    assert seen["blocks1"][0] == (2 * 49, 4, 4, 128)  # 49 of 196 tokens, their 4x4 cells
    assert seen["blocks2"][0] == (2 * 49, 2, 2, 256)
    assert isinstance(seen["blocks1"][1], VisibleCells)


def test_depthwise_at_visible_cells_sees_zeros_at_masked_neighbours():
    """The one neighbourhood operation against a hand-built grid: visible cells scattered into
    zeros, the conv on the whole grid, the visible cells read back."""
    conv = torch.nn.Conv2d(3, 3, 5, padding=2, groups=3).double()
    n, (h, w), f = 2, (3, 4), 2
    ids = torch.tensor([[0, 5, 11], [7, 2, 3]])
    y = torch.randn(n * 3, f, f, 3, dtype=torch.float64)
    grid = torch.zeros(n, h * f, w * f, 3, dtype=torch.float64)
    for b in range(n):
        for k, t in enumerate(ids[b].tolist()):
            i, j = divmod(t, w)
            grid[b, i * f : (i + 1) * f, j * f : (j + 1) * f] = y[b * 3 + k]
    full = conv(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    out = VisibleCells(ids, (h, w)).depthwise(conv, y)
    for b in range(n):
        for k, t in enumerate(ids[b].tolist()):
            i, j = divmod(t, w)
            want = full[b, i * f : (i + 1) * f, j * f : (j + 1) * f]
            torch.testing.assert_close(out[b * 3 + k], want, rtol=0, atol=1e-14)


def test_pretrain_dense_stages_flag_selects_the_dense_path_and_refuses_other_families():
    from maekit.config import PretrainConfig
    from maekit.errors import MaekitError
    from maekit.phases.pretrain import build_model

    geo = dict(input_size=32, patch_size=4, device="cpu")
    cfg = PretrainConfig(model="convmae_convvit_small_patch16", **geo)
    assert not build_model(cfg).dense_stages  # the visible cells by default
    assert build_model(replace(cfg, dense_stages=True)).dense_stages
    with pytest.raises(MaekitError, match="--dense_stages selects ConvMAE's dense conv stages"):
        build_model(replace(cfg, model="mae_vit_tiny_patch16", dense_stages=True))
