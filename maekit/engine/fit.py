"""Run scaffolding shared by every phase: set-up, the epoch loop, logging and saving."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import MaekitError
from . import rng
from .checkpoint import (
    BEST,
    LAST,
    atomic_link,
    find_resume_checkpoint,
    prune_checkpoints,
    remove_stale_temp_files,
    resume_from,
    save_checkpoint,
)
from .distributed import DistEnv, barrier, init_distributed
from .precision import Precision, resolve_precision
from .preemption import StopRequest
from .progress import RunRecorder
from .schedule import scaled_lr
from .sharding import full_state, is_sharded
from .trainer import EpochState, LoopSettings, LossFn, RunCounters, train_one_epoch


@dataclass
class RunContext:
    env: DistEnv
    precision: Precision
    recorder: RunRecorder
    output_dir: Path
    num_workers: int  # --num_workers capped at the CPU count
    pin_memory: bool  # --pin_mem, only meaningful for CUDA


def check_output_dir(path: str) -> Path:
    """Create ``path`` and prove it is writable, before any work is done."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".maekit-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise MaekitError(
            f"--output_dir {out} is not writable ({e.strerror or e}); choose another folder"
        ) from e
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_run(cfg) -> RunContext:
    """Processes, device, seed (+rank), precision, output folder and config.json."""
    cfg.validate()
    env = init_distributed(cfg.device)
    out = check_output_dir(cfg.output_dir) if env.is_main else Path(cfg.output_dir)
    barrier()
    seed_everything(cfg.seed + env.rank)
    precision = resolve_precision(cfg.amp, env.device)
    if env.is_main:
        # What the flags resolved to on this machine: `--amp auto` is fp32 or bf16 by hardware.
        # The absolute lr too: --blr scales with the effective batch, which --accum_iter and the
        # process count set.
        lr, eff = absolute_lr(cfg, env.world_size)
        resolved = {"precision": precision.name, "device": str(env.device),
                    "world_size": env.world_size, "effective_batch": eff, "lr": lr,
                    "torch": torch.__version__}  # fmt: skip
        (out / "config.json").write_text(
            json.dumps({**cfg.to_dict(), "resolved": resolved}, indent=2) + "\n"
        )
    from .wandb_run import start_wandb

    recorder = RunRecorder(str(out), cfg.log_dir, enabled=env.is_main,
                           wandb=start_wandb(cfg, out) if env.is_main else None)  # fmt: skip
    workers = min(cfg.num_workers, os.cpu_count() or 1)
    pin = cfg.pin_mem and env.device.type == "cuda"
    return RunContext(env, precision, recorder, out, workers, pin)


def absolute_lr(cfg, world_size: int) -> tuple[float, int]:
    """(absolute lr, effective batch): --lr if given, else --blr x effective batch / 256."""
    eff = cfg.batch_size * cfg.accum_iter * world_size
    return (cfg.lr if cfg.lr is not None else scaled_lr(cfg.blr, eff)), eff


def resolve_lr(cfg, env: DistEnv) -> tuple[float, int]:
    """(absolute lr, effective batch); prints both base and actual lr like the official."""
    lr, eff = absolute_lr(cfg, env.world_size)
    if env.is_main:
        print(f"base lr: {lr * 256 / eff:.2e}  actual lr: {lr:.2e}  effective batch: {eff} "
              f"({cfg.batch_size} x {cfg.accum_iter} accum x {env.world_size} procs)")  # fmt: skip
    return lr, eff


EvaluateFn = Callable[[], dict[str, float]]


def gather_rng_states(env: DistEnv) -> list[dict]:
    """Every rank's RNG states (rank order); all ranks must call it."""
    mine = rng.capture()
    if not env.distributed:
        return [mine]
    states: list = [None] * env.world_size
    torch.distributed.all_gather_object(states, mine)
    return states


def find_start(cfg, env: DistEnv) -> tuple[str, dict | None]:
    """The checkpoint to resume from: --resume, else (--auto_resume) the newest valid one in
    --output_dir. Returns (path or '', its contents if already read)."""
    if cfg.resume:
        return cfg.resume, None
    if not cfg.auto_resume:
        return "", None
    found = find_resume_checkpoint(cfg.output_dir)
    return (str(found[0]), found[1]) if found else ("", None)


def fit(
    cfg,
    ctx: RunContext,
    model: torch.nn.Module,
    model_without_ddp: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    loss_fn: LossFn,
    lr: float,
    evaluate_fn: EvaluateFn | None = None,
    epoch_metrics_fn: Callable[[int], dict[str, float]] | None = None,
) -> list[dict]:
    """Train ``cfg.start_epoch .. cfg.epochs-1``; log every epoch, save every ``save_freq``.

    With ``evaluate_fn`` (returns acc1/acc5/loss) each epoch is evaluated, logged as
    test_*, and the best top-1 so far is kept as ``checkpoint-best.pth``.

    Resumes from --resume or, with --auto_resume, the newest valid checkpoint in the output
    folder, exactly: weights, optimizer, RNG states of every rank, and the step within the
    epoch. SIGTERM/SIGUSR1 stop at the next step boundary with a mid-epoch checkpoint.
    """
    env = ctx.env
    scaler = ctx.precision.grad_scaler()
    start_epoch, start_state = cfg.start_epoch, EpochState()
    best = -1.0
    counters = RunCounters()
    rng_states = None
    if env.is_main:
        remove_stale_temp_files(ctx.output_dir)
    resume_path, ckpt = find_start(cfg, env)
    if resume_path:
        start_epoch, ckpt = resume_from(resume_path, model_without_ddp, optimizer, scaler, ckpt)
        best = float(ckpt.get("max_accuracy", best))
        resume = ckpt.get("resume") or {}
        counters.nonfinite_skipped = int(resume.get("nonfinite_skipped", 0))
        same_world = resume.get("world_size") == env.world_size
        if same_world and resume.get("rng"):
            rng_states = resume["rng"][env.rank]
        if same_world and resume.get("epoch_state"):
            start_state = EpochState(**resume["epoch_state"])
        if env.is_main:
            where = f"epoch {start_epoch}" + (
                f", step {start_state.step}" if start_state.step else ""
            )
            how = "auto-resumed" if not cfg.resume else "resumed"
            print(f"{how} from {resume_path}: continuing at {where}")
            if resume and not same_world:
                print(f"maekit: warning: the checkpoint was written by {resume.get('world_size')} processes, "
                      f"this run has {env.world_size}: data order and random streams are not continued "
                      "exactly (an interrupted epoch restarts)", file=sys.stderr)  # fmt: skip
    if start_epoch >= cfg.epochs:
        if resume_path and not cfg.resume:
            if env.is_main:
                print(f"nothing to do: {resume_path} already finished epoch {start_epoch - 1} of "
                      f"--epochs {cfg.epochs}; raise --epochs to train longer, or give a new "
                      "--output_dir (or --no_auto_resume) to start over")  # fmt: skip
            ctx.recorder.close()
            return []
        raise MaekitError(f"nothing to do: training starts at epoch {start_epoch} but --epochs is {cfg.epochs}; "
                          "raise --epochs to train longer")  # fmt: skip
    settings = LoopSettings(lr=lr, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs,
                            accum_iter=cfg.accum_iter, clip_grad=cfg.clip_grad, print_freq=cfg.print_freq,
                            max_train_step=cfg.max_train_step, max_nonfinite=cfg.max_nonfinite,
                            max_bad_frac=cfg.max_bad_frac)  # fmt: skip
    if env.is_main:
        print(f"training {cfg.model} on {env.device} x {env.world_size} in {ctx.precision.name} "
              f"for epochs {start_epoch}..{cfg.epochs - 1}", flush=True)  # fmt: skip

    def save(epoch_done: int, resume_at: tuple[int, int], state: EpochState | None,
             periodic: bool = False, as_best: bool = False) -> None:  # fmt: skip
        """checkpoint-last.pth (+ checkpoint-{epoch}.pth, + best): all ranks call it."""
        resume = {"epoch": resume_at[0], "step": resume_at[1], "world_size": env.world_size,
                  "rng": gather_rng_states(env), "nonfinite_skipped": counters.nonfinite_skipped,
                  "epoch_state": None if state is None else state.as_dict()}  # fmt: skip
        model_state = optimizer_state = None
        if is_sharded(model_without_ddp):  # fsdp: gather full tensors to rank 0 (all ranks call)
            model_state, optimizer_state = full_state(model_without_ddp, optimizer)
        if env.is_main:
            extra = {"resume": resume}
            if evaluate_fn is not None:
                extra["max_accuracy"] = best
            last = ctx.output_dir / LAST
            save_checkpoint(last, model_without_ddp, optimizer, epoch_done, scaler, cfg.to_dict(),
                            extra=extra, model_state=model_state, optimizer_state=optimizer_state)  # fmt: skip
            if periodic:
                atomic_link(last, ctx.output_dir / f"checkpoint-{epoch_done}.pth")
                prune_checkpoints(ctx.output_dir, cfg.keep_last)
            if as_best:
                atomic_link(last, ctx.output_dir / BEST)
        barrier()

    history = []
    run_start = time.perf_counter()
    with StopRequest() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            loader.sampler.set_epoch(epoch)
            state = start_state if epoch == start_epoch else EpochState()
            if state.step:
                loader.sampler.start_at(state.step * cfg.batch_size)
            if rng_states is not None:  # exactly where the checkpoint's random streams were
                rng.restore(rng_states)
                rng_states = None
            stats = train_one_epoch(model, loader, optimizer, loss_fn, epoch, settings, ctx.precision, scaler,
                                    env, ctx.recorder, state=state, stop=stop, counters=counters)  # fmt: skip
            if stats["state"].stopped:
                s = stats["state"]
                save(epoch - 1, (epoch, s.step), s)
                if env.is_main:
                    print(f"stopped by {stop.signal_name or 'a stop request'} at epoch {epoch}, step {s.step}: "
                          f"saved {ctx.output_dir / LAST}; run the same command to continue", flush=True)  # fmt: skip
                break
            log = {"train_loss": stats["loss"], "train_lr": stats["lr"]}
            improved = False
            if evaluate_fn is not None:
                test = evaluate_fn()
                log.update({f"test_{k}": test[k] for k in ("acc1", "acc5", "loss")})
                improved = test["acc1"] > best
                best = max(best, test["acc1"])
            if epoch_metrics_fn is not None:  # e.g. kNN accuracy during pre-training
                log.update(epoch_metrics_fn(epoch))
            log.update({"epoch": epoch, "train_img_per_s": round(stats["img_per_s"], 2),
                        "epoch_time_s": round(stats["time_s"], 2),
                        "wall_time_s": round(time.perf_counter() - run_start, 2)})  # fmt: skip
            if stats["bad_images"]:
                log["bad_images_skipped"] = stats["bad_images"]
            if counters.nonfinite_skipped:
                log["nonfinite_skipped"] = counters.nonfinite_skipped
            periodic = epoch % cfg.save_freq == 0 or epoch + 1 == cfg.epochs
            save(epoch, (epoch + 1, 0), None, periodic=periodic, as_best=improved)
            ctx.recorder.epoch(log)
            if env.is_main:
                line = (f"epoch {epoch}: train_loss {log['train_loss']:.4f}  lr {log['train_lr']:.3e}  "
                        f"{log['train_img_per_s']:.1f} img/s  {log['epoch_time_s']:.0f}s")  # fmt: skip
                if evaluate_fn is not None:
                    line += (f"  test acc1 {log['test_acc1']:.2f}%  acc5 {log['test_acc5']:.2f}%  "
                             f"loss {log['test_loss']:.4f}  (max acc1 {best:.2f}%)")  # fmt: skip
                if stats["bad_images"]:
                    line += f"  ({stats['bad_images']} unreadable images skipped)"
                print(line, flush=True)
            history.append(log)
            barrier()
            if stop.requested and epoch + 1 < cfg.epochs:
                if env.is_main:
                    print(f"stopped by {stop.signal_name} after epoch {epoch}: saved {ctx.output_dir / LAST}; "
                          "run the same command to continue", flush=True)  # fmt: skip
                break
    ctx.recorder.close()
    return history
