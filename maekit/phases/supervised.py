"""What fine-tuning and linear probing share: encoder + pre-trained init, labeled train/val
data, evaluation each epoch (or ``--eval`` alone), best-checkpoint tracking.

Each phase passes a :class:`Recipe` with the parts where the two protocols differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import SupervisedConfig
from ..config.fields import image_size_value
from ..data import build_dataset, build_train_loader, limit_train_set
from ..data.transforms import eval_transform, resolve_stats
from ..engine.checkpoint import resume_from
from ..engine.distributed import shutdown
from ..engine.evaluate import build_eval_loader, evaluate
from ..engine.fastpath import apply_fast_paths
from ..engine.fit import fit, prepare_run, resolve_lr, seed_everything
from ..engine.sharding import gathered, wrap_model
from ..engine.trainer import LossFn
from ..errors import MaekitError
from ..models import create_model, get_entry, list_models
from ..models.pretrained import load_pretrained_encoder


@dataclass
class Recipe:
    train_transform: Callable
    # (model) -> model: e.g. the linear probe's BatchNorm head and freezing; after loading weights
    adapt_model: Callable[[torch.nn.Module], torch.nn.Module]
    # (model_without_ddp, lr) -> optimizer
    build_optimizer: Callable[[torch.nn.Module, float], torch.optim.Optimizer]
    # (nb_classes) -> loss_fn(model, samples, targets)
    build_loss: Callable[[int], LossFn]
    model_overrides: dict


def num_classes_of(dataset) -> int:
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise MaekitError(
            "the dataset has no class labels; fine-tuning and linear probing need class folders"
        )
    return len(classes)


def build_encoder(cfg: SupervisedConfig, nb_classes: int, overrides: dict) -> torch.nn.Module:
    entry = get_entry(cfg.model)
    if entry.kind != "encoder":
        raise MaekitError(f"{cfg.model!r} is a pre-training model; fine-tuning and linear probing take an "
                          f"encoder: {', '.join(list_models('encoder'))}")  # fmt: skip
    global_pool = cfg.use_global_pool()
    if not getattr(entry.cls, "has_cls_token", True):  # ConvViT: global pooling only
        if cfg.cls_token:
            raise MaekitError(f"{cfg.model!r} has no cls token (it classifies the mean of its tokens); "
                              "drop --cls_token")  # fmt: skip
        global_pool = True
    return create_model(cfg.model, num_classes=nb_classes, global_pool=global_pool,
                        **cfg.size_overrides(), **overrides)  # fmt: skip


# What a fine-tune / linear-probe run takes from the checkpoint it starts from when not given.
INHERITED = ("in_chans", "input_size", "mean", "std")


def resolve_inputs(cfg: SupervisedConfig) -> str | None:
    """Fill --in_chans, --input_size, --mean and --std left unset from the ``args`` saved in the
    --finetune (or --resume) checkpoint, else the defaults (3, 224, ImageNet's statistics), so a
    model sees its inputs as it was pre-trained on them. Returns a line naming what was taken."""
    from ..config.fields import check_stats
    from ..engine.checkpoint import read_checkpoint

    source = cfg.finetune or cfg.resume
    args: dict = {}
    if source and any(getattr(cfg, k) is None for k in INHERITED):
        ckpt = read_checkpoint(source)
        args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    taken = []
    for key, default in (("in_chans", 3), ("input_size", 224)):
        if getattr(cfg, key) is None:
            value = args.get(key)
            setattr(cfg, key, value if value else default)
            taken += [f"--{key} {value}"] if value else []
    cfg.input_size = image_size_value(cfg.input_size)
    for key in ("mean", "std"):
        saved = args.get(key)
        if getattr(cfg, key) is None and saved and len(saved) == cfg.in_chans:
            setattr(cfg, key, [float(v) for v in saved])
            taken.append(f"--{key} {' '.join(f'{v:g}' for v in saved)}")
    cfg.mean, cfg.std = (list(v) for v in resolve_stats(cfg.in_chans, cfg.mean, cfg.std))
    check_stats(cfg.mean, cfg.std, cfg.in_chans)
    return f"from {source}: {', '.join(taken)}" if taken else None


def run_supervised(
    cfg: SupervisedConfig, recipe: Recipe, inputs_note: str | None = None
) -> list[dict]:
    if any(getattr(cfg, k) is None for k in INHERITED):
        inputs_note = resolve_inputs(cfg)
    cfg.validate()
    if cfg.eval and not (cfg.resume or cfg.finetune):
        raise MaekitError("--eval needs a checkpoint: give --resume PATH (or --finetune PATH)")
    # Everything that can fail on user input, before any process group or output exists.
    val_set = build_dataset(
        cfg.data_path,
        "val",
        eval_transform(cfg.input_size, cfg.in_chans, cfg.mean, cfg.std),
        cfg.max_pixels,
    )
    train_set = (
        None
        if cfg.eval
        else build_dataset(cfg.data_path, "train", recipe.train_transform, cfg.max_pixels)
    )
    if train_set is not None:
        train_set = limit_train_set(train_set, cfg.max_train_images, cfg.seed)
    nb_classes = num_classes_of(train_set if train_set is not None else val_set)
    if cfg.nb_classes is not None and cfg.nb_classes != nb_classes:
        raise MaekitError(f"--nb_classes {cfg.nb_classes} does not match the dataset, which has {nb_classes} "
                          f"classes; drop the flag or pass --nb_classes {nb_classes}")  # fmt: skip
    if train_set is not None and num_classes_of(val_set) != nb_classes:
        raise MaekitError(f"train/ has {nb_classes} classes but val/ has {num_classes_of(val_set)}; "
                          "both need the same class folders")  # fmt: skip
    seed_everything(cfg.seed)  # the new head's init follows --seed (DDP then broadcasts rank 0's)
    model = build_encoder(cfg, nb_classes, recipe.model_overrides)
    notes = (
        load_pretrained_encoder(model, cfg.finetune, model.uses_global_pool) if cfg.finetune else []
    )
    model = recipe.adapt_model(model)

    ctx = prepare_run(cfg)
    env = ctx.env
    try:
        for note in ([inputs_note] if inputs_note else []) + notes if env.is_main else ():
            print(note)
        model.to(env.device)
        model_without_ddp = model
        sharded = cfg.dist_eval and env.distributed
        val_loader = build_eval_loader(
            val_set, cfg.batch_size, env, cfg.dist_eval, ctx.num_workers, ctx.pin_memory
        )

        def run_eval() -> dict[str, float]:
            # The bare module, not the DDP wrapper: shards can differ in batch count, and a DDP
            # forward would wait for the other ranks' buffer broadcast.
            # Under fsdp the blocks are gathered whole first, for the same reason.
            with gathered(model_without_ddp):
                return evaluate(model_without_ddp, val_loader, env, ctx.precision, sharded)

        if cfg.eval:
            if cfg.resume:
                resume_from(cfg.resume, model_without_ddp, None, None)
            stats = run_eval()
            if env.is_main:
                print(f"accuracy of the network on the {stats['n']} test images: "
                      f"acc1 {stats['acc1']:.2f}%  acc5 {stats['acc5']:.2f}%  loss {stats['loss']:.4f}")  # fmt: skip
            ctx.recorder.close()
            return [stats]

        loader = build_train_loader(
            train_set,
            cfg.batch_size,
            env.rank,
            env.world_size,
            cfg.seed,
            ctx.num_workers,
            ctx.pin_memory,
        )
        if env.is_main:
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"data: {cfg.data_path} ({len(train_set)} train / {len(val_set)} val images, {nb_classes} "
                  f"classes), {len(loader)} steps/epoch per process; {n_params / 1e6:.2f}M trainable params")  # fmt: skip
        model = apply_fast_paths(
            wrap_model(model, env, cfg.dist_mode, ctx.precision), cfg, model_without_ddp
        )
        lr, _ = resolve_lr(cfg, env)
        optimizer = recipe.build_optimizer(model_without_ddp, lr)
        loss_fn = recipe.build_loss(nb_classes)
        return fit(
            cfg, ctx, model, model_without_ddp, optimizer, loader, loss_fn, lr, evaluate_fn=run_eval
        )
    finally:
        shutdown()
