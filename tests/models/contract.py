"""The model-family contract (timm's way: one suite over every registered model).

Two levels, both applied to every registered family, the toy family of test_toy_family.py too:

- :func:`check_structure` (every registered *name*, at its real size, built on the meta device:
  shapes only, no memory): the registry's family is the model's, the spec's keys exist in its
  state dict, layer-decay ids cover every trainable parameter once, the FSDP units are blocks of
  the model, the family owns its state dict and no other family does.
- :func:`check_training` (a small build of one name per family and kind, on the CPU): forward,
  loss, backward, one optimizer step of the phase's own optimizer, the same loss under
  --grad_ckpt, a save -> resume round trip, feature pooling, export to timm / Hugging Face or
  the family's one-line refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maekit.config import FinetuneConfig, PretrainConfig
from maekit.engine.fsdp import fsdp_units
from maekit.engine.optim import layer_decay_groups
from maekit.engine.train_state import resume_from, save_checkpoint
from maekit.errors import MaekitError
from maekit.formats.export import export_timm, exporting_family
from maekit.models import create_model, get_entry
from maekit.models.family import families, family_of

SMALL = 32  # pixels: the training checks' image size


def build(name: str, device: str = "cpu", **overrides) -> torch.nn.Module:
    with torch.device(device):
        return create_model(name, **overrides)


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def check_structure(name: str) -> None:
    """What the spec says about a registered model holds for the model built at its size."""
    entry = get_entry(name)
    model = build(name, "meta")
    family = family_of(model)
    assert family is entry.family, (name, family.name, entry.family.name)
    state = model.state_dict()
    layout = family.checkpoint
    for key in layout.input_convs:
        assert key in state and state[key].ndim == 4, (name, key)
        assert state[key].shape[1] == model.in_chans, (name, key)
    grid = family.token_grid(model)
    for key in layout.pos_tables:
        if key in state:
            assert state[key].shape[1] == family.prefix_tokens + grid[0] * grid[1], (name, key)
    assert family.mask_cells(model) >= 1
    assert family.patch_of(state) == model.patch_size, name
    if entry.kind == "pretrain":
        assert any(k.startswith(layout.pretrain_only) for k in state), name
        if layout.output_layer:
            assert f"{layout.output_layer}.weight" in state, name
    else:
        assert all(k in state for k in layout.head), name
        assert not any(k.startswith(layout.pretrain_only) for k in state), name
    # every trainable parameter in exactly one layer-decay group, ids in [0, num_layers]
    for rule in family.layer_decay:
        layer_id, num_layers = family.layer_rule(model, rule)
        groups = layer_decay_groups(model, 0.05, 0.75, layer_id=layer_id, num_layers=num_layers)
        names = [n for g in groups for n in g["param_names"]]
        assert sorted(names) == sorted(trainable(model)), (name, rule)
        assert all(0 <= g["layer_id"] <= num_layers for g in groups), (name, rule)
    # FSDP units: distinct sub-modules of the model, each with parameters
    units = fsdp_units(model)
    modules = {id(m) for m in model.modules()}
    assert units and len({id(u) for u in units}) == len(units), name
    assert all(id(u) in modules and any(True for _ in u.parameters()) for u in units), name
    # the family recognises its weights, and no other family claims them
    assert family.owns(state), name
    others = [f.name for f in families() if f is not family and f.owns(state)]
    assert not others, (name, others)


def phase_optimizer(name: str, model: torch.nn.Module, pretrain: bool) -> torch.optim.Optimizer:
    """The optimizer the phase builds: pre-training's AdamW groups, fine-tuning's layer decay."""
    if pretrain:
        from maekit.phases.pretrain import build_optimizer

        return build_optimizer(PretrainConfig(model=name), model, 1e-3)
    from maekit.phases.finetune import build_optimizer

    return build_optimizer(FinetuneConfig(model=name), model, 1e-3)


def small_model(name: str, **extra) -> torch.nn.Module:
    """``name`` at SMALL pixels with at most 2 blocks per stack (the same modules, fewer)."""
    d = get_entry(name).defaults
    kw = {"img_size": SMALL, "patch_size": min(d.get("patch_size", 16), 8)}
    for key, most in (("depth", 2), ("decoder_depth", 1)):
        if isinstance(d.get(key), int):
            kw[key] = min(d[key], most)
        elif isinstance(d.get(key), tuple | list):
            kw[key] = tuple(min(v, most) for v in d[key])
    return build(name, **kw, **extra)


def check_training(name: str, tmp_path: Path) -> None:
    """A small build of ``name`` trains one step, checkpoints, pools and exports (or refuses)."""
    entry = get_entry(name)
    torch.manual_seed(0)
    pretrain = entry.kind == "pretrain"
    kw = {} if pretrain else {"num_classes": 5}
    model = small_model(name, **kw)
    family = family_of(model)
    x = torch.randn(2, model.in_chans, SMALL, SMALL)
    optimizer = phase_optimizer(name, model, pretrain)
    if pretrain:
        cells = family.mask_cells(model)
        noise = torch.rand(2, cells)

        def loss_fn(m: torch.nn.Module) -> torch.Tensor:
            loss, pred, mask = m(x, mask_ratio=0.5, noise=noise)
            assert mask.shape == (2, cells) and pred.shape[0] == 2
            return loss
    else:

        def loss_fn(m: torch.nn.Module) -> torch.Tensor:
            logits = m(x)
            assert logits.shape == (2, 5)
            return torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))

    loss = loss_fn(model)
    assert torch.isfinite(loss), name
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainable(model).items() if p.grad is not None}
    assert grads, name
    # --grad_ckpt: the same loss and gradients
    model.zero_grad()
    model.set_grad_checkpointing(True)
    again = loss_fn(model)
    again.backward()
    model.set_grad_checkpointing(False)
    assert torch.equal(again.detach(), loss.detach()), name
    for n, g in grads.items():
        assert torch.allclose(trainable(model)[n].grad, g, atol=1e-6, rtol=1e-5), (name, n)
    before = {n: p.detach().clone() for n, p in trainable(model).items()}
    optimizer.step()
    assert any(not torch.equal(before[n], p) for n, p in trainable(model).items()), name
    # save -> resume into a fresh build: equal weights and optimizer state
    path = tmp_path / f"{name}.pth"
    save_checkpoint(path, model, optimizer, 0, None, {"model": name})
    fresh = small_model(name, **kw)
    fresh_opt = phase_optimizer(name, fresh, pretrain)
    epoch, _ = resume_from(path, fresh, fresh_opt, None)
    assert epoch == 1
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), (name, k)
    assert fresh_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    # features: the mean of the tokens always, the cls token where the family has one
    from maekit.analysis.features import encode

    fresh.eval()
    with torch.no_grad():
        assert encode(fresh, x, "mean").shape[0] == 2
        if family.cls_token:
            assert encode(fresh, x, "cls").shape[0] == 2
        else:
            with pytest.raises(MaekitError, match="no cls token"):
                encode(fresh, x, "cls")
    # exports: a converter that gives timm's names, or the family's one-line refusal
    state = fresh.state_dict()
    for target in ("timm", "hf"):
        supported = family.exports.timm if target == "timm" else family.exports.hf
        if supported is None:
            with pytest.raises(MaekitError) as e:
                exporting_family(state, {"model": name}, target)
            assert "\n" not in str(e.value) and str(e.value) == family.exports.refusal(target)
        elif target == "timm":
            check_timm_export(fresh, state, name, pretrain)


def check_timm_export(model, state: dict, name: str, pretrain: bool) -> None:
    """The printed create_model call builds a timm model that loads the export strictly."""
    import timm

    pool = True if pretrain else None  # an MAE encoder goes to timm's global_pool='avg'
    out, _notes, call = export_timm(state, pool, {"model": name})
    timm_model = eval(call, {"timm": timm})  # the line `maekit convert` prints
    timm_model.load_state_dict(out, strict=True)
