"""Data-loader worker processes: how many a loader gets, how they meet a job's stop signal, and
that none outlives the run."""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit hook before ours (see below)
import os
import signal
import threading

import torch
from torch.utils.data import DataLoader

# What cluster schedulers (SLURM ``--signal``, Kubernetes, torchrun's agent) send some time
# before killing a job; :mod:`maekit.engine.preemption` turns them into a graceful stop.
STOP_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s
)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask under taskset, SLURM or a container's
    cpuset), which can be fewer than the machine's ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """``--num_workers`` capped at the usable CPUs: more workers than CPUs only compete."""
    return min(requested, usable_cpus())


class _HeldInterrupt:
    """Hold Ctrl-C (SIGINT) while a loader forks its workers, and raise it once they are up.

    A fork runs the at-fork hooks (logging's ``_releaseLock`` and others); a KeyboardInterrupt
    raised inside one is printed as "Exception ignored" and lost, so a Ctrl-C in the second or
    so that workers take to start was swallowed and the run trained on (issue 29, case 9). Here
    the handler only notes the signal; the interrupt is raised in ordinary code afterwards.
    Main thread only, and only while the default Python handler is installed.
    """

    def __init__(self) -> None:
        self.caught = False
        self._previous = None

    def _note(self, _signum, _frame) -> None:
        self.caught = True

    def __enter__(self) -> _HeldInterrupt:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if self.caught and exc_type is None:
            raise KeyboardInterrupt


class _Loader(DataLoader):
    """A DataLoader whose worker start does not lose a Ctrl-C (see :class:`_HeldInterrupt`)."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        with _HeldInterrupt():
            return super().__iter__()


def _start_worker(worker_id: int) -> None:
    """``worker_init_fn``: the worker forked while :class:`_HeldInterrupt` was installed gets
    Python's default Ctrl-C back (torch's worker loop ends quietly on KeyboardInterrupt), and
    ignores the job's stop signals (:func:`ignore_stop_signals`)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ignore_stop_signals(worker_id)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: data workers ignore SIGTERM/SIGUSR1.

    SLURM and Kubernetes signal every process of a job, data workers included. A worker killed
    by it makes the loader raise in the main process, which then cannot write its stop
    checkpoint. Ignoring the signal leaves the decision to the main process: it finishes the
    step, saves, and shuts the workers down itself.
    """
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def make_loader(
    dataset: torch.utils.data.Dataset,
    *,
    num_workers: int,
    seed: int = 0,
    pin_memory: bool = False,
    persistent: bool = False,
    **kwargs,
) -> DataLoader:
    """The one way maekit builds a torch ``DataLoader``, so every loader keeps two rules:

    - workers ignore the job-wide stop signals (:func:`ignore_stop_signals`): the main process
      decides when to stop and saves first;
    - a Ctrl-C while the workers start is not lost (:class:`_HeldInterrupt`);
    - the loader has its own random generator (seeded with ``seed``): making an iterator draws
      a worker base seed, and from the global torch RNG that would shift the model's stream
      (masking, drop path), which resume restores exactly.

    ``kwargs`` are the remaining ``DataLoader`` arguments (batch size or sampler, collate).
    """
    return _Loader(
        dataset,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent and num_workers > 0,
        worker_init_fn=_start_worker,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def _kill_ignoring_workers() -> None:
    """At exit, SIGKILL data workers that are still alive.

    multiprocessing's own exit hook stops daemonic children with SIGTERM and then joins them;
    a worker that ignores SIGTERM (:func:`ignore_stop_signals`) would make that join wait
    forever, e.g. when the run exits on an error while a loader iterator is still referenced by
    the traceback. This hook is registered after multiprocessing's, so it runs first (atexit is
    last-in, first-out).
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
