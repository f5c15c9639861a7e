"""Graceful preemption: SIGTERM / SIGUSR1 ask the loop to stop at the next step boundary.

Cluster schedulers (SLURM ``--signal``, Kubernetes, torchrun's agent) send SIGTERM or SIGUSR1
some time before killing a job. The handler only sets a flag; the training loop finishes the
optimizer step in flight, saves a mid-epoch checkpoint and returns, and the process exits 0.
Running the same command again resumes at the next step (``--auto_resume``).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit hook before ours (see below)
import signal
import sys
import threading
from types import FrameType

SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s
)


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
            print(f"maekit: {self.signal_name} received; stopping after the current step and "
                  "saving a checkpoint", file=sys.stderr, flush=True)  # fmt: skip

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: data workers ignore SIGTERM/SIGUSR1.

    SLURM and Kubernetes signal every process of a job, data workers included. A worker killed
    by it makes the loader raise in the main process, which then cannot write its stop
    checkpoint. Ignoring the signal leaves the decision to the main process: it finishes the
    step, saves, and shuts the workers down itself.
    """
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _kill_ignoring_workers() -> None:
    """At exit, SIGKILL data workers that are still alive.

    multiprocessing's own exit hook stops daemonic children with SIGTERM and then joins them;
    a worker that ignores SIGTERM (above) would make that join wait forever, e.g. when the run
    exits on an error while a loader iterator is still referenced by the traceback. This hook
    is registered after multiprocessing's, so it runs first (atexit is last-in, first-out).
    """
    workers = [c for c in multiprocessing.active_children() if c.daemon]
    if not workers:
        return
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGCHLD"):
        # torch's loader reports a worker that dies by a signal as an error (SIGCHLD handler);
        # these deaths are the ones we cause here.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in workers:
        child.kill()
    for child in workers:
        child.join(timeout=5)


atexit.register(_kill_ignoring_workers)
