"""Run scaffolding shared by every phase: set-up, the epoch loop, logging and saving."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import MaekitError
from .checkpoint import resume_from, save_checkpoint
from .distributed import DistEnv, barrier, init_distributed
from .precision import Precision, resolve_precision
from .progress import RunRecorder
from .schedule import scaled_lr
from .trainer import LoopSettings, LossFn, train_one_epoch


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
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    recorder = RunRecorder(str(out), cfg.log_dir, enabled=env.is_main)
    workers = min(cfg.num_workers, os.cpu_count() or 1)
    pin = cfg.pin_mem and env.device.type == "cuda"
    return RunContext(env, precision, recorder, out, workers, pin)


def resolve_lr(cfg, env: DistEnv) -> tuple[float, int]:
    """(absolute lr, effective batch); prints both base and actual lr like the official."""
    eff = cfg.batch_size * cfg.accum_iter * env.world_size
    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.blr, eff)
    if env.is_main:
        print(f"base lr: {lr * 256 / eff:.2e}  actual lr: {lr:.2e}  effective batch: {eff} "
              f"({cfg.batch_size} x {cfg.accum_iter} accum x {env.world_size} procs)")  # fmt: skip
    return lr, eff


EvaluateFn = Callable[[], dict[str, float]]


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
    """
    env = ctx.env
    scaler = ctx.precision.grad_scaler()
    start_epoch = cfg.start_epoch
    best = -1.0
    if cfg.resume:
        start_epoch, extra = resume_from(cfg.resume, model_without_ddp, optimizer, scaler)
        best = float(extra.get("max_accuracy", best))
        if env.is_main:
            print(f"resumed from {cfg.resume}: continuing at epoch {start_epoch}")
    if start_epoch >= cfg.epochs:
        raise MaekitError(f"nothing to do: training starts at epoch {start_epoch} but --epochs is {cfg.epochs}; "
                          "raise --epochs to train longer")  # fmt: skip
    settings = LoopSettings(lr=lr, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs,
                            accum_iter=cfg.accum_iter, clip_grad=cfg.clip_grad, print_freq=cfg.print_freq,
                            max_train_step=cfg.max_train_step)  # fmt: skip
    if env.is_main:
        print(f"training {cfg.model} on {env.device} x {env.world_size} in {ctx.precision.name} "
              f"for epochs {start_epoch}..{cfg.epochs - 1}")  # fmt: skip

    def save(name: str, epoch: int) -> None:
        if env.is_main:
            save_checkpoint(ctx.output_dir / name, model_without_ddp, optimizer, epoch, scaler, cfg.to_dict(),
                            extra={"max_accuracy": best} if evaluate_fn else None)  # fmt: skip

    history = []
    run_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(model, loader, optimizer, loss_fn, epoch, settings, ctx.precision, scaler, env,
                                ctx.recorder)  # fmt: skip
        log = {"train_loss": stats["loss"], "train_lr": stats["lr"]}
        improved = False
        if evaluate_fn is not None:
            test = evaluate_fn()
            log.update({f"test_{k}": test[k] for k in ("acc1", "acc5", "loss")})
            improved = test["acc1"] > best
            best = max(best, test["acc1"])
        if epoch_metrics_fn is not None:
            log.update(epoch_metrics_fn(epoch))
        log.update({"epoch": epoch, "train_img_per_s": round(stats["img_per_s"], 2),
                    "epoch_time_s": round(stats["time_s"], 2),
                    "wall_time_s": round(time.perf_counter() - run_start, 2)})  # fmt: skip
        if epoch % cfg.save_freq == 0 or epoch + 1 == cfg.epochs:
            save(f"checkpoint-{epoch}.pth", epoch)
        if improved:
            save("checkpoint-best.pth", epoch)
        ctx.recorder.epoch(log)
        if env.is_main:
            line = (f"epoch {epoch}: train_loss {log['train_loss']:.4f}  lr {log['train_lr']:.3e}  "
                    f"{log['train_img_per_s']:.1f} img/s  {log['epoch_time_s']:.0f}s")  # fmt: skip
            if evaluate_fn is not None:
                line += (f"  test acc1 {log['test_acc1']:.2f}%  acc5 {log['test_acc5']:.2f}%  "
                         f"loss {log['test_loss']:.4f}  (max acc1 {best:.2f}%)")  # fmt: skip
            print(line, flush=True)
        history.append(log)
        barrier()
    ctx.recorder.close()
    return history
