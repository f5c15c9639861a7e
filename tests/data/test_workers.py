"""Data workers ignore SIGTERM/SIGUSR1 (the main process decides when to stop), yet a process
that exits with live workers - an error raised while a loader iterator is still referenced -
exits at once and quietly instead of waiting forever on workers that ignore SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import torch
    from torch.utils.data import DataLoader, Dataset
    from maekit.data.workers import ignore_stop_signals

    class Stuck(Dataset):  # item 0 fails, the rest block forever
        def __len__(self):
            return 8
        def __getitem__(self, i):
            if i == 0:
                raise ValueError("bad sample")
            time.sleep(3600)

    it = iter(DataLoader(Stuck(), batch_size=1, num_workers=2, worker_init_fn=ignore_stop_signals))
    pids = [w.pid for w in it._workers]
    print(" ".join(map(str, pids)), flush=True)
    def ignores_sigterm(pid):  # worker_init_fn has run (Linux: SigIgn bit of SIGTERM)
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(l.split()[1], 16) for l in f if l.startswith("SigIgn:"))
        return mask >> (signal.SIGTERM - 1) & 1
    deadline = time.time() + 30
    while not all(ignores_sigterm(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    # the workers ignore a job-wide SIGTERM...
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    assert all(w.is_alive() for w in it._workers), "a worker died of SIGTERM"
    try:
        next(it)
    except ValueError as e:
        kept = e  # the traceback keeps the iterator (and its workers) alive until exit
        print("error: bad sample", file=sys.stderr)
        sys.exit(2)
    """
)


@pytest.mark.slow
def test_exit_with_live_workers_that_ignore_sigterm_is_prompt_and_quiet(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: bad sample", r.stderr
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 2
    for pid in pids:  # no worker outlives the run
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


def test_loader_workers_are_capped_at_the_cpus_this_process_may_use():
    from maekit.data.workers import loader_workers, usable_cpus

    cpus = usable_cpus()
    assert 1 <= cpus <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert cpus == len(os.sched_getaffinity(0))
    assert loader_workers(0) == 0 and loader_workers(1) == 1
    assert loader_workers(10**6) == cpus
