"""Automatic recovery from a bad step (``--on_nonfinite rollback``): roll back, skip, go on.

The loop checks its state at *check points*: the print points (``--print_freq``, where the
loss is read from the device anyway) that fall on an optimizer-update boundary, and the last
step of every epoch. A check all-reduces the per-step losses since the previous check point
and the count of non-finite weights / optimizer-state tensors, so every rank decides alike:

- all finite and no loss above ``--spike_factor`` x the mean of the recent good losses: the
  state is good; it is copied into the in-memory :class:`Snapshot` (the rollback target);
- otherwise the model, optimizer and grad scaler are restored from the snapshot and the
  batches since it are skipped (their updates discarded; the data goes on with the next batch,
  the random streams are not rewound). More than ``--max_recoveries`` within
  ``--recovery_window`` steps stop the run with one line.

Everything a check decides depends on the losses and the step index only, and the recovery
history (recent losses, the steps of past recoveries) is saved in every checkpoint: a resumed
run makes the same decisions as the uninterrupted one, to the bit. A stop request waits for
the next check point, so that the resumed run starts from a state the check passed.

Memory: one copy of the trained weights, the buffers and the optimizer state on the training device (AdamW:
about 12 bytes per parameter; under fsdp each rank keeps its shard). Time: one device copy of
that state per check point.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch

from ..config import CommonConfig
from ..errors import MaekitError

SPIKE_HISTORY = 100  # good per-step losses the spike threshold averages over
SPIKE_MIN_HISTORY = 3  # no spike is called before this many good losses are known


class TooManyRecoveries(MaekitError):
    pass


@dataclass(frozen=True)
class RecoverySettings:
    """The ``--on_nonfinite rollback`` flags (absent: today's clean stop)."""

    spike_factor: float | None = None
    max_recoveries: int = 3
    window: int = 1000  # steps (loader batches, over the whole run)
    lr_scale: float = 1.0  # lr factor for ``window`` steps after a recovery

    @classmethod
    def from_config(cls, cfg: CommonConfig) -> RecoverySettings | None:
        if cfg.on_nonfinite != "rollback":
            return None
        return cls(cfg.spike_factor, cfg.max_recoveries, cfg.recovery_window, cfg.recovery_lr_scale)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (fsdp), which shares its storage; plain tensors as they are."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


class Snapshot:
    """The last good trained parameters, module buffers (e.g. BatchNorm statistics), optimizer
    and grad-scaler state, in buffers allocated once and copied into at every check point.
    Frozen parameters (linear probing's encoder) are not copied: nothing changes them."""

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.buffers: list[torch.Tensor] = []
        self.opt: list[dict | None] = []  # per parameter: its optimizer state (None: not yet)
        self.scaler: dict | None = None

    @torch.no_grad()
    def capture(
        self,
        params: list[torch.Tensor],
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
    ) -> None:
        """Copy the state in (``params``: the optimizer's; ``module``: for its buffers)."""
        live = [_local(p.detach()) for p in params]
        bufs = [_local(b) for b in module.buffers()]
        if len(self.params) != len(live):
            self.params = [p.clone() for p in live]
            self.buffers = [b.clone() for b in bufs]
        else:
            torch._foreach_copy_(self.params, live)
            for mine, b in zip(self.buffers, bufs, strict=True):
                mine.copy_(b)
        if len(self.opt) != len(params):
            self.opt = [None] * len(params)
        for i, p in enumerate(params):
            st = optimizer.state.get(p)
            if not st:
                self.opt[i] = None
                continue
            mine = self.opt[i]
            if mine is None or mine.keys() != st.keys():
                mine = self.opt[i] = {}
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    v = _local(v)
                    if isinstance(mine.get(k), torch.Tensor) and mine[k].shape == v.shape:
                        mine[k].copy_(v)
                    else:
                        mine[k] = v.clone()
                else:
                    mine[k] = v
        self.scaler = scaler.state_dict() if scaler.is_enabled() else None

    @torch.no_grad()
    def restore(
        self,
        params: list[torch.Tensor],
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
    ) -> None:
        """Copy the state back (the same ``params`` and ``module`` as captured); no gradients."""
        torch._foreach_copy_([_local(p.detach()) for p in params], self.params)
        for b, mine in zip(module.buffers(), self.buffers, strict=True):
            _local(b).copy_(mine)
        for p, mine in zip(params, self.opt, strict=True):
            if mine is None:  # no step had been taken for it: the state starts afresh
                optimizer.state.pop(p, None)
                continue
            st = optimizer.state[p]
            for k, v in mine.items():
                if isinstance(v, torch.Tensor) and isinstance(st.get(k), torch.Tensor):
                    _local(st[k]).copy_(v)
                elif isinstance(v, torch.Tensor):
                    st[k] = v.clone()
                else:
                    st[k] = v
        if self.scaler is not None:
            scaler.load_state_dict(self.scaler)
        for p in params:
            p.grad = None

    def nbytes(self) -> int:
        tensors = self.params + self.buffers
        tensors += [v for st in self.opt if st for v in st.values() if isinstance(v, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class RecoveryState:
    """What a resumed run needs to decide as the uninterrupted one did (saved in checkpoints)."""

    history: deque = field(default_factory=lambda: deque(maxlen=SPIKE_HISTORY))
    recoveries: list[int] = field(default_factory=list)  # global steps of past recoveries
    skipped_batches: int = 0  # over the whole run
    total: int = 0  # recoveries over the whole run

    def as_dict(self) -> dict:
        return {
            "history": [float(x) for x in self.history],
            "recoveries": list(self.recoveries),
            "skipped_batches": self.skipped_batches,
            "total": self.total,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RecoveryState:
        state = cls()
        state.history.extend(float(x) for x in d.get("history", []))
        state.recoveries = [int(x) for x in d.get("recoveries", [])]
        state.skipped_batches = int(d.get("skipped_batches", 0))
        state.total = int(d.get("total", 0))
        return state


class Recovery:
    """One run's rollback logic: the snapshot, the pending losses since it, the decisions."""

    def __init__(self, settings: RecoverySettings) -> None:
        self.settings = settings
        self.state = RecoveryState()
        self.snapshot = Snapshot()
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) since it
        self.since = 0  # the epoch's first step after the snapshot
        self.reported = False  # the snapshot's size was printed

    def lr_factor(self, global_step: int) -> float:
        """``--recovery_lr_scale`` within ``--recovery_window`` steps after a recovery."""
        s = self.settings
        if s.lr_scale != 1.0 and any(
            r <= global_step < r + s.window for r in self.state.recoveries
        ):
            return s.lr_scale
        return 1.0

    def verdict(self, losses: list[float], weights_bad: bool) -> tuple[str, int | None]:
        """('', None) when the state is good, else (what is wrong, the index of the offending
        loss or None) for the log line."""
        bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
        if bad:
            return "non-finite loss", bad[0]
        if weights_bad:
            return "non-finite update (weights or optimizer state)", None
        f, hist = self.settings.spike_factor, self.state.history
        if f is not None and len(hist) >= SPIKE_MIN_HISTORY and losses:
            mean = sum(hist) / len(hist)
            worst = max(range(len(losses)), key=losses.__getitem__)
            if losses[worst] > f * mean:
                return (
                    f"loss spike ({losses[worst]:.4g} > --spike_factor {f:g} x the recent mean "
                    f"{mean:.4g})",
                    worst,
                )
        return "", None

    def recovered(self, global_step: int, where: str) -> None:
        """Count a recovery; raise when there were more than --max_recoveries in the window."""
        s = self.settings
        self.state.recoveries.append(global_step)
        recent = [r for r in self.state.recoveries if r > global_step - s.window]
        self.state.recoveries = recent  # older ones no longer count (and need no saving)
        if len(recent) > s.max_recoveries:
            raise TooManyRecoveries(
                f"more than --max_recoveries {s.max_recoveries} recoveries within "
                f"--recovery_window {s.window} steps (the last: {where}); training stopped, the "
                "last saved checkpoint is untouched; try a lower --blr or --clip_grad, or raise "
                "--max_recoveries"
            )
