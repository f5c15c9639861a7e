"""`maekit pretrain --on_nonfinite rollback` through the CLI on a tiny MAE (issue 30, item 5):
an injected non-finite update and an injected loss spike are rolled back and the run exits 0,
naming the step and the skipped batches; a run stopped by SIGTERM after a recovery resumes to
the uninterrupted run's weights bit for bit; more recoveries than allowed exit 2 in one line.

The faults are injected by monkeypatching the trainer's step (test-only; nothing in maekit
knows of them), keyed by (epoch, step) so that a resumed run meets the same ones."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from maekit.engine.trainer import Trainer
from tests.conftest import assert_one_error_line, run_cli_in_process, write_image_folder
from tests.e2e.test_crash_safety import TINY, assert_bit_identical, final_weights

ROLLBACK = ["--on_nonfinite", "rollback", "--print_freq", "2"]


@pytest.fixture
def faults(monkeypatch) -> dict[tuple[int, int], str]:
    """(epoch, step) -> 'update' (the update writes NaN into the weights), 'spike' (the loss
    x1000), 'nan' (a NaN loss) or 'term' (SIGTERM to this process before the step)."""
    table: dict[tuple[int, int], str] = {}
    forward_backward, optimizer_step = Trainer.forward_backward_step, Trainer.optimizer_step

    def fb(self, samples, targets, update, epoch, step):
        fault = table.get((epoch, step))
        if fault == "term":
            signal.raise_signal(signal.SIGTERM)
        if fault in ("spike", "nan"):
            clean, factor = self.loss_fn, 1000.0 if fault == "spike" else float("nan")
            self.loss_fn = lambda m, x, y: clean(m, x, y) * factor
            try:
                return forward_backward(self, samples, targets, update, epoch, step)
            finally:
                self.loss_fn = clean
        return forward_backward(self, samples, targets, update, epoch, step)

    def opt_step(self, epoch, step):
        optimizer_step(self, epoch, step)
        if table.get((epoch, step)) == "update":
            with torch.no_grad():
                for p in self.params:
                    p.fill_(float("nan"))

    monkeypatch.setattr(Trainer, "forward_backward_step", fb)
    monkeypatch.setattr(Trainer, "optimizer_step", opt_step)
    return table


def pretrain(tmp_path: Path, out: str, *extra: str):
    data = tmp_path / "data"
    if not data.exists():
        write_image_folder(data, per_class=12)  # 24 images: 6 steps per epoch
    args = ["pretrain", "--data_path", str(data), "--num_workers", "0", "--device", "cpu"]
    args += [*TINY, "--epochs", "2", *ROLLBACK, "--output_dir", str(tmp_path / out), *extra]
    return run_cli_in_process(args, tmp_path)


def test_a_non_finite_update_and_a_spike_recover_and_exit_0(tmp_path, faults):
    faults.update({(0, 3): "update", (1, 2): "spike"})
    r = pretrain(tmp_path, "run", "--spike_factor", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "recovery 1: non-finite update (weights or optimizer state) at epoch 0, step 3; "
        "rolled back to the state before epoch 0, step 2 and skipped its 2 batches (steps 2-3)"
    ) in r.stdout
    assert "recovery 2: loss spike (" in r.stdout
    assert "at epoch 1, step 2; rolled back to the state before epoch 1, step 2" in r.stdout
    w = final_weights(tmp_path / "run", 1)
    assert all(torch.isfinite(v).all() for v in w.values())


def test_sigterm_after_a_recovery_resumes_bit_identical(tmp_path, faults):
    faults.update({(0, 1): "nan", (1, 4): "update"})
    assert pretrain(tmp_path, "ref").returncode == 0
    faults[(1, 0)] = "term"  # the stop waits for the check point at step 1
    r = pretrain(tmp_path, "cut")
    assert r.returncode == 0 and "stopped by SIGTERM at epoch 1, step 2" in r.stdout, r.stdout
    del faults[(1, 0)]
    r = pretrain(tmp_path, "cut")
    assert r.returncode == 0 and "continuing at epoch 1, step 2" in r.stdout, r.stdout
    # the one after the resume point: the NaN update at step 4 shows in step 5's loss
    assert "recovery 2: non-finite loss at epoch 1, step 5; rolled back" in r.stdout
    assert "loss: nan" not in r.stdout  # a window rolled back in full prints no loss
    assert_bit_identical(final_weights(tmp_path / "ref", 1), final_weights(tmp_path / "cut", 1))


def test_one_recovery_too_many_exits_2_with_one_line(tmp_path, faults):
    faults.update({(0, 1): "nan", (0, 3): "nan"})
    r = pretrain(tmp_path, "run", "--max_recoveries", "1")
    assert_one_error_line(r, "pretrain", "more than --max_recoveries 1 recoveries")
    assert "non-finite loss at epoch 0, step 3" in r.stderr


def test_spike_factor_without_rollback_is_refused_in_one_line(tmp_path):
    data = write_image_folder(tmp_path / "data", per_class=2)
    args = ["pretrain", "--data_path", str(data), *TINY, "--spike_factor", "5"]
    r = run_cli_in_process([*args, "--output_dir", str(tmp_path / "o")], tmp_path)
    assert_one_error_line(r, "pretrain", "--spike_factor needs --on_nonfinite rollback")
