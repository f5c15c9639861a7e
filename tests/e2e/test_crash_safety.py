"""End to end crash safety: SIGKILL at random points (one during a save) and SIGTERM mid-epoch,
each auto-resumed, give bit-identical final weights; damaged newest checkpoints are skipped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.conftest import REPO, run_cli, run_cli_in_process, write_image_folder

TINY = [
    "--model",
    "mae_vit_tiny_patch16",
    "--input_size",
    "32",
    "--patch_size",
    "8",
    "--batch_size",
    "4",
    "--warmup_epochs",
    "1",
    "--print_freq",
    "1",
    "--blr",
    "1e-3",
    "--norm_pix_loss",
]


# `python -c` bootstrap for a run whose checkpoint writes are slow (a kill can land inside
# one): maekit's torch.save writer is wrapped with a sleep, then the CLI runs as `maekit` would.
SLOW_SAVE = """
import sys, time
import maekit.files as files
from maekit.cli import main
delay, write = float(sys.argv.pop(1)), files._torch_save
def slow(obj, tmp):
    write(obj, tmp)
    time.sleep(delay)
files._torch_save = slow
sys.exit(main())
"""


class Run:
    """A `maekit` process whose stdout lines are collected by a thread (for kill timing).
    ``save_delay``: seconds every checkpoint write waits with its temp file written."""

    def __init__(self, args: list[str], cwd: Path, save_delay: float | None = None) -> None:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        launch = ["-m", "maekit"] if save_delay is None else ["-c", SLOW_SAVE, str(save_delay)]
        self.proc = subprocess.Popen(
            [sys.executable, *launch, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, predicate, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError("process ended early:\n" + "".join(self.lines))
            time.sleep(0.005)
        self.kill()
        raise AssertionError("timed out waiting:\n" + "".join(self.lines))

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc


def final_weights(out: Path, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(out / f"checkpoint-{epoch}.pth", map_location="cpu", weights_only=True)[
        "model"
    ]


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_sigkill_at_random_points_auto_resumes_bit_identical(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=12)  # 24 images: 6 steps per epoch
    args = ["pretrain", "--data_path", str(data), "--epochs", "3", "--num_workers", "1", *TINY]
    ref = tmp_path / "ref"
    r = run_cli_in_process([*args, "--output_dir", str(ref)], tmp_path)
    assert r.returncode == 0, r.stderr

    out = tmp_path / "killed"
    cmd = [*args, "--output_dir", str(out)]
    rnd = random.Random(1234)
    slow_save = 30  # seconds
    kills = 0

    def saving() -> bool:
        return any(out.glob(".checkpoint-*.tmp"))

    # 1: killed while writing the very first checkpoint (a temp file, never a checkpoint).
    run = Run(cmd, tmp_path, slow_save)
    run.wait_for(saving)
    run.kill()
    run.finish()
    kills += 1
    assert not list(out.glob("checkpoint-*.pth"))
    # 2: killed at a random point of epoch 1 (epoch 0 was saved).
    run = Run(cmd, tmp_path)
    run.wait_for(lambda: run.saw("Epoch [1]"))
    time.sleep(rnd.uniform(0.0, 0.5))
    run.kill()
    run.finish()
    kills += 1
    # 3: killed while replacing checkpoint-last.pth after epoch 1: the old one must survive.
    run = Run(cmd, tmp_path, slow_save)
    run.wait_for(lambda: run.saw("auto-resumed"))
    run.wait_for(saving)
    run.kill()
    run.finish()
    kills += 1
    ckpt = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] in (0, 1)  # the previous save, complete and loadable
    # 4: killed at a random point after resuming.
    run = Run(cmd, tmp_path)
    run.wait_for(lambda: run.saw("auto-resumed"))
    time.sleep(rnd.uniform(0.0, 1.0))
    run.kill()
    run.finish()
    kills += 1
    # 5: runs to the end.
    run = Run(cmd, tmp_path)
    assert run.finish() == 0, "".join(run.lines)
    assert run.saw("auto-resumed from")
    assert kills >= 3
    assert not list(out.glob(".checkpoint-*.tmp"))
    assert_bit_identical(final_weights(ref, 2), final_weights(out, 2))


def test_sigterm_mid_epoch_saves_exits_0_and_resumes_bit_identical(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=24)  # 48 images: 12 steps per epoch
    args = ["pretrain", "--data_path", str(data), "--epochs", "2", "--num_workers", "0", *TINY]
    ref = tmp_path / "ref"
    r = run_cli_in_process([*args, "--output_dir", str(ref)], tmp_path)
    assert r.returncode == 0, r.stderr

    # SIGTERM goes to the whole process group, data workers included (as SLURM and Kubernetes
    # signal every process of a job): the workers must not die of it before the stop checkpoint.
    # The reference ran without workers: per-sample seeding makes the worker count irrelevant.
    args = [a if a != "0" or args[i - 1] != "--num_workers" else "2" for i, a in enumerate(args)]
    out = tmp_path / "term"
    run = Run([*args, "--output_dir", str(out)], tmp_path)
    run.wait_for(lambda: run.saw("Epoch [1] [1/12]"))
    run.kill(signal.SIGTERM)
    assert run.finish() == 0, "".join(run.lines)
    assert run.saw("SIGTERM received")
    ckpt = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert ckpt["resume"]["epoch"] == 1 and 1 <= ckpt["resume"]["step"] < 12, ckpt["resume"]
    assert ckpt["epoch"] == 0  # the last complete epoch, as in official checkpoints
    step = ckpt["resume"]["step"]
    assert run.saw(f"at epoch 1, step {step}")

    run = Run([*args, "--output_dir", str(out)], tmp_path)
    assert run.finish() == 0, "".join(run.lines)
    assert run.saw(f"continuing at epoch 1, step {step}")
    assert_bit_identical(final_weights(ref, 1), final_weights(out, 1))
    epochs = [line for line in (out / "log.txt").read_text().splitlines()]
    assert len(epochs) == 2  # epoch 0 once, epoch 1 once (logged when it completed)


def test_auto_resume_skips_a_truncated_newest_checkpoint(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=4)  # 8 images: 2 steps per epoch
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data_path",
        str(data),
        "--num_workers",
        "0",
        "--save_freq",
        "1",
        "--output_dir",
        str(out),
        *TINY,
    ]
    r = run_cli_in_process([*args, "--epochs", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("checkpoint-last.pth", "checkpoint-1.pth"):  # both name epoch 1: damage both
        p = out / name
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    r = run_cli_in_process([*args, "--epochs", "3"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "skipping damaged checkpoint" in r.stderr
    assert f"auto-resumed from {out / 'checkpoint-0.pth'}: continuing at epoch 1" in r.stdout
    ckpt = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2
    # log.txt was cut back to the resume point: each epoch exactly once (not [0, 1, 1, 2]).
    log = [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()]
    assert log == [0, 1, 2]


def test_finished_run_is_not_trained_again(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data_path",
        str(data),
        "--num_workers",
        "0",
        "--epochs",
        "1",
        "--output_dir",
        str(out),
        *TINY,
    ]
    assert run_cli_in_process(args, tmp_path).returncode == 0
    before = (out / "checkpoint-0.pth").stat().st_mtime_ns
    r = run_cli_in_process(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout and "raise --epochs" in r.stdout
    assert (out / "checkpoint-0.pth").stat().st_mtime_ns == before
    r = run_cli_in_process(
        [*args, "--no_auto_resume"], tmp_path
    )  # explicitly starting over still works
    assert r.returncode == 0, r.stderr and "auto-resumed" not in r.stdout


def test_bad_images_are_skipped_counted_exactly_and_training_completes(tmp_path: Path) -> None:
    from tests.data.test_robust_sampling import _save_bad_and_odd_files

    flat = tmp_path / "flat"
    flat.mkdir()
    bad, odd = _save_bad_and_odd_files(flat)
    rng = np.random.default_rng(1)
    for i in range(24 - len(bad) - len(odd)):  # 24 files: 6 full batches, every file visited
        Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(flat / f"g{i}.png")
    out = tmp_path / "run"
    r = run_cli(
        [
            "pretrain",
            "--data_path",
            str(flat),
            "--epochs",
            "2",
            "--num_workers",
            "1",
            "--max_bad_frac",
            "0.5",
            "--output_dir",
            str(out),
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [rec["bad_images_skipped"] for rec in log] == [len(bad), len(bad)]
    assert "4 unreadable images skipped" in r.stdout
    for name in bad:
        assert name in r.stderr  # each named in a warning


def test_too_many_bad_images_stop_with_a_clear_error(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):
        Image.fromarray(np.full((20, 20, 3), 9 * i, np.uint8)).save(flat / f"g{i}.png")
        (flat / f"b{i}.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "run"
    r = run_cli_in_process(
        [
            "pretrain",
            "--data_path",
            str(flat),
            "--epochs",
            "1",
            "--num_workers",
            "0",
            "--output_dir",
            str(out),
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 2
    assert "could not be read" in r.stderr and "--max_bad_frac" in r.stderr
    assert "Traceback" not in r.stderr
