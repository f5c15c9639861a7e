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

from ..checkpoint.rundir import (
    BEST,
    LAST,
    find_resume_checkpoint,
    prune_checkpoints,
    remove_stale_temp_files,
)
from ..errors import MaekitError
from ..files import atomic_copy
from . import rng
from .distributed import DistEnv, all_reduce_sum, barrier, init_distributed
from .precision import Precision, resolve_precision
from .preemption import StopRequest
from .progress import RunRecorder
from .runlock import lock_output_dir
from .schedule import scaled_lr
from .sharding import full_state, is_sharded
from .train_state import nonfinite_entries, resume_from, save_checkpoint
from .trainer import (
    EpochState,
    LoopSettings,
    LossFn,
    NonFiniteLossError,
    RunCounters,
    steps_in_epoch,
    train_one_epoch,
)


@dataclass
class RunContext:
    env: DistEnv
    precision: Precision
    recorder: RunRecorder
    output_dir: Path
    num_workers: int  # --num_workers capped at the CPU count
    pin_memory: bool  # --pin_mem, only meaningful for CUDA
    # The checkpoint to start from (path or '', its contents if already read), found before
    # config.json is written so that a conflicting rerun leaves the folder untouched.
    start: tuple[str, dict | None] | None = None


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


# Flags a rerun may change and still continue the run in --output_dir: more --epochs, where and
# how it runs, how it reports. Every other flag shapes the model, the optimisation or the data
# the checkpoint was trained with; a rerun that changes one is refused (see resume_conflicts).
RESUMABLE_CHANGES = frozenset({
    "epochs", "output_dir", "log_dir", "device", "num_workers", "pin_mem", "compile", "grad_ckpt",
    "dist_mode", "amp", "resume", "auto_resume", "keep_last", "max_nonfinite", "max_bad_frac",
    "max_pixels", "start_epoch", "save_freq", "print_freq", "max_train_step", "world_size",
    "local_rank", "dist_url", "dist_on_itp", "data_path", "gpu_decode", "knn_eval_freq",
    "knn_max_bank", "knn_max_query", "knn_pool", "finetune", "dist_eval", "eval", "config",
    "print_config", "knn_baseline", "val_freq", "val_max_images", "vis_freq", "log_wandb",
    "wandb_project", "wandb_name", "download", "init",
})  # fmt: skip


def resume_conflicts(now: dict, saved: object) -> list[str]:
    """``--flag saved -> now`` for each training flag that differs from the checkpoint's args.

    Only flags present in both are compared (older checkpoints lack newer flags); flags in
    :data:`RESUMABLE_CHANGES` may differ."""
    if not isinstance(saved, dict):
        return []
    out = []
    for k, v in now.items():
        if k in RESUMABLE_CHANGES or k not in saved:
            continue
        old = saved[k]
        if isinstance(old, tuple):
            old = list(old)
        if old != v and not (_is_num(old) and _is_num(v) and float(old) == float(v)):
            out.append(f"--{k} {old} -> {v}")
    return out


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _agree(env: DistEnv, error: MaekitError | None) -> None:
    """Raise ``error`` on this rank, and a pointer to it on the others: a start-up check that
    fails on rank 0 alone must not leave the other ranks waiting in a barrier."""
    if env.distributed:
        failed = all_reduce_sum(torch.tensor(float(error is not None), device=env.device))
        if error is None and float(failed) > 0:
            raise MaekitError("another rank stopped at start-up; see its message")
    if error is not None:
        raise error


def prepare_run(cfg) -> RunContext:
    """Processes, device, seed (+rank), precision, output folder (locked for this run), the
    checkpoint to resume from, and config.json."""
    cfg.validate()
    env = init_distributed(cfg.device)
    lr, eff = absolute_lr(cfg, env.world_size)
    if cfg.min_lr > lr:
        raise MaekitError(f"--min_lr {cfg.min_lr:g} is above the learning rate {lr:.3g} (--blr x effective "
                          f"batch {eff} / 256, or --lr); lower --min_lr or raise --blr")  # fmt: skip
    out, error = Path(cfg.output_dir), None
    if env.is_main:
        try:
            out = check_output_dir(cfg.output_dir)
            lock_output_dir(out)  # held until the process exits
        except MaekitError as e:
            error = e
    _agree(env, error)
    start = None
    if not getattr(cfg, "eval", False):
        start = find_start(cfg, env)
        error = None
        if start[0] and not cfg.resume:  # auto-resume: the same run, so the same recipe
            clash = resume_conflicts(cfg.to_dict(), (start[1] or {}).get("args"))
            if clash:
                error = MaekitError(f"--output_dir {out} holds a run with other settings than these flags "
                                    f"({start[0]}): {', '.join(clash[:8])}; rerun with the checkpoint's "
                                    "values, or give a new --output_dir (--no_auto_resume starts over "
                                    "in this one)")  # fmt: skip
        _agree(env, error)
    barrier()
    seed_everything(cfg.seed + env.rank)
    precision = resolve_precision(cfg.amp, env.device)
    if env.is_main:
        # What the flags resolved to on this machine: `--amp auto` is fp32 or bf16 by hardware.
        # The absolute lr too: --blr scales with the effective batch, which --accum_iter and the
        # process count set.
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
    return RunContext(env, precision, recorder, out, workers, pin, start)


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
    resume_path, ckpt = ctx.start if ctx.start is not None else find_start(cfg, env)
    if resume_path:
        start_epoch, ckpt = resume_from(resume_path, model_without_ddp, optimizer, scaler, ckpt)
        resume = ckpt.get("resume") or {}
        try:
            best = float(ckpt.get("max_accuracy", best))
            counters.nonfinite_skipped = int(resume.get("nonfinite_skipped", 0))
            same_world = resume.get("world_size") == env.world_size
            if same_world and resume.get("rng"):
                rng_states = resume["rng"][env.rank]
            if same_world and resume.get("epoch_state"):
                start_state = EpochState(**resume["epoch_state"])
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise MaekitError(f"{resume_path}: its resume state is damaged ({type(e).__name__}: "
                              f"{str(e)[:80]}); resume from another checkpoint, or start over with "
                              "--no_auto_resume") from e  # fmt: skip
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
    if resume_path:  # log.txt and TensorBoard continue from the resume point: nothing twice
        n_steps = steps_in_epoch(len(loader), cfg.max_train_step)
        ctx.recorder.resume_at(
            start_epoch, int((start_epoch + start_state.step / max(n_steps, 1)) * 1000) + 1
        )
    if env.is_main:
        print(f"training {cfg.model} on {env.device} x {env.world_size} in {ctx.precision.name} "
              f"for epochs {start_epoch}..{cfg.epochs - 1}", flush=True)  # fmt: skip

    def check_finite(epoch: int, step: int) -> None:
        """Refuse to save (all ranks agree) when a weight, gradient or optimizer state is not
        finite: the last good checkpoint stays the newest."""
        bad = nonfinite_entries(module=model_without_ddp, optimizer=optimizer)
        if int(all_reduce_sum(torch.tensor(float(len(bad)), device=env.device))) == 0:
            return
        where = f"epoch {epoch}, step {step}"
        names = f" ({', '.join(bad)})" if bad else " (on another rank)"
        raise NonFiniteLossError(
            f"the weights or optimizer state are not finite after {where}{names}: not saved, "
            f"training stopped, the last saved checkpoint is untouched and stays the resume point; "
            "try a lower --blr or --clip_grad, or --amp bf16/none instead of fp16"
        )

    def save(epoch_done: int, resume_at: tuple[int, int], state: EpochState | None,
             periodic: bool = False, as_best: bool = False) -> None:  # fmt: skip
        """checkpoint-last.pth (+ checkpoint-{epoch}.pth, + best): all ranks call it, after
        :func:`check_finite`."""
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
                atomic_copy(last, ctx.output_dir / f"checkpoint-{epoch_done}.pth")
                prune_checkpoints(ctx.output_dir, cfg.keep_last)
            if as_best:
                atomic_copy(last, ctx.output_dir / BEST)
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
                check_finite(epoch, s.step - 1)
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
            check_finite(epoch, stats["state"].step - 1)
            # The log line first: killed before the save, the resume (from the epoch before)
            # cuts it back and writes it again; the other order could lose it.
            ctx.recorder.epoch(log)
            save(epoch, (epoch + 1, 0), None, periodic=periodic, as_best=improved)
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
