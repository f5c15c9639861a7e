"""What a run saves so that a rerun continues it exactly, and the restoring of it.

A checkpoint holds, beside the weights and the optimizer, every rank's RNG states, the step
within the epoch and that epoch's running sums (:class:`~.trainer.EpochState`), and the count
of skipped non-finite steps (and, with --on_nonfinite rollback, the recovery history):
restored, a killed run goes on to bit-identical weights.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint.rundir import (
    BEST,
    LAST,
    find_resume_checkpoint,
    progress_of,
    prune_checkpoints,
)
from ..config import CommonConfig
from ..errors import MaekitError, counted
from ..files import atomic_copy
from . import rng
from .distributed import DistEnv, all_reduce_sum, barrier
from .fsdp import full_state
from .recovery import RecoveryState
from .train_state import nonfinite_entries, resume_from, save_checkpoint
from .trainer import EpochState, NonFiniteLossError, Trainer


def find_start(cfg: CommonConfig, env: DistEnv) -> tuple[str, dict | None]:
    """The checkpoint to resume from: --resume, else (--auto_resume) the newest valid one in
    --output_dir. Returns (path or '', its contents if already read)."""
    if cfg.resume:
        if Path(cfg.resume).is_dir():
            found = find_resume_checkpoint(cfg.resume)
            hint = f", e.g. {found[0]}" if found else ""
            raise MaekitError(
                f"--resume {cfg.resume} is a folder; give the checkpoint file in it{hint} "
                f"(or, to continue that run, --output_dir {cfg.resume} without --resume)"
            )
        # Read now: a file that cannot be resumed from fails before the run folder changes.
        from ..formats.loader import read_checkpoint

        ckpt = read_checkpoint(cfg.resume)
        if not isinstance(ckpt.get("model"), dict):
            raise MaekitError(
                f"--resume {cfg.resume} has no 'model' entry of weights; is it a maekit/MAE "
                "checkpoint? (to start from weights, use --finetune or --init)"
            )
        progress_of(ckpt, cfg.resume)  # a damaged epoch entry, refused now
        return cfg.resume, ckpt
    if not cfg.auto_resume:
        return "", None
    found = find_resume_checkpoint(cfg.output_dir)
    return (str(found[0]), found[1]) if found else ("", None)


def gather_rng_states(env: DistEnv) -> list[dict]:
    """Every rank's RNG states (rank order); all ranks must call it."""
    mine = rng.capture()
    if not env.distributed:
        return [mine]
    states: list = [None] * env.world_size
    torch.distributed.all_gather_object(states, mine)
    return states


@dataclass
class StartPoint:
    """Where training starts: epoch 0, or where a checkpoint left off."""

    epoch: int
    state: EpochState = field(default_factory=EpochState)  # the first epoch's, mid-epoch resume
    rng_states: dict | None = None  # this rank's random streams at the checkpoint
    best: float = -1.0  # the best test top-1 so far
    path: str = ""  # the checkpoint resumed from ('' for a fresh start)


def restore(cfg: CommonConfig, start: tuple[str, dict | None], trainer: Trainer) -> StartPoint:
    """Load the checkpoint ``start`` names (if any) into the trainer's model, optimizer and
    scaler, and return where to go on: the epoch, the step in it, the random streams (same
    world size only), the best accuracy and the skipped-step count."""
    env = trainer.env
    point = StartPoint(cfg.start_epoch)
    path, ckpt = start
    if not path:
        return point
    model, optimizer = trainer.model.bare, trainer.optimizer
    point.epoch, ckpt = resume_from(path, model, optimizer, trainer.scaler, ckpt)
    point.path = path
    resume = ckpt.get("resume") or {}
    try:
        point.best = float(ckpt.get("max_accuracy", point.best))
        trainer.counters.nonfinite_skipped = int(resume.get("nonfinite_skipped", 0))
        if trainer.recovery is not None and resume.get("recovery"):
            trainer.recovery.state = RecoveryState.from_dict(resume["recovery"])
        same_world = resume.get("world_size") == env.world_size
        if same_world and resume.get("rng"):
            point.rng_states = resume["rng"][env.rank]
        if same_world and resume.get("epoch_state"):
            point.state = EpochState(**resume["epoch_state"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise MaekitError(
            f"{path}: its resume state is damaged ({type(e).__name__}: "
            f"{str(e)[:80]}); resume from another checkpoint, or start over with "
            "--no_auto_resume"
        ) from e
    if env.is_main:
        where = f"epoch {point.epoch}" + (f", step {point.state.step}" if point.state.step else "")
        how = "auto-resumed" if not cfg.resume else "resumed"
        print(f"{how} from {path}: continuing at {where}")
        if resume and not same_world:
            print(
                f"maekit: warning: the checkpoint was written by "
                f"{counted(resume.get('world_size'), 'process', 'processes')}, "
                f"this run has {env.world_size}: data order and random streams are not continued "
                "exactly (an interrupted epoch restarts)",
                file=sys.stderr,
            )
    return point


class Saver:
    """Writes the run's checkpoints: checkpoint-last.pth every epoch (and at a stop),
    checkpoint-{epoch}.pth every --save_freq epochs pruned to --keep_last, checkpoint-best.pth
    on a new best top-1. Never a non-finite state: :meth:`check_finite` comes first."""

    def __init__(
        self,
        cfg: CommonConfig,
        output_dir: Path,
        trainer: Trainer,
        track_best: bool,
        extras: dict | None = None,
    ) -> None:
        self.cfg, self.output_dir, self.trainer, self.track_best = (
            cfg,
            output_dir,
            trainer,
            track_best,
        )
        self.extras = dict(extras or {})  # the recipe's entries (class names), every checkpoint
        self.best = -1.0

    def check_finite(self, epoch: int, step: int) -> None:
        """Refuse to save (all ranks agree) when a weight, gradient or optimizer state is not
        finite: the last good checkpoint stays the newest."""
        t = self.trainer
        bad = nonfinite_entries(module=t.model.bare, optimizer=t.optimizer)
        if int(all_reduce_sum(torch.tensor(float(len(bad)), device=t.env.device))) == 0:
            return
        names = f" ({', '.join(bad)})" if bad else " (on another rank)"
        raise NonFiniteLossError(
            f"the weights or optimizer state are not finite after epoch {epoch}, step {step}{names}: "
            "not saved, training stopped, the last saved checkpoint is untouched and stays the "
            "resume point; try a lower --blr or --clip_grad, or --amp bf16/none instead of fp16"
        )

    def save(
        self,
        epoch_done: int,
        resume_at: tuple[int, int],
        state: EpochState | None,
        periodic: bool = False,
        as_best: bool = False,
    ) -> None:
        """All ranks call it (the RNG states and, under fsdp, the shards are gathered)."""
        t, env = self.trainer, self.trainer.env
        resume = {
            "epoch": resume_at[0],
            "step": resume_at[1],
            "world_size": env.world_size,
            "rng": gather_rng_states(env),
            "nonfinite_skipped": t.counters.nonfinite_skipped,
            "epoch_state": None if state is None else state.as_dict(),
        }
        if t.recovery is not None:  # what the rollback checks decide by (recent losses, ...)
            resume["recovery"] = t.recovery.state.as_dict()
        model_state = optimizer_state = None
        if t.model.fsdp:  # fsdp: gather full tensors to rank 0 (all ranks call)
            model_state, optimizer_state = full_state(t.model.bare, t.optimizer)
        if env.is_main:
            extra = {**self.extras, "resume": resume}
            if self.track_best:
                extra["max_accuracy"] = self.best
            last = self.output_dir / LAST
            save_checkpoint(
                last,
                t.model.bare,
                t.optimizer,
                epoch_done,
                t.scaler,
                self.cfg.to_dict(),
                extra=extra,
                model_state=model_state,
                optimizer_state=optimizer_state,
            )
            if periodic:
                atomic_copy(last, self.output_dir / f"checkpoint-{epoch_done}.pth")
                prune_checkpoints(self.output_dir, self.cfg.keep_last)
            if as_best:
                atomic_copy(last, self.output_dir / BEST)
        barrier()
