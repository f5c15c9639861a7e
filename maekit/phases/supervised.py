"""What fine-tuning and linear probing share: encoder + pre-trained init, labeled train/val
data, evaluation each epoch (or ``--eval`` alone), best-checkpoint tracking.

:class:`SupervisedRecipe` holds it; the fine-tune and linear-probe recipes subclass it with the
parts where the two protocols differ (transform, head, optimizer, loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset

from ..checkpoint.pretrained import load_pretrained_encoder
from ..config import SupervisedConfig
from ..config.fields import check_image_size, image_size_value
from ..data import build_dataset, build_train_loader, limit_train_set
from ..data.pixels import reader_for, resolve_for
from ..data.transforms import eval_transform_of, resolve_stats
from ..engine.evaluate import build_eval_loader, evaluate
from ..engine.fsdp import gathered
from ..engine.recipe import Recipe
from ..engine.train_state import resume_from
from ..errors import MaekitError, counted
from ..models import create_model, get_entry, list_models


def num_classes_of(dataset) -> int:
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise MaekitError(
            "the dataset has no class labels; fine-tuning and linear probing need class folders"
        )
    if len(classes) < 2:  # one class: loss 0 and 100 % accuracy whatever the model
        raise MaekitError(
            f"the dataset has one class ({list(classes)[0]}); fine-tuning and linear probing "
            "need at least two class folders"
        )
    return len(classes)


def build_encoder(cfg: SupervisedConfig, nb_classes: int, overrides: dict) -> torch.nn.Module:
    entry = get_entry(cfg.model)
    if entry.kind != "encoder":
        raise MaekitError(
            f"{cfg.model!r} is a pre-training model; fine-tuning and linear probing take an "
            f"encoder: {', '.join(list_models('encoder'))}"
        )
    global_pool = cfg.use_global_pool()
    if not entry.family.cls_token:  # ConvViT: global pooling only
        if cfg.cls_token:
            raise MaekitError(
                f"{cfg.model!r} has no cls token (it classifies the mean of its tokens); "
                "drop --cls_token (and --no_global_pool)"
            )
        global_pool = True
    return create_model(
        cfg.model,
        num_classes=nb_classes,
        global_pool=global_pool,
        **cfg.size_overrides(),
        **overrides,
    )


# What a fine-tune / linear-probe run takes from the checkpoint it starts from when not given.
INHERITED = ("in_chans", "input_size", "mean", "std")


def inherited_model(saved: object) -> str | None:
    """The checkpoint's saved --model if it names a registered encoder (a fine-tune or probe
    checkpoint); None for a pre-training model's name (its encoder has another name) or none."""
    return saved if isinstance(saved, str) and saved in list_models("encoder") else None


def resolve_inputs(cfg: SupervisedConfig) -> tuple[SupervisedConfig, str | None, dict]:
    """Fill --model (with its --patch_size), --in_chans, --input_size, --mean and --std left
    unset from the ``args`` saved in the --finetune (or --resume) checkpoint, else the defaults
    (vit_large_patch16, 3, 224, ImageNet's statistics), so a model sees its inputs as it was
    pre-trained on them and ``--eval --resume`` of maekit's own checkpoint rebuilds the model
    it holds. Returns (the filled config, a line naming what was taken or None, the
    checkpoint's saved args)."""
    from ..config.fields import check_stats
    from ..formats.loader import read_checkpoint

    source = cfg.finetune or cfg.resume
    args: dict = {}
    if source and any(getattr(cfg, k) is None for k in (*INHERITED, "model")):
        ckpt = read_checkpoint(source)
        args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    filled, taken = {"model": cfg.model}, []
    if cfg.model is None:
        encoder = inherited_model(args.get("model"))
        filled["model"] = encoder or cfg.default_model
        if encoder:
            taken.append(f"--model {encoder}")
            # the patch size override belongs to that model: a checkpoint trained with
            # --patch_size 8 holds 8-pixel patch weights
            patch = args.get("patch_size")
            if cfg.patch_size is None and isinstance(patch, int) and patch > 0:
                filled["patch_size"] = patch
                taken.append(f"--patch_size {patch}")
    for key, default in (("in_chans", 3), ("input_size", 224)):
        filled[key] = getattr(cfg, key)
        if filled[key] is None:
            value = args.get(key)
            filled[key] = value if value else default
            taken += [f"--{key} {value}"] if value else []
    filled["input_size"] = image_size_value(filled["input_size"])
    check_image_size(filled["input_size"])
    for key in ("mean", "std"):
        filled[key] = getattr(cfg, key)
        saved = args.get(key)
        if filled[key] is None and saved and len(saved) == filled["in_chans"]:
            filled[key] = [float(v) for v in saved]
            taken.append(f"--{key} {' '.join(f'{v:g}' for v in saved)}")
    stats = resolve_stats(filled["in_chans"], filled["mean"], filled["std"])
    filled["mean"], filled["std"] = (list(v) for v in stats)
    check_stats(filled["mean"], filled["std"], filled["in_chans"])
    cfg = replace(cfg, **filled)
    return cfg, (f"from {source}: {', '.join(taken)}" if taken else None), args


def scale_note(cfg: SupervisedConfig, args: dict) -> str | None:
    """A warning line when the checkpoint was pre-trained on pixels scaled otherwise than this
    run's (e.g. --max_value 4095 then, the uint16 maximum now): the scale is not inherited,
    since the new files may be of another kind, but the difference is said."""
    saved = args.get("max_value")
    if not isinstance(saved, int | float) or cfg.pixels != "full" or saved == cfg.max_value:
        return None
    return (
        f"warning: the checkpoint's pixels were scaled by 1/{saved:g} (its --max_value), this "
        f"run's by 1/{cfg.max_value:g}; pass --max_value {saved:g} if the data is of the same kind"
    )


@dataclass(frozen=True)
class SupervisedData:
    """The labeled data of a fine-tune / linear-probe run, opened and checked at start-up."""

    train_set: Dataset | None  # None with --eval (and in `maekit bench`)
    val_set: Dataset | None  # None in `maekit bench` (synthetic batches)
    nb_classes: int


class SupervisedRecipe(Recipe):
    """Labeled train/ and val/ folders, an encoder initialised from --finetune, evaluation every
    epoch (best checkpoint kept) or once with --eval. Subclasses supply the transform, the head
    adaptation, the optimizer, the loss and the model overrides."""

    cfg: SupervisedConfig
    data: SupervisedData

    def __init__(self, cfg: SupervisedConfig, data: SupervisedData | None = None) -> None:
        super().__init__(cfg, data)
        self.eval_only = bool(cfg.eval)

    @classmethod
    def bench_data(cls, nb_classes: int) -> SupervisedData:
        return SupervisedData(None, None, nb_classes)

    # -- what the protocols differ in
    def train_transform(self) -> Callable:
        raise NotImplementedError

    def adapt_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """After the pre-trained weights are loaded: e.g. the linear probe's head and freezing."""
        return model

    def model_overrides(self) -> dict:
        return {}

    def build_loss(self):
        return self.loss_for(self.data.nb_classes)

    def loss_for(self, nb_classes: int):
        raise NotImplementedError

    # -- shared
    def resolve(self, cfg: SupervisedConfig) -> tuple[SupervisedConfig, list[str]]:
        cfg, note, args = resolve_inputs(cfg)  # channels, size and statistics of the checkpoint
        cfg, line = resolve_for(cfg)  # how the files are read (8-bit or full precision)
        return cfg, [n for n in (note, line, scale_note(cfg, args)) if n]

    def load_data(self, cfg: SupervisedConfig) -> SupervisedData:
        if cfg.eval and not (cfg.resume or cfg.finetune):
            raise MaekitError("--eval needs a checkpoint: give --resume PATH (or --finetune PATH)")
        reader = reader_for(cfg)
        val_set = build_dataset(
            cfg.data_path, "val", eval_transform_of(cfg), cfg.max_pixels, reader
        )
        train_set = None
        if not cfg.eval:
            train_set = build_dataset(
                cfg.data_path, "train", self.train_transform(), cfg.max_pixels, reader
            )
            train_set = limit_train_set(train_set, cfg.max_train_images, cfg.seed)
        nb_classes = num_classes_of(train_set if train_set is not None else val_set)
        if cfg.nb_classes is not None and cfg.nb_classes != nb_classes:
            raise MaekitError(
                f"--nb_classes {cfg.nb_classes} does not match the dataset, which has {nb_classes} "
                f"classes; drop the flag or pass --nb_classes {nb_classes}"
            )
        if train_set is not None and num_classes_of(val_set) != nb_classes:
            raise MaekitError(
                f"train/ has {nb_classes} classes but val/ has {num_classes_of(val_set)}; "
                "both need the same class folders"
            )
        if train_set is not None:  # labels are indices into the sorted names: same names
            names = [list(getattr(d, "classes", ())) for d in (train_set, val_set)]
            differ = [f"{a} / {b}" for a, b in zip(*names, strict=True) if a != b]
            if differ:
                raise MaekitError(
                    f"train/ and val/ have different class folders ({', '.join(differ[:3])}): "
                    "val would be scored against shifted labels; give both the same class names"
                )
        return SupervisedData(train_set, val_set, nb_classes)

    def checkpoint_extras(self) -> dict:
        """``classes``: the names of the outputs in order (the sorted class folders), for
        ``maekit convert --to hf``'s id2label; absent where the dataset has no names."""
        names = getattr(self.data.val_set, "classes", None)  # the same as train/'s (load_data)
        return {"classes": [str(c) for c in names]} if names else {}

    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        model = build_encoder(cfg, self.data.nb_classes, self.model_overrides())
        if cfg.finetune:
            self.notes += load_pretrained_encoder(model, cfg.finetune, model.uses_global_pool)
        return self.adapt_model(model)

    def train_loader(self, ctx):
        cfg, env = self.cfg, ctx.env
        return build_train_loader(
            self.data.train_set,
            cfg.batch_size,
            env.rank,
            env.world_size,
            cfg.seed,
            ctx.num_workers,
            ctx.pin_memory,
        )

    def data_lines(self, loader, model) -> list[str]:
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return [
            f"data: {self.cfg.data_path} ({len(self.data.train_set)} train / "
            f"{counted(len(self.data.val_set), 'val image')}, "
            f"{self.data.nb_classes} classes), {len(loader)} steps/epoch per process; "
            f"{n_params / 1e6:.2f}M trainable params"
        ]

    def evaluator(self, ctx, model) -> Callable[[], dict]:
        return self._evaluator(ctx, model.bare)

    def _evaluator(self, ctx, bare: torch.nn.Module) -> Callable[[], dict]:
        cfg, env = self.cfg, ctx.env
        split = cfg.dist_eval and env.distributed  # each rank evaluates its own part
        val_loader = build_eval_loader(
            self.data.val_set, cfg.batch_size, env, cfg.dist_eval, ctx.num_workers, ctx.pin_memory
        )

        def run_eval() -> dict[str, float]:
            # The bare module, not the DDP wrapper: the ranks' parts can differ in batch count,
            # and a DDP forward would wait for the other ranks' buffer broadcast.
            # Under fsdp the blocks are gathered whole first, for the same reason.
            with gathered(bare):
                return evaluate(bare, val_loader, env, ctx.precision, split)

        return run_eval

    def evaluate_only(self, ctx, model: torch.nn.Module) -> list[dict]:
        if self.cfg.resume:
            resume_from(self.cfg.resume, model, None, None)
        stats = self._evaluator(ctx, model)()
        if ctx.env.is_main:
            print(
                f"accuracy of the network on the {counted(stats['n'], 'test image')}: "
                f"acc1 {stats['acc1']:.2f}%  acc5 {stats['acc5']:.2f}%  loss {stats['loss']:.4f}"
            )
        return [stats]
