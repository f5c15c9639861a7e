"""The epochs of a run: a short loop over the trainer's epoch, with logging and saving around
it (torchtitan's ``train()``; the step itself is :class:`~.trainer.Trainer`'s)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from ..checkpoint.rundir import LAST, remove_stale_temp_files
from ..config import CommonConfig
from ..errors import MaekitError
from . import rng
from .distributed import barrier
from .preemption import StopRequest
from .resume import Saver, find_start, restore
from .trainer import Trainer, steps_in_epoch

EvaluateFn = Callable[[], dict[str, float]]  # -> acc1, acc5, loss on the validation set
Monitor = Callable[[int], dict[str, float]]  # epoch -> extra log entries (val_loss, knn_acc1)


def fit(
    cfg: CommonConfig,
    ctx,
    trainer: Trainer,
    loader: torch.utils.data.DataLoader,
    evaluate_fn: EvaluateFn | None = None,
    monitors: Sequence[Monitor] = (),
    saved_extras: dict | None = None,
) -> list[dict]:
    """Train ``cfg.start_epoch .. cfg.epochs-1``; log every epoch, save every ``save_freq``.

    With ``evaluate_fn`` each epoch is evaluated, logged as test_*, and the best top-1 so far is
    kept as ``checkpoint-best.pth``. ``monitors`` add their entries to each epoch's log;
    ``saved_extras`` are written into every checkpoint (the recipe's, e.g. class names).

    Resumes from --resume or, with --auto_resume, the newest valid checkpoint in the output
    folder, exactly: weights, optimizer, RNG states of every rank, and the step within the
    epoch. SIGTERM/SIGUSR1 stop at the next step boundary with a mid-epoch checkpoint.
    """
    env = trainer.env
    if env.is_main:
        remove_stale_temp_files(ctx.output_dir)
    point = restore(cfg, ctx.start if ctx.start is not None else find_start(cfg, env), trainer)
    saver = Saver(cfg, ctx.output_dir, trainer, evaluate_fn is not None, saved_extras)
    saver.best = point.best
    if not _has_epochs_left(cfg, point, env.is_main):
        ctx.recorder.close()
        return []
    # log.txt and TensorBoard continue from the resume point: nothing twice. A fresh start
    # cuts the lines of a run killed before its first checkpoint the same way.
    if point.path or (ctx.output_dir / "log.txt").exists():
        n_steps = steps_in_epoch(len(loader), cfg.max_train_step)
        ctx.recorder.resume_at(
            point.epoch, int((point.epoch + point.state.step / max(n_steps, 1)) * 1000) + 1
        )
    if env.is_main:
        print(
            f"training {cfg.model} on {env.device} x {env.world_size} in {ctx.precision.name} "
            f"for epochs {point.epoch}..{cfg.epochs - 1}",
            flush=True,
        )

    history = []
    run_start = time.perf_counter()
    with StopRequest() as stop:
        for epoch in range(point.epoch, cfg.epochs):
            loader.sampler.set_epoch(epoch)
            state = point.state if epoch == point.epoch else None
            if state is not None and state.step:
                loader.sampler.start_at(state.step * cfg.batch_size)
            if point.rng_states is not None:  # exactly where the checkpoint's random streams were
                rng.restore(point.rng_states)
                point.rng_states = None
            stats = trainer.train_epoch(loader, epoch, state=state, stop=stop)
            done = stats["state"]
            if done.stopped:
                saver.check_finite(epoch, done.step - 1)
                saver.save(epoch - 1, (epoch, done.step), done)
                if env.is_main:
                    print(
                        f"stopped by {stop.signal_name or 'a stop request'} at epoch {epoch}, step {done.step}: "
                        f"saved {ctx.output_dir / LAST}; run the same command to continue",
                        flush=True,
                    )
                break
            log, improved = epoch_log(
                stats, epoch, evaluate_fn, monitors, saver, trainer, run_start
            )
            saver.check_finite(epoch, done.step - 1)
            # The log line first: killed before the save, the resume (from the epoch before)
            # cuts it back and writes it again; the other order could lose it.
            ctx.recorder.epoch(log)
            periodic = epoch % cfg.save_freq == 0 or epoch + 1 == cfg.epochs
            saver.save(epoch, (epoch + 1, 0), None, periodic=periodic, as_best=improved)
            if env.is_main:
                print(epoch_line(log, saver.best if evaluate_fn is not None else None), flush=True)
            history.append(log)
            barrier()
            if stop.requested and epoch + 1 < cfg.epochs:
                if env.is_main:
                    print(
                        f"stopped by {stop.signal_name} after epoch {epoch}: saved {ctx.output_dir / LAST}; "
                        "run the same command to continue",
                        flush=True,
                    )
                break
    ctx.recorder.close()
    return history


def _has_epochs_left(cfg: CommonConfig, point, is_main: bool) -> bool:
    """False (said once) when an auto-resumed run is already done; an explicit start past
    --epochs is an error."""
    if point.epoch < cfg.epochs:
        return True
    if point.path and not cfg.resume:
        if is_main:
            print(
                f"nothing to do: {point.path} already finished epoch {point.epoch - 1} of "
                f"--epochs {cfg.epochs}; raise --epochs to train longer, or give a new "
                "--output_dir (or --no_auto_resume) to start over"
            )
        return False
    raise MaekitError(
        f"nothing to do: training starts at epoch {point.epoch} but --epochs is {cfg.epochs}; "
        "raise --epochs to train longer"
    )


def epoch_log(
    stats: dict,
    epoch: int,
    evaluate_fn: EvaluateFn | None,
    monitors: Sequence[Monitor],
    saver: Saver,
    trainer: Trainer,
    run_start: float,
) -> tuple[dict, bool]:
    """The epoch's log record (train_*, test_*, the monitors', timings), and whether the test
    top-1 improved on the best so far."""
    log = {"train_loss": stats["loss"], "train_lr": stats["lr"]}
    improved = False
    if evaluate_fn is not None:
        test = evaluate_fn()
        log.update({f"test_{k}": test[k] for k in ("acc1", "acc5", "loss")})
        improved = test["acc1"] > saver.best
        saver.best = max(saver.best, test["acc1"])
    for monitor in monitors:  # e.g. val_loss, kNN accuracy during pre-training
        log.update(monitor(epoch))
    log.update(
        {
            "epoch": epoch,
            "train_img_per_s": round(stats["img_per_s"], 2),
            "epoch_time_s": round(stats["time_s"], 2),
            "wall_time_s": round(time.perf_counter() - run_start, 2),
        }
    )
    if stats["bad_images"]:
        log["bad_images_skipped"] = stats["bad_images"]
    if trainer.counters.nonfinite_skipped:
        log["nonfinite_skipped"] = trainer.counters.nonfinite_skipped
    if trainer.recovery is not None and trainer.recovery.state.total:  # over the run so far
        log["recoveries"] = trainer.recovery.state.total
        log["recovery_skipped_batches"] = trainer.recovery.state.skipped_batches
    return log, improved


def epoch_line(log: dict, best: float | None) -> str:
    """The one line printed per epoch."""
    line = (
        f"epoch {log['epoch']}: train_loss {log['train_loss']:.4f}  lr {log['train_lr']:.3e}  "
        f"{log['train_img_per_s']:.1f} img/s  {log['epoch_time_s']:.0f}s"
    )
    if best is not None:
        line += (
            f"  test acc1 {log['test_acc1']:.2f}%  acc5 {log['test_acc5']:.2f}%  "
            f"loss {log['test_loss']:.4f}  (max acc1 {best:.2f}%)"
        )
    if log.get("bad_images_skipped"):
        line += f"  ({log['bad_images_skipped']} unreadable images skipped)"
    return line
