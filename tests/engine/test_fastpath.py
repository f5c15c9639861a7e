"""Speed switches change speed, not numbers: fused attention, activation checkpointing,
torch.compile and fused AdamW give the plain path's loss and gradients on a fixed batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from maekit.config import FinetuneConfig, PretrainConfig
from maekit.engine.distributed import DistEnv
from maekit.engine.fastpath import (
    enable_grad_checkpointing,
    fused_attention_modules,
    set_fused_attention,
)
from maekit.engine.parallelize import parallelize
from maekit.engine.precision import resolve_precision
from maekit.errors import MaekitError
from maekit.models import create_model

MAE_TINY = dict(img_size=32, patch_size=8)


def _mae(**kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model("mae_vit_tiny_patch16", **{**MAE_TINY, **kw})


def _vit(**kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16", img_size=32, patch_size=8, num_classes=5, **kw)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _mae_loss_and_grads(model: nn.Module, imgs, noise, seed: int = 1):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(imgs, 0.75, noise)[0]
    loss.backward()
    return loss.detach(), _grads(model)


def _vit_loss_and_grads(model: nn.Module, imgs, labels, seed: int = 1):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # drop path draws from the global stream
    loss = nn.functional.cross_entropy(model(imgs), labels)
    loss.backward()
    return loss.detach(), _grads(model)


def _assert_same(a, b, rtol: float, atol: float) -> None:
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=rtol, atol=atol, msg=name)


@pytest.fixture
def imgs() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.rand(3, 16, generator=torch.Generator().manual_seed(1))


# --- fused attention ----------------------------------------------------------------------


def test_fused_attention_switch_reaches_every_block():
    model = _mae()
    on, total = fused_attention_modules(model)
    assert total == 12 + 4  # encoder + decoder blocks of the tiny MAE
    assert set_fused_attention(model, False) == total
    assert fused_attention_modules(model) == (0, total)
    set_fused_attention(model, True)
    assert fused_attention_modules(model) == (total, total)


def test_fused_attention_gives_the_matmul_loss_and_gradients(imgs, noise):
    model = _mae()
    set_fused_attention(model, True)
    fused = _mae_loss_and_grads(model, imgs, noise)
    set_fused_attention(model, False)
    plain = _mae_loss_and_grads(model, imgs, noise)
    _assert_same(fused, plain, rtol=1e-5, atol=1e-6)


# --- activation checkpointing -------------------------------------------------------------


def _count_block_forwards(blocks) -> list[int]:
    """Forward calls of the blocks' attention (the checkpoint re-runs a block's insides)."""
    calls = [0]
    for blk in blocks:
        blk.attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_mae_grad_ckpt_same_loss_and_gradients_and_blocks_rerun(imgs, noise):
    model = _mae()
    calls = _count_block_forwards([*model.blocks, *model.decoder_blocks])
    plain = _mae_loss_and_grads(model, imgs, noise)
    assert calls[0] == 16  # each block once
    model.set_grad_checkpointing(True)
    calls[0] = 0
    ckpt = _mae_loss_and_grads(model, imgs, noise)
    assert calls[0] == 32  # forward, then again in backward: activations were not kept
    _assert_same(ckpt, plain, rtol=0, atol=1e-6)


def test_mae_grad_ckpt_is_off_without_grad(imgs, noise):
    model = _mae()
    model.set_grad_checkpointing(True)
    calls = _count_block_forwards(model.blocks)
    with torch.no_grad():
        model.forward_features(imgs)
    assert calls[0] == 12


def test_vit_grad_ckpt_with_drop_path_same_loss_and_gradients(imgs):
    model = _vit(drop_path_rate=0.2).train()
    labels = torch.tensor([0, 3, 4])
    plain = _vit_loss_and_grads(model, imgs, labels)
    enable_grad_checkpointing(model)
    assert model.grad_checkpointing
    ckpt = _vit_loss_and_grads(model, imgs, labels)
    _assert_same(ckpt, plain, rtol=0, atol=1e-6)


def test_grad_ckpt_on_a_model_without_it_is_a_clear_error():
    with pytest.raises(MaekitError, match="--grad_ckpt"):
        enable_grad_checkpointing(nn.Linear(2, 2), "'linear'")


def _parallelize(model: nn.Module, cfg) -> nn.Module:
    """The step module parallelize() makes from a phase config's flags, in one CPU process."""
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    pm = parallelize(
        model,
        env,
        resolve_precision("none", env.device),
        cfg.dist_mode,
        cfg.grad_ckpt,
        cfg.compile,
        repr(cfg.model),
    )
    assert pm.bare is model
    return pm.step


def test_parallelize_applies_the_fast_paths_from_the_phase_config():
    model = _mae()
    cfg = PretrainConfig(model="mae_vit_tiny_patch16", grad_ckpt=True)
    assert _parallelize(model, cfg) is model and model.grad_checkpointing
    vit = _vit()
    assert _parallelize(vit, FinetuneConfig()) is vit and not vit.grad_checkpointing
    compiled = _parallelize(vit, FinetuneConfig(compile=True))
    assert compiled is not vit and compiled._orig_mod is vit
    assert list(vit.state_dict()) == [k.removeprefix("_orig_mod.") for k in compiled.state_dict()]


def test_phase_flags_exist():
    from maekit.cli import build_parser

    args = build_parser().parse_args(["pretrain", "--compile", "--grad_ckpt"])
    assert args.compile and args.grad_ckpt
    args = build_parser().parse_args(["finetune"])
    assert not args.compile and not args.grad_ckpt


# --- torch.compile ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is not available")
def test_compiled_mae_gives_the_eager_loss_and_gradients():
    """The real inductor path on a one-block MAE (compiling takes ~1 min on a cold cache)."""
    tiny = dict(
        img_size=16,
        embed_dim=16,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    model = _mae(**tiny)
    imgs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(2, 4, generator=torch.Generator().manual_seed(1))
    eager = _mae_loss_and_grads(model, imgs, noise)
    compiled = torch.compile(model)
    model.zero_grad(set_to_none=True)
    loss = compiled(imgs, 0.75, noise)[0]
    loss.backward()
    _assert_same((loss.detach(), _grads(model)), eager, rtol=1e-4, atol=1e-5)


# --- ConvMAE / ConvViT --------------------------------------------------------------------

CONV_SMALL = dict(img_size=32, patch_size=4, depth=(1, 1, 2))


def test_convmae_grad_ckpt_same_loss_and_gradients_in_every_stage():
    torch.manual_seed(0)
    model = create_model("convmae_convvit_small_patch16", **CONV_SMALL, decoder_depth=1)
    imgs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    plain = _mae_loss_and_grads(model, imgs, noise)
    calls = [0]
    for blk in [*model.blocks1, *model.blocks2, *model.blocks3, *model.decoder_blocks]:
        blk.attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    enable_grad_checkpointing(model)
    ckpt = _mae_loss_and_grads(model, imgs, noise)
    assert calls[0] == 2 * 5  # conv stages, transformer stage and decoder all re-run
    _assert_same(ckpt, plain, rtol=0, atol=1e-6)
    set_fused_attention(model, False)
    assert fused_attention_modules(model) == (0, 2 + 1)  # stage-3 + decoder blocks


def test_convvit_grad_ckpt_with_drop_path_same_loss_and_gradients():
    torch.manual_seed(0)
    model = create_model("convvit_small_patch16", **CONV_SMALL, num_classes=5, drop_path_rate=0.3)
    imgs = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 4])
    plain = _vit_loss_and_grads(model.train(), imgs, labels)
    enable_grad_checkpointing(model)
    ckpt = _vit_loss_and_grads(model, imgs, labels)
    _assert_same(ckpt, plain, rtol=0, atol=1e-6)
