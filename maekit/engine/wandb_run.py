"""Optional Weights & Biases logging (``--log_wandb``): the run the recorder mirrors to.

wandb is an optional extra (``pip install maekit[wandb]``); ``WANDB_MODE=offline`` writes the
run under ``OUTPUT_DIR/wandb/`` without a network or an account.
"""

from __future__ import annotations

from pathlib import Path

from ..config import CommonConfig
from ..errors import MaekitError


def start_wandb(cfg: CommonConfig, output_dir: Path):
    """A wandb Run for rank 0 with the config attached and the x axes defined, or None
    without --log_wandb."""
    if not getattr(cfg, "log_wandb", False):
        return None
    try:
        import wandb
    except ImportError as e:
        raise MaekitError(
            "--log_wandb needs wandb: pip install 'maekit[wandb]' (or drop --log_wandb)"
        ) from e
    try:
        run = wandb.init(
            project=cfg.wandb_project,
            name=cfg.wandb_name or output_dir.resolve().name,
            dir=str(output_dir),
            config=cfg.to_dict(),
        )
    except Exception as e:  # wandb's UsageError (no key), CommError (no network), OSError, ...
        raise MaekitError(init_failure(e)) from e
    # The same x axes as TensorBoard: per-iteration scalars at 1000 x the fractional epoch,
    # per-epoch scalars and images at the epoch.
    run.define_metric("epoch_x1000")
    run.define_metric("epoch")
    for tag in ("train_loss", "lr"):
        run.define_metric(tag, step_metric="epoch_x1000")
    run.define_metric("epoch/*", step_metric="epoch")
    run.define_metric("reconstruction", step_metric="epoch")
    return run


def init_failure(e: BaseException) -> str:
    """One line for a failed ``wandb.init``: what wandb said (its first line) and the ways on:
    log in, run offline, or drop the flag."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    said = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return (
        f"--log_wandb: wandb could not start a run ({said}); run `wandb login` (or set "
        "WANDB_API_KEY), or log without an account with WANDB_MODE=offline, or drop --log_wandb"
    )
