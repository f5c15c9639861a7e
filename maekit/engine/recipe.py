"""The phase contract: what a phase (pretrain, finetune, linprobe) says about itself
(:class:`Recipe`), and what the runner hands it once the run has started (:class:`RunContext`).

A phase is a small :class:`Recipe`: how to check its data, build its model, optimizer and
loss, what to evaluate and what to print. :func:`maekit.engine.run.run` does everything else
(seeding, processes, the run folder, loaders, parallelisation, the lr, the epochs, shutdown),
and ``maekit bench`` builds its measured step from the same recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .distributed import DistEnv
from .precision import Precision
from .progress import RunRecorder
from .trainer import LossFn

if TYPE_CHECKING:
    from .parallelize import ParallelModel


@dataclass
class RunContext:
    """What the runner hands a recipe once the run has started (:func:`~.run.prepare_run`)."""

    env: DistEnv
    precision: Precision
    recorder: RunRecorder
    output_dir: Path
    num_workers: int  # --num_workers capped at the usable CPUs
    pin_memory: bool  # --pin_mem, only meaningful for CUDA
    lr: float  # the absolute lr: --lr, else --blr x effective batch / 256 (resolved once)
    effective_batch: int  # --batch_size x --accum_iter x processes
    # The checkpoint to start from (path or '', its contents if already read), found before
    # config.json is written so that a conflicting rerun leaves the folder untouched.
    start: tuple[str, dict | None] | None = None


class Recipe:
    """Base of the phases' recipes; ``cfg`` is the phase's config. The runner calls, in order:
    (validation of the flags), :meth:`resolve`, :meth:`check_data`, :meth:`build_model`, (run folder),
    :meth:`train_loader`, :meth:`data_lines`, (parallelize), :meth:`build_optimizer`,
    :meth:`build_loss`, :meth:`evaluator`, :meth:`monitors`, (the epochs), :meth:`finish`."""

    eval_only = False  # True: evaluate once (:meth:`evaluate_only`) instead of training

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.notes: list[str] = []  # lines printed once the run starts (what was inferred)

    def resolve(self) -> None:
        """Fill the settings the phase derives (statistics, inputs read from a checkpoint) after
        the flags are validated; check what it fills in."""

    def check_data(self) -> None:
        """Open the datasets, failing on bad input before any process group or output exists."""

    def build_model(self) -> torch.nn.Module:
        """The plain model with its initial weights (the global RNG is seeded by --seed)."""
        raise NotImplementedError

    def train_loader(self, ctx: RunContext):
        """The training loader (a ResumableSampler's, so an epoch can start mid-way)."""
        raise NotImplementedError

    def data_lines(self, loader, model: torch.nn.Module) -> list[str]:
        """The lines that say what the run trains on."""
        return []

    def build_optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def build_loss(self) -> LossFn:
        raise NotImplementedError

    def evaluator(self, ctx: RunContext, model: ParallelModel) -> Callable[[], dict] | None:
        """Labeled evaluation each epoch (acc1/acc5/loss; best checkpoint kept), if any."""
        return None

    def monitors(self, ctx: RunContext, model: ParallelModel) -> list[Callable[[int], dict]]:
        """Extra per-epoch log entries (val_loss, k-NN)."""
        return []

    def evaluate_only(self, ctx: RunContext, model: torch.nn.Module) -> list[dict]:
        raise NotImplementedError

    def finish(self, history: list[dict]) -> None:
        """The closing lines (main process)."""
