"""The phase contract: what a phase (pretrain, finetune, linprobe) says about itself
(:class:`Recipe`), and what the runner hands it once the run has started (:class:`RunContext`).

A phase is a small :class:`Recipe`: how to check its data, build its model, optimizer and
loss, what to evaluate and what to print. :func:`maekit.engine.run.run` does everything else
(seeding, processes, the run folder, loaders, parallelisation, the lr, the epochs, shutdown),
and ``maekit bench`` builds its measured step from the same recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import CommonConfig
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


@dataclass
class Monitors:
    """What a recipe watches each epoch: callables ``epoch -> {metric: value}`` (val_loss,
    k-NN), plus whatever its closing lines need (a recipe subclasses this, typed)."""

    each: list[Callable[[int], dict]] = field(default_factory=list)


class Recipe:
    """Base of the phases' recipes. The runner calls, in order: (validation of the flags),
    :meth:`setup` (the resolved config and the data: the recipe's state, built once),
    :meth:`build_model`, (run folder), :meth:`train_loader`, :meth:`data_lines`, (parallelize),
    :meth:`build_optimizer`, :meth:`build_loss`, :meth:`evaluator`, :meth:`monitors`, (the
    epochs), :meth:`finish`.

    ``cfg`` is frozen: :meth:`resolve` returns the resolved copy (``dataclasses.replace``),
    which :meth:`setup` keeps; nothing changes it afterwards.
    """

    eval_only = False  # True: evaluate once (:meth:`evaluate_only`) instead of training
    optimizer_kind = "adamw"  # bench: AdamW has a fused and a plain implementation; LARS one

    def __init__(self, cfg: CommonConfig, data: object | None = None) -> None:
        self.cfg = cfg
        self.data = data  # the phase's typed data (datasets, class count), from setup()
        self.notes: list[str] = []  # lines printed once the run starts (what was inferred)

    @classmethod
    def bench_data(cls, nb_classes: int) -> object | None:
        """The data ``maekit bench`` gives the recipe: no dataset, synthetic labels."""
        return None

    def setup(self) -> None:
        """Resolve the config and open the data: the recipe's whole state, in one place,
        failing on bad input before any process group or output exists."""
        self.cfg, notes = self.resolve(self.cfg)
        self.notes += notes
        self.data = self.load_data(self.cfg)

    def resolve(self, cfg: CommonConfig) -> tuple[CommonConfig, list[str]]:
        """The config with what the phase derives filled in (statistics, inputs read from a
        checkpoint), checked; and lines that say what was inferred."""
        return cfg, []

    def load_data(self, cfg: CommonConfig) -> object | None:
        """The datasets (checked: labels, class count) as the phase's typed data."""
        return None

    def build_model(self) -> torch.nn.Module:
        """The plain model with its initial weights (the global RNG is seeded by --seed)."""
        raise NotImplementedError

    def train_transform(self) -> Callable:
        """The training transform (``maekit bench --pipeline`` measures it too)."""
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

    def monitors(self, ctx: RunContext, model: ParallelModel) -> Monitors:
        """Extra per-epoch log entries (val_loss, k-NN)."""
        return Monitors()

    def evaluate_only(self, ctx: RunContext, model: torch.nn.Module) -> list[dict]:
        raise NotImplementedError

    def checkpoint_extras(self) -> dict:
        """Top-level entries every checkpoint of the run carries besides {model, optimizer,
        epoch, scaler, args} (fine-tuning: the class names, which exports label outputs with)."""
        return {}

    def finish(self, history: list[dict], monitors: Monitors) -> None:
        """The closing lines (main process)."""
