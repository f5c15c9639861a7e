"""``maekit finetune``: end-to-end fine-tuning, the official MAE recipe.

Layer-wise lr decay, AdamW, timm's RandAugment/RandomErasing transform, Mixup/CutMix,
soft-target or label-smoothing cross-entropy, drop path.
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..config import FinetuneConfig
from ..data.transforms import finetune_transform, refuse_8bit_augment
from ..engine import run as runner
from ..engine.optim import build_adamw, layer_decay_groups, layer_rule
from ..engine.trainer import LossFn
from .supervised import SupervisedRecipe


def build_criterion(cfg: FinetuneConfig) -> torch.nn.Module:
    """Soft-target CE under mixup/cutmix (labels are already smoothed by Mixup), else smoothed CE."""
    if cfg.mixup_active():
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return torch.nn.CrossEntropyLoss()


def build_mixup(cfg: FinetuneConfig, nb_classes: int) -> Mixup | None:
    if not cfg.mixup_active():
        return None
    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        cutmix_minmax=cfg.cutmix_minmax,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode=cfg.mixup_mode,
        label_smoothing=cfg.smoothing,
        num_classes=nb_classes,
    )


def build_optimizer(
    cfg: FinetuneConfig, model: torch.nn.Module, lr: float
) -> torch.optim.Optimizer:
    """AdamW over layer-decay groups (the model family's layer rule; fused kernel where available)."""
    layer_id, num_layers = layer_rule(model, cfg.layer_decay_rule)
    groups = layer_decay_groups(
        model,
        cfg.weight_decay,
        cfg.layer_decay,
        skip=model.no_weight_decay(),
        layer_id=layer_id,
        num_layers=num_layers,
    )
    return build_adamw(groups, lr, device=next(model.parameters()).device)


def build_loss(cfg: FinetuneConfig, nb_classes: int) -> LossFn:
    """loss_fn(model, samples, targets): mixup/cutmix (if on), then the criterion."""
    criterion = build_criterion(cfg)
    mixup = build_mixup(cfg, nb_classes)

    def loss_fn(
        model: torch.nn.Module, samples: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        if mixup is not None:
            samples, targets = mixup(samples, targets)
        return criterion(model(samples), targets)

    return loss_fn


class FinetuneRecipe(SupervisedRecipe):
    """End-to-end fine-tuning: RandAugment + RandomErasing, Mixup/CutMix, drop path, layer decay."""

    def resolve(self, cfg):
        cfg, notes = super().resolve(cfg)
        if cfg.pixels == "full" and not cfg.eval:
            refuse_8bit_augment(cfg.aa, cfg.color_jitter)  # one line naming --aa none
        return cfg, notes

    def train_transform(self):
        cfg = self.cfg
        return finetune_transform(
            cfg.input_size,
            cfg.aa,
            cfg.color_jitter,
            cfg.reprob,
            cfg.remode,
            cfg.recount,
            cfg.crop_min,
            cfg.in_chans,
            cfg.mean,
            cfg.std,
            full=cfg.pixels == "full",
            vflip=cfg.vflip,
            rot90=cfg.rot90,
        )

    def model_overrides(self) -> dict:
        return {"drop_path_rate": self.cfg.drop_path}

    def build_optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        return build_optimizer(self.cfg, model, lr)

    def loss_for(self, nb_classes: int) -> LossFn:
        return build_loss(self.cfg, nb_classes)


RECIPE = FinetuneRecipe


def run(cfg: FinetuneConfig) -> list[dict]:
    return runner.run(FinetuneRecipe(cfg))
