"""``maekit linprobe``: linear probing, the official MAE recipe.

Frozen encoder; head = BatchNorm1d(affine=False, eps=1e-6) -> Linear (trunc_normal 0.01);
LARS on the head only; RandomResizedCrop + flip; plain cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from ..config import LinprobeConfig
from ..data.transforms import linprobe_transform
from ..engine import run as runner
from ..engine.lars import LARS
from ..engine.trainer import LossFn
from .supervised import SupervisedRecipe


def attach_probe_head(model: nn.Module) -> nn.Module:
    """Replace ``head`` by BN(affine=False) + the Linear head, and freeze everything else."""
    linear = model.head
    trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    model.head = nn.Sequential(nn.BatchNorm1d(linear.in_features, affine=False, eps=1e-6), linear)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
    return model


def build_optimizer(cfg: LinprobeConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """LARS on the head only (the encoder is frozen)."""
    return LARS(model.head.parameters(), lr=lr, weight_decay=cfg.weight_decay)


def build_loss(cfg: LinprobeConfig, nb_classes: int) -> LossFn:
    criterion = nn.CrossEntropyLoss()
    return lambda model, samples, targets: criterion(model(samples), targets)


class LinprobeRecipe(SupervisedRecipe):
    """Linear probing: frozen encoder, BatchNorm + linear head trained with LARS."""

    optimizer_kind = "lars"

    def train_transform(self):
        cfg = self.cfg
        return linprobe_transform(
            cfg.input_size,
            cfg.crop_min,
            cfg.in_chans,
            cfg.mean,
            cfg.std,
            full=cfg.pixels == "full",
            vflip=cfg.vflip,
            rot90=cfg.rot90,
        )

    def adapt_model(self, model: nn.Module) -> nn.Module:
        return attach_probe_head(model)

    def build_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return build_optimizer(self.cfg, model, lr)

    def loss_for(self, nb_classes: int) -> LossFn:
        return build_loss(self.cfg, nb_classes)


RECIPE = LinprobeRecipe


def run(cfg: LinprobeConfig) -> list[dict]:
    return runner.run(LinprobeRecipe(cfg))
