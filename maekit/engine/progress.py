"""What a run shows and records: progress bar / periodic lines, log.txt, TensorBoard.

Only rank 0 writes anything; other ranks get a silent reporter.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..errors import MaekitError


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class EpochProgress:
    """A tqdm bar on a terminal; plain periodic lines (every ``print_freq`` steps) otherwise."""

    def __init__(
        self,
        total: int,
        epoch: int,
        epochs: int,
        enabled: bool,
        print_freq: int,
        world_size: int = 1,
    ) -> None:
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.world_size = world_size  # img/s is shown for all processes together
        self.enabled = enabled
        self.print_freq = print_freq
        self.start = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(
                total=total, desc=f"epoch {epoch}/{epochs - 1}", dynamic_ncols=True, leave=True
            )

    def update(self, step: int, metrics: dict[str, float], imgs: int) -> None:
        """Called at print points; ``step`` is 0-based, ``imgs`` processed this epoch by one rank."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = imgs * self.world_size / elapsed if elapsed > 0 else 0.0
        shown = {k: f"{v:.4g}" for k, v in metrics.items()}
        shown["img/s"] = f"{rate:.1f}"
        if self.bar is not None:
            self.bar.n = step + 1
            self.bar.set_postfix(shown, refresh=True)
        else:
            eta = elapsed / (step + 1) * (self.total - step - 1)
            parts = "  ".join(f"{k}: {v}" for k, v in shown.items())
            print(
                f"Epoch [{self.epoch}] [{step + 1}/{self.total}]  {parts}  eta: {_fmt_eta(eta)}",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary_writer(log_dir: str, purge_step: int | None = None):
    """A TensorBoard SummaryWriter on ``log_dir``; a missing tensorboard package or a folder it
    cannot write is one line naming the fix (the error contract holds for the logs too)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # a dependency, so only a broken environment lacks it
        raise MaekitError(
            f"TensorBoard logging needs the tensorboard package ({e}); pip install "
            "'tensorboard>=2.15'"
        ) from e
    try:
        return SummaryWriter(log_dir=log_dir, purge_step=purge_step)
    except OSError as e:
        raise MaekitError(
            f"--log_dir {log_dir} is not writable ({e.strerror or e}); choose another folder"
        ) from e


class RunRecorder:
    """log.txt (one JSON line per epoch), TensorBoard and optionally Weights & Biases, on the
    main rank only.

    TensorBoard step axes: per-iteration scalars (``train_loss``, ``lr``, every --print_freq
    steps) at step round(1000 x fractional epoch), so 1000 = one epoch whatever the batch size;
    per-epoch values (``epoch/*``, the log.txt keys) and images at the epoch index. wandb
    gets the same tags, with ``epoch_x1000`` and ``epoch`` as their x axes.
    """

    def __init__(self, output_dir: str, log_dir: str | None, enabled: bool, wandb=None) -> None:
        self.enabled = enabled
        self.log_path = Path(output_dir) / "log.txt"
        self.tb = None
        self.wandb = wandb if enabled else None  # a wandb Run (see engine/wandb_run.py) or None
        if enabled:
            self.tb = summary_writer(log_dir or output_dir)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log({tag: value, "epoch_x1000": step})

    def image(self, tag: str, hwc, epoch: int) -> None:
        """An (H, W, 3) uint8 picture (e.g. a reconstruction grid) at the epoch index."""
        if self.tb is not None:
            self.tb.add_image(tag, hwc, epoch, dataformats="HWC")
            self.tb.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(hwc), "epoch": epoch})

    def epoch(self, stats: dict) -> None:
        if not self.enabled:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(stats) + "\n")
        if self.tb is not None:
            for k, v in stats.items():
                if k != "epoch" and isinstance(v, int | float):
                    self.tb.add_scalar(f"epoch/{k}", v, stats["epoch"])
            self.tb.flush()
        if self.wandb is not None:
            scalars = {
                f"epoch/{k}": v
                for k, v in stats.items()
                if k != "epoch" and isinstance(v, int | float)
            }
            self.wandb.log({**scalars, "epoch": stats["epoch"]})

    def resume_at(self, epoch: int, purge_step: int) -> None:
        """A run resumed at ``epoch``: cut log.txt back to the epochs before it, and have
        TensorBoard hide the step-level scalars from ``purge_step`` on (a fallback resume to an
        older checkpoint, or a kill between the log line and the save, would show them twice).
        The ``epoch/*`` scalars (x = epoch) written after the resume point stay in the event
        files; TensorBoard shows a repeated epoch's later value last."""
        if not self.enabled:
            return
        if self.log_path.is_file():
            kept = []
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line torn by a kill mid-write
                    continue
                if (
                    isinstance(record, dict)
                    and isinstance(record.get("epoch"), int)
                    and record["epoch"] < epoch
                ):
                    kept.append(line)
            text = "".join(f"{line}\n" for line in kept)
            if text != self.log_path.read_text(errors="replace"):
                from ..files import atomic_write

                atomic_write(self.log_path, lambda tmp: tmp.write_text(text))
        if self.tb is not None:
            log_dir = self.tb.log_dir
            self.tb.close()
            self.tb = summary_writer(log_dir, purge_step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
