"""RunRecorder.resume_at: log.txt cut back to the epochs before the resume point, TensorBoard's
step-level scalars hidden from the resume point on (nothing shown twice)."""

from __future__ import annotations

import json

from maekit.engine.progress import RunRecorder


def test_resume_cuts_log_and_purges_tensorboard_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = RunRecorder(str(tmp_path), None, enabled=True)
    for epoch in range(3):
        rec.scalar("train_loss", 1.0 / (epoch + 1), (epoch + 1) * 1000)
        rec.epoch({"epoch": epoch, "train_loss": 1.0 / (epoch + 1)})
    with open(tmp_path / "log.txt", "a") as f:
        f.write('{"epoch": 3, "tr')  # torn by a kill
    rec.resume_at(1, 1 * 1000 + 1)  # fallback resume: epoch 1 again
    rec.scalar("train_loss", 0.25, 2000)
    rec.epoch({"epoch": 1, "train_loss": 0.25})
    rec.close()

    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert epochs == [0, 1]
    acc = EventAccumulator(str(tmp_path), purge_orphaned_data=True)
    acc.Reload()
    steps = [(e.step, round(e.value, 3)) for e in acc.Scalars("train_loss")]
    assert steps == [(1000, 1.0), (2000, 0.25)]  # 2000/0.5 and 3000/0.333 purged
