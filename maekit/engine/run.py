"""One run, any phase: :func:`run` takes a config and the phase's :class:`Recipe` and does
everything the phases share, once and in one order:

    validate the flags -> the recipe resolves what it derives, checks its data, builds its
    model (seeded) ->
    processes, device, lr, run folder, config.json (:func:`prepare_run`) -> train loader ->
    parallelize -> optimizer, loss, trainer -> evaluation and monitors -> the epochs
    (:func:`maekit.engine.fit.fit`) -> the closing lines -> shutdown
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..checkpoint.rundir import archive_run, holds_checkpoints
from ..config import CommonConfig
from ..config.fields import resumable_fields
from ..data.seeding import seed_all
from ..data.workers import loader_workers
from ..errors import MaekitError, counted
from ..files import atomic_write
from .distributed import DistEnv, all_reduce_sum, barrier, init_distributed, shutdown
from .fit import fit
from .parallelize import parallelize
from .precision import resolve_precision
from .progress import RunRecorder
from .recipe import Recipe, RunContext
from .resume import find_start
from .runlock import lock_output_dir, unlock_output_dirs
from .schedule import absolute_lr
from .trainer import LoopSettings, Trainer, steps_in_epoch


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


def refuse_inside_data(cfg: CommonConfig) -> None:
    """A run folder inside a folder read as images (a flat folder or class folders; with
    train/ and val/, those two) would feed the run's own files (reconstruction PNGs) back as
    training images, or become a class of its own."""
    data = Path(str(getattr(cfg, "data_path", "") or ""))
    if not str(data) or not data.is_dir():
        return  # fashion-mnist, shards, or a missing folder (refused when read)
    splits = [data / s for s in ("train", "val") if (data / s).is_dir()]
    out = Path(cfg.output_dir).resolve()
    for read in splits or [data]:
        read = read.resolve()
        if out == read or read in out.parents:
            raise MaekitError(
                f"--output_dir {cfg.output_dir} is inside {read}, which is read as images: "
                "the run's files would become training data; give an --output_dir outside it"
            )


def resume_conflicts(now: dict, saved: object, resumable: frozenset[str]) -> list[str]:
    """``--flag saved -> now`` for each training flag that differs from the checkpoint's args.

    Only flags present in both are compared (older checkpoints lack newer flags); the
    ``resumable`` ones (each config field says: :func:`maekit.config.fields.resumable_fields`)
    may differ."""
    if not isinstance(saved, dict):
        return []
    out = []
    for k, v in now.items():
        if k in resumable or k not in saved:
            continue
        old = saved[k]
        if isinstance(old, tuple):
            old = list(old)
        if old != v and not (_is_num(old) and _is_num(v) and float(old) == float(v)):
            out.append(f"--{k} {old} -> {v}")
    return out


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_start(cfg: CommonConfig, out: Path, start: tuple[str, dict | None]) -> None:
    """Refuse a start that would continue a run with other settings: an auto-resume, or an
    explicit --resume of a checkpoint in this run folder, whose saved flags differ from these."""
    path, ckpt = start
    if not path:
        return
    explicit = bool(cfg.resume)
    if explicit and Path(path).resolve().parent != out.resolve():
        return  # another run's checkpoint, continued here on purpose: other flags are allowed
    saved = (ckpt or {}).get("args")
    clash = resume_conflicts(cfg.to_dict(), saved, resumable_fields(type(cfg)))
    if clash:
        raise MaekitError(
            f"--output_dir {out} holds a run with other settings than these flags "
            f"({path}): {', '.join(clash[:8])}; rerun with the checkpoint's values, or give "
            "a new --output_dir (--no_auto_resume starts over in this one, the old run moved "
            "to previous-N/)"
        )


def start_over(cfg: CommonConfig, out: Path, start: tuple[str, dict | None] | None) -> str:
    """A run that does not continue the run in ``out`` (fresh, or --resume from elsewhere):
    the old run's files move to ``out/previous-N`` so that neither its checkpoints (which a
    later auto-resume would pick) nor its log lines mix with this run's. Returns the note."""
    path = start[0] if start else ""
    if path and Path(path).resolve().parent == out.resolve():
        return ""  # continuing this folder's run
    if not holds_checkpoints(out):
        return ""  # at most a log of a run killed before its first save: cut back by fit
    events_here = cfg.log_dir is None or Path(cfg.log_dir).resolve() == out.resolve()
    dest = archive_run(out, with_events=events_here)
    return f"starting over in {out}: the previous run's files moved to {dest}" if dest else ""


def _agree(env: DistEnv, error: MaekitError | None) -> None:
    """Raise ``error`` on this rank, and a pointer to it on the others: a start-up check that
    fails on rank 0 alone must not leave the other ranks waiting in a barrier."""
    if env.distributed:
        failed = all_reduce_sum(torch.tensor(float(error is not None), device=env.device))
        if error is None and float(failed) > 0:
            raise MaekitError("another rank stopped at start-up; see its message")
    if error is not None:
        raise error


def prepare_run(cfg: CommonConfig, resumes: bool = True) -> RunContext:
    """Processes, device, the lr, seed (+rank), precision, output folder (locked for this run),
    the checkpoint to resume from (unless not ``resumes``: an evaluation), and config.json.
    ``cfg`` is validated and resolved already."""
    env = init_distributed(cfg.device)
    lr, eff = absolute_lr(cfg, env.world_size)
    if cfg.min_lr > lr:
        raise MaekitError(
            f"--min_lr {cfg.min_lr:g} is above the learning rate {lr:.3g} (--blr x effective "
            f"batch {eff} / 256, or --lr); lower --min_lr or raise --blr"
        )
    out, error = Path(cfg.output_dir), None
    if env.is_main:
        try:
            refuse_inside_data(cfg)
            out = check_output_dir(cfg.output_dir)
            lock_output_dir(out)  # held until the run ends (run()'s finally)
        except MaekitError as e:
            error = e
    _agree(env, error)
    start = None
    if resumes:
        error = None
        try:
            start = find_start(cfg, env)
            if env.is_main:
                check_start(cfg, out, start)
        except MaekitError as e:
            error = e
        _agree(env, error)
    barrier()
    seed_all(cfg.seed + env.rank, accelerators=True)
    precision = resolve_precision(cfg.amp, env.device)
    from .wandb_run import start_wandb

    if env.is_main and resumes:  # before TensorBoard opens its new event file here
        note = start_over(cfg, out, start)
        if note:
            print(note, flush=True)
    # Rank 0 opens the logs (TensorBoard, wandb) and writes config.json; a failure there (a
    # log folder it cannot write, wandb without a key) stops every rank with its one line.
    recorder, error = RunRecorder(str(out), cfg.log_dir, enabled=False), None
    if env.is_main:
        try:
            recorder = RunRecorder(str(out), cfg.log_dir, enabled=True)
            # What the flags resolved to on this machine: `--amp auto` is fp32 or bf16 by
            # hardware. The absolute lr too: --blr scales with the effective batch, which
            # --accum_iter and the process count set. Written once every check passed.
            resolved = {
                "precision": precision.name,
                "device": str(env.device),
                "world_size": env.world_size,
                "effective_batch": eff,
                "lr": lr,
                "torch": torch.__version__,
            }
            text = json.dumps({**cfg.to_dict(), "resolved": resolved}, indent=2) + "\n"
            try:
                atomic_write(out / "config.json", lambda tmp: tmp.write_text(text))
            except OSError as e:
                raise MaekitError(
                    f"could not write {out / 'config.json'} ({e.strerror or e}); free disk "
                    "space or choose another --output_dir"
                ) from e
            recorder.wandb = start_wandb(cfg, out)
        except MaekitError as e:
            recorder.close()
            error = e
    _agree(env, error)
    workers = loader_workers(cfg.num_workers)
    pin = cfg.pin_mem and env.device.type == "cuda"
    return RunContext(env, precision, recorder, out, workers, pin, lr, eff, start)


def run(recipe: Recipe) -> list[dict]:
    """Train (or, with --eval, evaluate) as ``recipe`` says; returns the per-epoch log records."""
    recipe.cfg.validate()  # the flags as given; the one validation of the run
    # The resolved config and the data: everything that can fail on user input, before any
    # process group or output exists. From here on ``cfg`` is this one frozen value.
    recipe.setup()
    cfg = recipe.cfg
    if not recipe.eval_only and cfg.warmup_epochs > cfg.epochs:
        recipe.notes.append(
            f"maekit: warning: --warmup_epochs {cfg.warmup_epochs:g} is above --epochs "
            f"{cfg.epochs}: the lr never reaches its peak (--blr/--lr); lower --warmup_epochs"
        )
    seed_all(cfg.seed, accelerators=True)  # the initial weights follow --seed (DDP: rank 0's)
    model = recipe.build_model()
    try:
        ctx = prepare_run(cfg, resumes=not recipe.eval_only)
        env = ctx.env
        if env.is_main:
            for note in recipe.notes:
                print(note, flush=True)
        if recipe.eval_only:
            model.to(env.device)
            history = recipe.evaluate_only(ctx, model)
            ctx.recorder.close()
            return history
        loader = recipe.train_loader(ctx)
        steps = steps_in_epoch(len(loader), cfg.max_train_step)
        if cfg.accum_iter > steps:  # no optimizer step would ever be taken
            raise MaekitError(
                f"--accum_iter {cfg.accum_iter} is above the {counted(steps, 'step')} of an "
                "epoch: the "
                f"optimizer would never step; use --accum_iter {max(steps, 1)} or less, or "
                "more data / a smaller --batch_size"
            )
        if env.is_main:
            for line in recipe.data_lines(loader, model):
                print(line)
        pm = parallelize(
            model, env, ctx.precision, cfg.dist_mode, cfg.grad_ckpt, cfg.compile, repr(cfg.model)
        )
        if env.is_main:  # base and actual lr, like the official
            print(
                f"base lr: {ctx.lr * 256 / ctx.effective_batch:.2e}  actual lr: {ctx.lr:.2e}  "
                f"effective batch: {ctx.effective_batch} ({cfg.batch_size} x {cfg.accum_iter} "
                f"accum x {env.world_size} procs)"
            )
        optimizer = recipe.build_optimizer(pm.bare, ctx.lr)
        trainer = Trainer(
            pm,
            optimizer,
            recipe.build_loss(),
            LoopSettings.from_config(cfg, ctx.lr),
            ctx.precision,
            env,
            ctx.recorder,
        )
        evaluate_fn = recipe.evaluator(ctx, pm)
        monitors = recipe.monitors(ctx, pm)
        history = fit(
            cfg, ctx, trainer, loader, evaluate_fn, monitors.each, recipe.checkpoint_extras()
        )
        if env.is_main:
            recipe.finish(history, monitors)
        return history
    finally:
        unlock_output_dirs()
        shutdown()
