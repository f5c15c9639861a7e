"""Small checkpoints written in-process, so the analysis tests need no training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maekit.config import FinetuneConfig, PretrainConfig
from maekit.engine.train_state import save_checkpoint
from maekit.models import create_model

SIZES = {"input_size": 32, "patch_size": 8}


def write_mae_checkpoint(path: Path, norm_pix_loss: bool = True, seed: int = 0) -> Path:
    """A (randomly initialised) tiny MAE saved exactly like `maekit pretrain` saves one."""
    cfg = PretrainConfig(model="mae_vit_tiny_patch16", norm_pix_loss=norm_pix_loss, **SIZES)
    torch.manual_seed(seed)
    model = create_model(cfg.model, norm_pix_loss=norm_pix_loss, **cfg.size_overrides())
    save_checkpoint(path, model, None, 0, None, cfg.to_dict())
    return path


def write_finetune_checkpoint(path: Path, global_pool: bool = True) -> Path:
    cfg = FinetuneConfig(
        model="vit_tiny_patch16", global_pool=global_pool, cls_token=not global_pool, **SIZES
    )
    torch.manual_seed(0)
    model = create_model(cfg.model, num_classes=3, global_pool=global_pool, **cfg.size_overrides())
    save_checkpoint(path, model, None, 0, None, cfg.to_dict())
    return path


@pytest.fixture
def mae_checkpoint(tmp_path: Path) -> Path:
    return write_mae_checkpoint(tmp_path / "checkpoint-0.pth")
