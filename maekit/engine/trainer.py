"""The one training loop shared by every phase: :class:`Trainer`.

A phase supplies ``loss_fn(model, samples, targets) -> scalar loss``; the trainer owns
gradient accumulation (no DDP all-reduce on accumulation steps), the per-iteration
lr schedule, autocast / grad scaling, gradient-norm clipping, metric reduction and
progress. The loss is read from the device only at print points, so a GPU step
never waits on the host.

Crash safety lives here too: an epoch can start at a given step (mid-epoch resume), stop
cleanly at an optimizer-step boundary when a preemption signal arrives, name the exact step of
a non-finite loss (tracked on the device, read at print points) or skip up to
``max_nonfinite`` such steps, or (``--on_nonfinite rollback``, :mod:`.recovery`) roll back to the
last good state and go on, and count the unreadable images the data wrapper skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import CommonConfig
from ..data.robust import TooManyBadImages
from ..errors import MaekitError
from .distributed import DistEnv, all_reduce_sum
from .fsdp import local_value, set_gradient_sync
from .parallelize import ParallelModel
from .precision import Precision
from .preemption import StopRequest
from .progress import EpochProgress, RunRecorder
from .recovery import Recovery, RecoverySettings
from .schedule import apply_lr, lr_at
from .train_state import nonfinite_entries

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(MaekitError):
    pass


@dataclass(frozen=True)
class LoopSettings:
    lr: float
    min_lr: float
    warmup_epochs: float
    epochs: int
    accum_iter: int = 1
    clip_grad: float | None = None
    print_freq: int = 20
    max_train_step: int | None = None
    max_nonfinite: int = 0  # skip up to this many non-finite steps per run (0: stop at the first)
    max_bad_frac: float = 0.01  # stop when a larger fraction of an epoch's images is unreadable
    recovery: RecoverySettings | None = None  # --on_nonfinite rollback (None: stop)

    @classmethod
    def from_config(cls, cfg: CommonConfig, lr: float) -> LoopSettings:
        """A phase config's loop flags, with the absolute ``lr`` the run resolved."""
        return cls(
            lr=lr,
            min_lr=cfg.min_lr,
            warmup_epochs=cfg.warmup_epochs,
            epochs=cfg.epochs,
            accum_iter=cfg.accum_iter,
            clip_grad=cfg.clip_grad,
            print_freq=cfg.print_freq,
            max_train_step=cfg.max_train_step,
            max_nonfinite=cfg.max_nonfinite,
            max_bad_frac=cfg.max_bad_frac,
            recovery=RecoverySettings.from_config(cfg),
        )


@dataclass
class EpochState:
    """Where an epoch stands: enough for a mid-epoch checkpoint to continue it (and its log)."""

    step: int = 0  # next micro-step (loader batch) to run
    loss_sum: float = 0.0
    loss_steps: int = 0
    images: int = 0
    bad_images: int = 0
    time_s: float = 0.0
    lr_sum: float = 0.0  # per-iteration lr summed: train_lr is their mean, as the official log
    lr_steps: int = 0
    stopped: bool = False  # True: left early on a stop request, ``step`` is where to go on

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RunCounters:
    nonfinite_skipped: int = 0  # steps skipped under --max_nonfinite, over the whole run


def steps_in_epoch(loader_len: int, max_train_step: int | None) -> int:
    return loader_len if max_train_step is None else min(loader_len, max_train_step)


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(samples, targets) or (samples, targets, per-sample skipped counts) -> (x, y, n_bad)."""
    if len(batch) == 3:
        return batch[0], batch[1], int(batch[2].sum())
    return batch[0], batch[1], 0


class _Window:
    """The loss sums of an epoch, kept on the device and read only at print points."""

    def __init__(self, device: torch.device) -> None:
        self.f64 = {"device": device, "dtype": torch.float64}
        self.loss_sum = torch.zeros((), **self.f64)  # the epoch's (this call's)
        self.window_sum = torch.zeros((), **self.f64)  # since the last print point
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)  # non-finite step
        self.window_n = 0
        self.n_loss = 0
        self.imgs_seen = 0

    def add(self, loss: torch.Tensor, n: int = 1) -> None:
        """One step's loss, or (rollback mode, at a passed check) the sum of ``n`` steps'."""
        loss_d = loss.detach().to(torch.float64)
        self.loss_sum += loss_d
        self.window_sum += loss_d
        self.window_n += n
        self.n_loss += n


class Trainer:
    """One run's step function and epoch loop, over a :class:`ParallelModel`.

    The step (:meth:`forward_backward_step`, then :meth:`optimizer_step` on update steps) is
    what ``maekit bench`` times; :meth:`train_epoch` runs it over a loader with the schedule,
    the checks and the progress. Saving is the caller's (:func:`maekit.engine.fit.fit`).
    """

    def __init__(
        self,
        model: ParallelModel,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        settings: LoopSettings,
        precision: Precision,
        env: DistEnv,
        recorder: RunRecorder,
        counters: RunCounters | None = None,
    ) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.settings, self.precision, self.env, self.recorder = settings, precision, env, recorder
        self.scaler = precision.grad_scaler()
        self.counters = counters or RunCounters()
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.good_in_update = 0  # micro-steps with a finite loss in the current accumulation
        self._grad_sync: bool | None = None  # FSDP2's current setting (switched on change)
        self.recovery = Recovery(settings.recovery) if settings.recovery is not None else None

    def forward_backward_step(
        self, samples: torch.Tensor, targets: torch.Tensor, update: bool, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Forward and (unless skipped) backward of one micro-batch, gradients scaled by
        1/accum_iter; no gradient all-reduce unless ``update``. Returns (loss, finite, skipped):
        ``finite`` stays on the device; ``skipped`` is True only under --max_nonfinite."""
        s, accum = self.settings, self.settings.accum_iter
        ddp = self.model.ddp
        sync_ctx = ddp.no_sync() if ddp is not None and not update else contextlib.nullcontext()
        if self.model.fsdp and accum > 1 and self._grad_sync != update:
            set_gradient_sync(self.model.bare, update)  # reduce-scatter on the update's backward
            self._grad_sync = update
        skipped = False
        with sync_ctx:
            with self.precision.autocast():
                loss = self.loss_fn(self.model.step, samples, targets)
            finite = torch.isfinite(loss.detach())
            # --max_nonfinite: a host sync per step, and the ranks skip together (a backward
            # skipped on one rank alone would leave the others waiting in its collectives).
            skipped = s.max_nonfinite > 0 and bool(all_reduce_sum((~finite).to(torch.float32)) > 0)
            if skipped:
                self.counters.nonfinite_skipped += 1
                if self.env.is_main:
                    print(
                        f"maekit: non-finite loss at epoch {epoch}, step {step}; step skipped "
                        f"({self.counters.nonfinite_skipped} of --max_nonfinite {s.max_nonfinite})",
                        flush=True,
                    )
                if self.counters.nonfinite_skipped > s.max_nonfinite:
                    raise NonFiniteLossError(
                        f"more than --max_nonfinite {s.max_nonfinite} non-finite losses "
                        f"(the last at epoch {epoch}, step {step}); training stopped, the last "
                        "saved checkpoint is untouched; try a lower --blr or --clip_grad"
                    )
            else:
                self.scaler.scale(loss / accum).backward()
                self.good_in_update += 1
        return loss, finite, skipped

    def optimizer_step(self, epoch: int, step: int) -> None:
        """Unscale, clip (the norm is computed every update, as the official; it only clips with
        --clip_grad), step the optimizer and the scaler, zero the gradients."""
        if self.good_in_update:
            scaler, s = self.scaler, self.settings
            scaler.unscale_(self.optimizer)
            max_norm = s.clip_grad if s.clip_grad is not None else math.inf
            norm = local_value(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
            if s.max_nonfinite > 0 and not scaler.is_enabled() and not bool(torch.isfinite(norm)):
                self.counters.nonfinite_skipped += 1  # finite loss, non-finite gradient: skip too
                if self.env.is_main:
                    print(
                        f"maekit: non-finite gradient at epoch {epoch}, step {step}; step skipped",
                        flush=True,
                    )
            else:
                scaler.step(self.optimizer)
                scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.good_in_update = 0

    def train_epoch(
        self,
        loader: torch.utils.data.DataLoader,
        epoch: int,
        state: EpochState | None = None,
        stop: StopRequest | None = None,
    ) -> dict[str, float]:
        """Train one epoch (from ``state.step`` when resuming one); returns the globally
        averaged ``loss``, ``lr`` (the mean of the epoch's per-iteration lr, as the official
        ``train_lr``), ``last_lr``, ``img_per_s``, ``time_s``, ``bad_images`` and the final
        :class:`EpochState` as ``state`` (``state.stopped`` after a stop request).

        ``len(loader)`` is the number of batches still to come: a resumed epoch's sampler
        already skips the ``state.step`` batches done before.
        """
        self.model.step.train()
        s, env = self.settings, self.env
        state = state or EpochState()
        state.stopped = False  # a state restored from a stop checkpoint continues now
        start_step = state.step
        n_steps = steps_in_epoch(len(loader) + start_step, s.max_train_step)
        progress = EpochProgress(
            n_steps, epoch, s.epochs, env.is_main, s.print_freq, env.world_size
        )
        meters = _Window(env.device)
        lr, stop_agreed, check_due = 0.0, False, False
        rec = self.recovery
        if rec is not None:  # the epoch's first rollback target: the state it starts from
            rec.snapshot.capture(self.params, self.model.bare, self.optimizer, self.scaler)
            rec.pending.clear()
            rec.since = start_step
        self.good_in_update = 0
        self.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()

        step = start_step - 1
        try:
            batches = itertools.islice(loader, max(0, n_steps - start_step))
            for step, batch in enumerate(batches, start=start_step):
                samples, targets, n_bad = _unpack(batch)
                if step % s.accum_iter == 0:  # lr moves on optimizer steps, at the fractional epoch
                    lr = lr_at(epoch + step / n_steps, s.lr, s.min_lr, s.warmup_epochs, s.epochs)
                    if rec is not None:  # --recovery_lr_scale for a while after a recovery
                        lr *= rec.lr_factor(epoch * n_steps + step)
                    apply_lr(self.optimizer, lr)
                state.lr_sum += lr  # every iteration, accumulation steps too (the official mean)
                state.lr_steps += 1
                samples = samples.to(env.device, non_blocking=True)
                targets = targets.to(env.device, non_blocking=True)
                update = (step + 1) % s.accum_iter == 0
                loss, finite, skipped = self.forward_backward_step(
                    samples, targets, update, epoch, step
                )
                if update:
                    self.optimizer_step(epoch, step)
                if s.max_nonfinite == 0 and rec is None:  # the first bad step, without a sync
                    meters.first_bad = torch.where(
                        finite | (meters.first_bad >= 0), meters.first_bad, step
                    )
                if not skipped:  # a skipped step is not averaged
                    if rec is None:
                        meters.add(loss)
                    else:  # averaged once a check passes it (a rolled-back step never is)
                        rec.pending.append((step, loss.detach()))
                meters.imgs_seen += samples.shape[0]
                state.bad_images += n_bad
                last = step + 1 == n_steps
                at_print = (step + 1) % s.print_freq == 0 or last
                checked = False
                if rec is None:
                    if at_print:
                        stop_agreed = self._print_point(
                            meters, state, stop, epoch, step, n_steps, lr, progress
                        )
                else:
                    # Rollback mode checks (and prints) on update boundaries only: a snapshot
                    # taken mid-accumulation would lack the gradients accumulated so far.
                    check_due = check_due or at_print
                    if check_due and (update or last):
                        self._check(meters, epoch, step, n_steps)
                        stop_agreed = self._print_point(
                            meters, state, stop, epoch, step, n_steps, lr, progress
                        )
                        check_due, checked = False, True
                if env.world_size == 1 and stop is not None and stop.requested:
                    stop_agreed = True  # one process: no need to wait for a print point
                # Rollback mode stops at a check point only: the checkpoint then holds a state
                # the check passed, which is also the snapshot the uninterrupted run holds.
                if stop_agreed and update and not last and (rec is None or checked):
                    state.stopped = True
                    break
        finally:
            progress.close()
        return self._epoch_totals(state, meters, step, time.perf_counter() - start, lr)

    def _check(self, meters: _Window, epoch: int, step: int, n_steps: int) -> None:
        """Rollback mode, at a check point: one all-reduce of the losses since the snapshot and
        of the count of non-finite weights; a good state becomes the snapshot, a bad one is
        replaced by it (the batches since skipped). See :mod:`maekit.engine.recovery`."""
        rec, f64 = self.recovery, meters.f64
        bad_here = nonfinite_entries(module=self.model.bare, optimizer=self.optimizer, limit=1)
        steps = [st for st, _ in rec.pending]
        local = [loss.to(torch.float64).reshape(1) for _, loss in rec.pending]
        summed = all_reduce_sum(torch.cat([*local, torch.tensor([float(len(bad_here))], **f64)]))
        per_step = (summed[:-1] / self.env.world_size).tolist()  # the same on every rank
        why, at = rec.verdict(per_step, summed[-1].item() > 0)
        rec.pending.clear()
        first = rec.since
        rec.since = step + 1
        if not why:
            if local:
                meters.add(torch.cat(local).sum(), len(local))
            rec.state.history.extend(per_step)
            rec.snapshot.capture(self.params, self.model.bare, self.optimizer, self.scaler)
            if not rec.reported:  # once, after an update: the optimizer state exists
                rec.reported = True
                if self.env.is_main:
                    print(
                        "maekit: --on_nonfinite rollback keeps the last good state in memory: "
                        f"{rec.snapshot.nbytes() / 2**20:.1f} MiB on {self.env.device}",
                        flush=True,
                    )
            return
        bad_step = steps[at] if at is not None else step
        where = f"{why} at epoch {epoch}, step {bad_step}"
        rec.recovered(epoch * n_steps + step, where)
        rec.snapshot.restore(self.params, self.model.bare, self.optimizer, self.scaler)
        self.good_in_update = 0
        n_skipped = step + 1 - first
        rec.state.skipped_batches += n_skipped
        rec.state.total += 1
        if self.env.is_main:
            s = rec.settings
            print(
                f"maekit: recovery {rec.state.total}: {where}; rolled back to the state before "
                f"epoch {epoch}, step {first} and skipped its {n_skipped} batches (steps "
                f"{first}-{step}); --max_recoveries {s.max_recoveries} per --recovery_window "
                f"{s.window} steps",
                flush=True,
            )

    def _print_point(
        self,
        meters: _Window,
        state: EpochState,
        stop: StopRequest | None,
        epoch: int,
        step: int,
        n_steps: int,
        lr: float,
        progress: EpochProgress,
    ) -> bool:
        """Every --print_freq steps: one all-reduce of the window's loss, the bad-image count and
        the stop flag; raise on a non-finite loss or too many unreadable images; print and log.
        Returns whether any rank was asked to stop."""
        s, f64 = self.settings, meters.f64
        local_stop = 1.0 if stop is not None and stop.requested else 0.0
        window = all_reduce_sum(
            torch.stack(
                [
                    meters.window_sum,
                    torch.tensor(float(meters.window_n), **f64),
                    torch.tensor(float(state.bad_images), **f64),
                    torch.tensor(float(state.images + meters.imgs_seen), **f64),
                    torch.tensor(local_stop, **f64),
                ]
            )
        )
        bad_step = int(meters.first_bad)
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"loss is not finite at epoch {epoch}, step {bad_step} (of {n_steps}); training "
                "stopped, the last saved checkpoint is untouched; try a lower --blr, --clip_grad, "
                "--amp bf16/none instead of fp16, or --max_nonfinite N to skip such steps"
            )
        bad, seen = window[2].item(), window[3].item()
        if bad > s.max_bad_frac * seen:
            raise TooManyBadImages(
                f"{int(bad)} of {int(seen)} images in epoch {epoch} could not be read (more than "
                f"--max_bad_frac {s.max_bad_frac}); fix or remove the files named in the "
                "warnings above, or raise --max_bad_frac"
            )
        avg = (window[0] / window[1]).item() if window[1].item() > 0 else float("nan")
        # TensorBoard's step axis: thousandths of an epoch (docs/pretraining.md)
        tb_step = int((epoch + (step + 1) / n_steps) * 1000)
        if self.recovery is not None and window[1].item() == 0:
            progress.update(step, {"lr": lr}, meters.imgs_seen)  # all rolled back: no loss
        else:
            progress.update(step, {"loss": avg, "lr": lr}, meters.imgs_seen)
            self.recorder.scalar("train_loss", avg, tb_step)
        self.recorder.scalar("lr", lr, tb_step)
        meters.window_sum.zero_()
        meters.window_n = 0
        return window[4].item() > 0

    def _epoch_totals(
        self, state: EpochState, meters: _Window, step: int, elapsed: float, lr: float
    ) -> dict:
        """Fold this call's sums into ``state`` and all-reduce the epoch's totals."""
        state.step = step + 1
        state.loss_sum += meters.loss_sum.item()
        state.loss_steps += meters.n_loss
        state.images += meters.imgs_seen
        state.time_s += elapsed
        totals = all_reduce_sum(
            torch.tensor(
                [
                    state.loss_sum,
                    float(state.loss_steps),
                    float(state.images),
                    float(state.bad_images),
                ],
                device=self.env.device,
                dtype=torch.float64,
            )
        )
        return {
            "loss": (totals[0] / totals[1]).item() if totals[1].item() > 0 else float("nan"),
            "lr": state.lr_sum / max(state.lr_steps, 1),
            "last_lr": lr,
            "img_per_s": totals[2].item() / max(state.time_s, 1e-9),
            "time_s": state.time_s,
            "bad_images": int(totals[3].item()),
            "state": state,
        }
