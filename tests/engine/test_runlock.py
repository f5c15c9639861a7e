"""One run per output folder: the lock is refused to a second process, with the holder's pid,
and released when the holder dies (however it dies)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maekit.engine.runlock import LOCK_NAME, lock_output_dir, unlock_output_dirs
from maekit.errors import MaekitError
from tests.conftest import REPO

HOLD = "from maekit.engine.runlock import lock_output_dir; import sys, time; lock_output_dir(sys.argv[1]); print('locked', flush=True); time.sleep(120)"


def hold_lock(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(
            MaekitError, match=rf"in use by another maekit run \(pid {holder.pid}\)"
        ):
            lock_output_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead holder's lock: no stale lock to clean up by hand.
    assert (tmp_path / LOCK_NAME).exists()
    lock_output_dir(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_the_same_process_may_start_runs_in_its_own_folder_again(tmp_path):
    lock_output_dir(tmp_path)
    lock_output_dir(tmp_path)  # e.g. a notebook running two phases into one folder in turn


def test_a_run_that_ended_in_this_process_leaves_the_folder_to_the_next(tmp_path):
    """A notebook (or test) that ran a phase does not hold its folder after the run."""
    from tests.conftest import run_cli_in_process, write_image_folder

    data = write_image_folder(tmp_path / "data", per_class=2, size=(32, 32))
    out = tmp_path / "run"
    argv = ["pretrain", "--data_path", str(data), "--output_dir", str(out), "--epochs", "1"]
    tiny = ["--model", "mae_vit_tiny_patch16", "--input_size", "32", "--patch_size", "8"]
    opts = ["--batch_size", "2", "--num_workers", "0", "--device", "cpu", "--warmup_epochs", "0"]
    r = run_cli_in_process([*argv, *tiny, *opts], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "checkpoint-0.pth").exists()
    holder = hold_lock(out)  # another process takes it at once
    holder.kill()
    holder.wait()
    lock_output_dir(tmp_path)
    unlock_output_dirs()
    holder = hold_lock(tmp_path)
    holder.kill()
    holder.wait()


def test_prepare_run_takes_the_lock_before_writing_config(tmp_path):
    from maekit.config import PretrainConfig
    from maekit.engine.run import prepare_run

    out = tmp_path / "run"
    out.mkdir()
    holder = hold_lock(out)
    try:
        cfg = PretrainConfig(output_dir=str(out), device="cpu", num_workers=0, batch_size=4)
        t = time.monotonic()
        with pytest.raises(MaekitError, match=f"pid {holder.pid}"):
            prepare_run(cfg)
        assert time.monotonic() - t < 30  # refused at once, not waited on
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
