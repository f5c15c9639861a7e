"""End to end: `maekit shard` a folder, then train from the shards under torchrun (2 processes
x 2 data workers): every sample is trained on exactly once in the epoch; fine-tuning and linear
probing read train/ and val/ shards; a run stopped mid-epoch resumes bit-identically."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from maekit.data.shards.write import write_shards
from tests.conftest import run_cli, run_cli_in_process, write_image_folder
from tests.e2e.log_shard_batches import LOG_ENV
from tests.e2e.test_crash_safety import Run, assert_bit_identical, final_weights

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TINY = [
    "--input_size",
    "32",
    "--patch_size",
    "8",
    "--batch_size",
    "4",
    "--num_workers",
    "2",
    "--print_freq",
    "2",
    "--warmup_epochs",
    "0",
    "--epochs",
    "1",
    "--device",
    "cpu",
]
# Runs the command with the shard loader's batches logged per rank (no hook in maekit itself).
LOG_BATCHES = str(Path(__file__).with_name("log_shard_batches.py"))


def test_shard_then_pretrain_two_processes_two_workers_sees_every_sample_once(
    tmp_path: Path,
) -> None:
    src = write_image_folder(tmp_path / "src", classes=2, per_class=24, size=(32, 32))
    shards = tmp_path / "shards"
    r = run_cli_in_process(["shard", str(src), str(shards), "--shard_size", "10"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "train: 48 samples (2 classes) in 5 shards of up to 10" in r.stdout

    prefix = tmp_path / "seen"
    os.environ[LOG_ENV] = str(prefix)  # run_cli passes the environment on
    try:
        out = tmp_path / "run"
        r = run_cli(
            [
                "pretrain",
                "--model",
                "mae_vit_tiny_patch16",
                "--data_path",
                str(shards),
                "--output_dir",
                str(out),
                *TINY,
            ],
            tmp_path,
            launcher=[*TORCHRUN, LOG_BATCHES],
            timeout=300,
        )
    finally:
        del os.environ[LOG_ENV]
    assert r.returncode == 0, r.stderr
    assert "data: " in r.stdout and "(48 images), 6 steps/epoch per process" in r.stdout
    seen = []
    for rank in (0, 1):
        lines = Path(f"{prefix}.rank{rank}").read_text().splitlines()
        assert len(lines) == 6  # steps: 48 samples / (2 ranks x batch 4)
        for line in lines:
            epoch, *keys = line.split()
            assert epoch == "0" and len(keys) == 4
            seen += keys
    assert sorted(seen) == [f"{i:09d}" for i in range(48)]  # each sample exactly once
    (log,) = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert log["epoch"] == 0 and "bad_images_skipped" not in log


def test_finetune_from_train_and_val_shards(tmp_path: Path) -> None:
    src = write_image_folder(tmp_path / "src", classes=3, per_class=4, size=(32, 32))
    val = write_image_folder(tmp_path / "v", classes=3, per_class=2, size=(32, 32), seed=1)
    (val / "train").rename(src / "val")
    shards = tmp_path / "shards"
    r = run_cli_in_process(["shard", str(src), str(shards), "--shard_size", "5"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "val: 6 samples (3 classes) in 2 shards" in r.stdout
    out = tmp_path / "ft"
    pattern = f"{shards}/{{split}}/shard-*.tar"
    r = run_cli(
        [
            "finetune",
            "--model",
            "vit_tiny_patch16",
            "--data_path",
            pattern,
            "--output_dir",
            str(out),
            "--dist_eval",
            *TINY,
        ],
        tmp_path,
        launcher=TORCHRUN,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "(12 train / 6 val images, 3 classes)" in r.stdout
    (log,) = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert {"test_acc1", "test_acc5", "test_loss", "train_loss"} <= log.keys()
    out = tmp_path / "lp"  # one process, the folder form of --data_path
    r = run_cli_in_process(
        [
            "linprobe",
            "--model",
            "vit_tiny_patch16",
            "--data_path",
            str(shards),
            "--output_dir",
            str(out),
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    (log,) = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert "test_acc1" in log


def test_sigterm_mid_epoch_on_shards_resumes_bit_identical(tmp_path: Path) -> None:
    """Two data workers: the resumed epoch skips the trained batches and continues exactly."""
    src = write_image_folder(tmp_path / "src", classes=2, per_class=24, size=(32, 32))
    shards = tmp_path / "shards"
    write_shards(src, shards, 7)
    args = [
        "pretrain",
        "--model",
        "mae_vit_tiny_patch16",
        "--data_path",
        str(shards),
        *TINY,
        "--epochs",
        "2",
        "--print_freq",
        "1",
        "--norm_pix_loss",
    ]
    ref = tmp_path / "ref"
    r = run_cli_in_process([*args, "--output_dir", str(ref)], tmp_path)
    assert r.returncode == 0, r.stderr

    out = tmp_path / "term"
    run = Run([*args, "--output_dir", str(out)], tmp_path)
    run.wait_for(lambda: run.saw("Epoch [1] [2/12]"))
    os.kill(
        run.proc.pid, signal.SIGTERM
    )  # the main process only: its data workers are not signalled
    assert run.finish() == 0, "".join(run.lines)
    step = torch.load(out / "checkpoint-last.pth", map_location="cpu", weights_only=True)["resume"][
        "step"
    ]
    assert 2 <= step < 12
    run = Run([*args, "--output_dir", str(out)], tmp_path)
    assert run.finish() == 0, "".join(run.lines)
    assert run.saw(f"continuing at epoch 1, step {step}")
    assert_bit_identical(final_weights(ref, 1), final_weights(out, 1))
