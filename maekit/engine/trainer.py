"""The one training loop shared by every phase.

A phase supplies ``loss_fn(model, samples, targets) -> scalar loss``; the loop owns
gradient accumulation (no DDP all-reduce on accumulation steps), the per-iteration
lr schedule, autocast / grad scaling, gradient-norm clipping, metric reduction and
progress. The loss is read from the device only at print points, so a GPU step
never waits on the host.
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

from ..errors import MaekitError
from .distributed import DistEnv, all_reduce_sum
from .precision import Precision
from .progress import EpochProgress, RunRecorder
from .schedule import apply_lr, lr_at

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


def steps_in_epoch(loader_len: int, max_train_step: int | None) -> int:
    return loader_len if max_train_step is None else min(loader_len, max_train_step)


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
) -> dict[str, float]:
    """Train for one epoch; returns globally averaged ``loss``, last ``lr``, ``img_per_s``, ``time_s``."""
    model.train()
    n_steps = steps_in_epoch(len(loader), settings.max_train_step)
    accum = settings.accum_iter
    progress = EpochProgress(
        n_steps, epoch, settings.epochs, env.is_main, settings.print_freq, env.world_size
    )
    device = env.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    window_sum = torch.zeros((), device=device, dtype=torch.float64)
    window_n, imgs_seen, lr = 0, 0, 0.0
    params = [p for g in optimizer.param_groups for p in g["params"]]
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()

    step = -1
    for step, (samples, targets) in enumerate(itertools.islice(loader, n_steps)):
        if step % accum == 0:  # lr moves on optimizer steps only, at the fractional epoch
            lr = lr_at(
                epoch + step / n_steps,
                settings.lr,
                settings.min_lr,
                settings.warmup_epochs,
                settings.epochs,
            )
            apply_lr(optimizer, lr)
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        update = (step + 1) % accum == 0
        sync_ctx = (
            model.no_sync()
            if isinstance(model, DistributedDataParallel) and not update
            else contextlib.nullcontext()
        )
        with sync_ctx:
            with precision.autocast():
                loss = loss_fn(model, samples, targets)
            scaler.scale(loss / accum).backward()
        if update:
            scaler.unscale_(optimizer)
            # The norm is computed every update (as the official); it only clips with --clip_grad.
            max_norm = settings.clip_grad if settings.clip_grad is not None else math.inf
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

        loss_d = loss.detach().to(torch.float64)
        loss_sum += loss_d
        window_sum += loss_d
        window_n += 1
        imgs_seen += samples.shape[0]

        if (step + 1) % settings.print_freq == 0 or step + 1 == n_steps:
            window = all_reduce_sum(
                torch.stack(
                    [window_sum, torch.tensor(float(window_n), device=device, dtype=torch.float64)]
                )
            )
            avg = (window[0] / window[1]).item()
            if not math.isfinite(avg):
                progress.close()
                raise NonFiniteLossError(
                    f"loss is {avg} at epoch {epoch}, step {step + 1 - window_n + 1}-{step + 1}; "
                    "training stopped (the last saved checkpoint is untouched); try a lower --blr, "
                    "--clip_grad, or --amp bf16/none instead of fp16"
                )
            progress.update(step, {"loss": avg, "lr": lr}, imgs_seen)
            recorder.scalar("train_loss", avg, int((epoch + (step + 1) / n_steps) * 1000))
            recorder.scalar("lr", lr, int((epoch + (step + 1) / n_steps) * 1000))
            window_sum.zero_()
            window_n = 0

    progress.close()
    elapsed = time.perf_counter() - start
    totals = all_reduce_sum(
        torch.tensor(
            [loss_sum.item(), float(step + 1), float(imgs_seen)], device=device, dtype=torch.float64
        )
    )
    return {
        "loss": (totals[0] / totals[1]).item(),
        "lr": lr,
        "img_per_s": totals[2].item() / elapsed,
        "time_s": elapsed,
    }
