"""Graceful preemption: SIGTERM / SIGUSR1 ask the loop to stop at the next step boundary.

Cluster schedulers (SLURM ``--signal``, Kubernetes, torchrun's agent) send SIGTERM or SIGUSR1
some time before killing a job. The handler only sets a flag; the training loop finishes the
optimizer step in flight, saves a mid-epoch checkpoint and returns, and the process exits 0.
Running the same command again resumes at the next step (``--auto_resume``).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from ..data.workers import STOP_SIGNALS as SIGNALS


class StopRequest:
    """A flag set by SIGTERM/SIGUSR1 while installed (a context manager; main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.requested:
            self.requested = True
            self.signal_name = signal.Signals(signum).name
            print(
                f"maekit: {self.signal_name} received; stopping after the current step and "
                "saving a checkpoint",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
