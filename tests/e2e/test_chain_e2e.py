"""End to end: pretrain -> finetune -> linprobe under torchrun (2 CPU processes, --dist_eval);
the accuracy logged by the sharded evaluation equals a single-process --eval of the checkpoint."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.conftest import run_cli, run_cli_in_process, write_image_folder

TINY = [
    "--input_size",
    "32",
    "--patch_size",
    "8",
    "--batch_size",
    "4",
    "--num_workers",
    "0",
    "--print_freq",
    "2",
    "--warmup_epochs",
    "0",
    "--epochs",
    "1",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def labeled_folder(root: Path) -> Path:
    """3 classes; 8 train and 3 val images each: 9 val images split 5/4 across two ranks, which
    with batch 4 is 2 batches on rank 0 and 1 on rank 1 (uneven batch counts, too)."""
    write_image_folder(root / "a", classes=3, per_class=8, seed=0)
    write_image_folder(root / "b", classes=3, per_class=3, seed=1)
    (root / "a" / "train").rename(root / "train")
    (root / "b" / "train").rename(root / "val")
    return root


def single_process_eval(phase: str, data: Path, ckpt: Path, tmp: Path) -> tuple[float, float]:
    r = run_cli_in_process(
        [
            phase,
            "--eval",
            "--resume",
            str(ckpt),
            "--data_path",
            str(data),
            "--model",
            "vit_tiny_patch16",
            "--output_dir",
            str(tmp / f"eval_{phase}"),
            *TINY,
        ],
        tmp,
    )
    assert r.returncode == 0, r.stderr
    m = re.search(r"on the 9 test images: acc1 ([\d.]+)%  acc5 ([\d.]+)%", r.stdout)
    assert m, r.stdout
    return float(m.group(1)), float(m.group(2))


def test_pretrain_finetune_linprobe_under_torchrun(tmp_path: Path) -> None:
    data = labeled_folder(tmp_path / "data")
    pre = tmp_path / "pre"
    r = run_cli(
        [
            "pretrain",
            "--model",
            "mae_vit_tiny_patch16",
            "--data_path",
            str(data),
            "--output_dir",
            str(pre),
            *TINY,
        ],
        tmp_path,
        launcher=TORCHRUN,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    for phase in ("finetune", "linprobe"):
        out = tmp_path / phase
        r = run_cli(
            [
                phase,
                "--model",
                "vit_tiny_patch16",
                "--finetune",
                str(pre / "checkpoint-0.pth"),
                "--dist_eval",
                "--data_path",
                str(data),
                "--output_dir",
                str(out),
                *TINY,
            ],
            tmp_path,
            launcher=TORCHRUN,
            timeout=240,
        )
        assert r.returncode == 0, r.stderr
        assert "effective batch: 8" in r.stdout
        (log,) = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
        assert {"test_acc1", "test_acc5", "test_loss", "train_loss"} <= log.keys()
        assert (out / "checkpoint-best.pth").is_file() and (out / "checkpoint-0.pth").is_file()
        acc1, acc5 = single_process_eval(phase, data, out / "checkpoint-0.pth", tmp_path)
        # Percentages of 9 images: exact equality up to float formatting.
        assert abs(log["test_acc1"] - acc1) < 0.01 and abs(log["test_acc5"] - acc5) < 0.01, (
            phase,
            log,
            acc1,
        )
