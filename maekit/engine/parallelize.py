"""The one place a plain model becomes the module a training step calls.

Like torchtitan's ``parallelize_*``: DDP or FSDP2 (``--dist_mode``), activation checkpointing
(``--grad_ckpt``) and ``torch.compile`` (``--compile``) are applied from outside to a model that
never learns of them. What comes back knows both sides: ``step`` is what the training step
calls (and, under DDP, what ``no_sync`` is asked of), ``bare`` is what optimizers, checkpoints
and evaluation use. nanoGPT's ``model`` / ``raw_model``, named once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .distributed import DistEnv
from .fastpath import compile_model, enable_grad_checkpointing
from .fsdp import is_fsdp, wrap_model
from .precision import Precision


@dataclass(frozen=True)
class ParallelModel:
    step: nn.Module  # what the training step calls: DDP / FSDP2 / compile around ``bare``
    bare: nn.Module  # the plain model (its parameters split over the ranks in place under fsdp): optimizer, checkpoints, eval
    ddp: DistributedDataParallel | None = None  # for ``no_sync`` on accumulation steps
    fsdp: bool = False  # FSDP2: ``bare`` holds this rank's part of the parameters


def parallelize(
    model: nn.Module,
    env: DistEnv,
    precision: Precision,
    dist_mode: str = "ddp",
    grad_ckpt: bool = False,
    compile: bool = False,
    name: str = "the model",
) -> ParallelModel:
    """Move ``model`` to the run's device, then wrap it: DDP or FSDP2 in a multi-process run
    (--dist_mode), activation checkpointing on the bare model (--grad_ckpt), and
    ``torch.compile`` around the wrapper (--compile: DDP's graph splitting at bucket boundaries
    applies). Build the optimizer afterwards, from ``bare``: under fsdp it holds this rank's parts."""
    model.to(env.device)
    step = wrap_model(model, env, dist_mode, precision)
    ddp = step if isinstance(step, DistributedDataParallel) else None
    if grad_ckpt:
        enable_grad_checkpointing(model, name)
    if compile:
        step = compile_model(step)
    return ParallelModel(step=step, bare=model, ddp=ddp, fsdp=is_fsdp(model))


def plain(model: nn.Module) -> ParallelModel:
    """A model used as it is (one process, no wrappers): e.g. a unit test's toy model."""
    return ParallelModel(step=model, bare=model)
