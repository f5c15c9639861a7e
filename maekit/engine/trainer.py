"""The one training loop shared by every phase.

A phase supplies ``loss_fn(model, samples, targets) -> scalar loss``; the loop owns
gradient accumulation (no DDP all-reduce on accumulation steps), the per-iteration
lr schedule, autocast / grad scaling, gradient-norm clipping, metric reduction and
progress. The loss is read from the device only at print points, so a GPU step
never waits on the host.

Crash safety lives here too: an epoch can start at a given step (mid-epoch resume), stop
cleanly at an optimizer-step boundary when a preemption signal arrives, name the exact step of
a non-finite loss (tracked on the device, read at print points) or skip up to
``max_nonfinite`` such steps, and count the unreadable images the data wrapper skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from ..data.robust import TooManyBadImages
from ..errors import MaekitError
from .distributed import DistEnv, all_reduce_sum
from .precision import Precision
from .preemption import StopRequest
from .progress import EpochProgress, RunRecorder
from .schedule import apply_lr, lr_at
from .sharding import is_sharded, local_value, set_gradient_sync

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


def train_one_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    epoch: int,
    settings: LoopSettings,
    precision: Precision,
    scaler: torch.amp.GradScaler,
    env: DistEnv,
    recorder: RunRecorder,
    state: EpochState | None = None,
    stop: StopRequest | None = None,
    counters: RunCounters | None = None,
) -> dict[str, float]:
    """Train one epoch (from ``state.step`` when resuming one); returns the globally averaged
    ``loss``, ``lr`` (the mean of the epoch's per-iteration lr, as the official ``train_lr``),
    ``last_lr``, ``img_per_s``, ``time_s``, ``bad_images`` and the final
    :class:`EpochState` as ``state`` (``state.stopped`` after a stop request).

    ``len(loader)`` is the number of batches still to come: a resumed epoch's sampler already
    skips the ``state.step`` batches done before.
    """
    model.train()
    state = state or EpochState()
    state.stopped = False  # a state restored from a stop checkpoint continues now
    counters = counters or RunCounters()
    start_step = state.step
    n_steps = steps_in_epoch(len(loader) + start_step, settings.max_train_step)
    accum = settings.accum_iter
    progress = EpochProgress(
        n_steps, epoch, settings.epochs, env.is_main, settings.print_freq, env.world_size
    )
    device = env.device
    f64 = {"device": device, "dtype": torch.float64}
    loss_sum = torch.zeros((), **f64)
    window_sum = torch.zeros((), **f64)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first non-finite step
    window_n, window_bad, lr = 0, 0, 0.0
    imgs_seen, n_loss = 0, 0
    good_in_update = 0  # micro-steps with a finite loss in the current accumulation window
    stop_agreed = False
    skip_nonfinite = settings.max_nonfinite > 0
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ddp = getattr(model, "_orig_mod", model)  # --compile wraps the DDP module
    ddp = ddp if isinstance(ddp, DistributedDataParallel) else None
    fsdp = is_sharded(model)  # FSDP2: gradient sync is switched per backward instead
    grad_sync: bool | None = None  # FSDP2's current setting (switched when it must change)
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()

    step = start_step - 1
    batches = itertools.islice(loader, max(0, n_steps - start_step))
    for step, batch in enumerate(batches, start=start_step):
        samples, targets, n_bad = _unpack(batch)
        if step % accum == 0:  # lr moves on optimizer steps only, at the fractional epoch
            lr = lr_at(
                epoch + step / n_steps,
                settings.lr,
                settings.min_lr,
                settings.warmup_epochs,
                settings.epochs,
            )
            apply_lr(optimizer, lr)
        state.lr_sum += lr  # every iteration, also accumulation steps (the official meter's mean)
        state.lr_steps += 1
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        update = (step + 1) % accum == 0
        sync_ctx = ddp.no_sync() if ddp is not None and not update else contextlib.nullcontext()
        if fsdp and accum > 1 and grad_sync != update:
            set_gradient_sync(model, update)  # reduce-scatter on the update's backward only
            grad_sync = update
        with sync_ctx:
            with precision.autocast():
                loss = loss_fn(model, samples, targets)
            finite = torch.isfinite(loss.detach())
            # --max_nonfinite: a host sync per step, and the ranks skip together (a backward
            # skipped on one rank alone would leave the others waiting in its collectives).
            skipped = skip_nonfinite and bool(all_reduce_sum((~finite).to(torch.float32)) > 0)
            if skipped:
                counters.nonfinite_skipped += 1
                if env.is_main:
                    print(f"maekit: non-finite loss at epoch {epoch}, step {step}; step skipped "
                          f"({counters.nonfinite_skipped} of --max_nonfinite {settings.max_nonfinite})",
                          flush=True)  # fmt: skip
                if counters.nonfinite_skipped > settings.max_nonfinite:
                    progress.close()
                    raise NonFiniteLossError(
                        f"more than --max_nonfinite {settings.max_nonfinite} non-finite losses "
                        f"(the last at epoch {epoch}, step {step}); training stopped, the last "
                        "saved checkpoint is untouched; try a lower --blr or --clip_grad"
                    )
            else:
                scaler.scale(loss / accum).backward()
                good_in_update += 1
        if update:
            if good_in_update:
                scaler.unscale_(optimizer)
                # The norm is computed every update (as the official); it only clips with --clip_grad.
                max_norm = settings.clip_grad if settings.clip_grad is not None else math.inf
                norm = local_value(torch.nn.utils.clip_grad_norm_(params, max_norm))
                if skip_nonfinite and not scaler.is_enabled() and not bool(torch.isfinite(norm)):
                    counters.nonfinite_skipped += 1  # finite loss, non-finite gradient: skip too
                    if env.is_main:
                        print(f"maekit: non-finite gradient at epoch {epoch}, step {step}; "
                              "step skipped", flush=True)  # fmt: skip
                else:
                    scaler.step(optimizer)
                    scaler.update()
            optimizer.zero_grad(set_to_none=True)
            good_in_update = 0

        if not skip_nonfinite:  # remember the first bad step without a host sync
            first_bad = torch.where(finite | (first_bad >= 0), first_bad, step)
        if not skipped:  # a skipped step is not averaged
            loss_d = loss.detach().to(torch.float64)
            loss_sum += loss_d
            window_sum += loss_d
            window_n += 1
            n_loss += 1
        imgs_seen += samples.shape[0]
        window_bad += n_bad
        state.bad_images += n_bad

        if (step + 1) % settings.print_freq == 0 or step + 1 == n_steps:
            local_stop = 1.0 if stop is not None and stop.requested else 0.0
            window = all_reduce_sum(
                torch.stack(
                    [
                        window_sum,
                        torch.tensor(float(window_n), **f64),
                        torch.tensor(float(state.bad_images), **f64),
                        torch.tensor(float(state.images + imgs_seen), **f64),
                        torch.tensor(local_stop, **f64),
                    ]
                )  # fmt: skip
            )
            bad_step = int(first_bad)
            if bad_step >= 0:
                progress.close()
                raise NonFiniteLossError(
                    f"loss is not finite at epoch {epoch}, step {bad_step} (of {n_steps}); training "
                    "stopped, the last saved checkpoint is untouched; try a lower --blr, --clip_grad, "
                    "--amp bf16/none instead of fp16, or --max_nonfinite N to skip such steps"
                )
            bad, seen = window[2].item(), window[3].item()
            if bad > settings.max_bad_frac * seen:
                progress.close()
                raise TooManyBadImages(
                    f"{int(bad)} of {int(seen)} images in epoch {epoch} could not be read (more than "
                    f"--max_bad_frac {settings.max_bad_frac}); fix or remove the files named in the "
                    "warnings above, or raise --max_bad_frac"
                )
            stop_agreed = window[4].item() > 0
            avg = (window[0] / window[1]).item() if window[1].item() > 0 else float("nan")
            progress.update(step, {"loss": avg, "lr": lr}, imgs_seen)
            recorder.scalar("train_loss", avg, int((epoch + (step + 1) / n_steps) * 1000))
            recorder.scalar("lr", lr, int((epoch + (step + 1) / n_steps) * 1000))
            window_sum.zero_()
            window_n = 0
        if env.world_size == 1 and stop is not None and stop.requested:
            stop_agreed = True  # one process: no need to wait for a print point
        if stop_agreed and update and step + 1 < n_steps:
            state.stopped = True
            break

    progress.close()
    elapsed = time.perf_counter() - start
    state.step = step + 1
    state.loss_sum += loss_sum.item()
    state.loss_steps += n_loss
    state.images += imgs_seen
    state.time_s += elapsed
    totals = all_reduce_sum(
        torch.tensor(
            [state.loss_sum, float(state.loss_steps), float(state.images), float(state.bad_images)],
            device=device,
            dtype=torch.float64,
        )  # fmt: skip
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
