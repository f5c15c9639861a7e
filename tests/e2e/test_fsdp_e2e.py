"""End to end: `--dist_mode fsdp` under torchrun (2 CPU processes, gloo).

Checkpoints are full and plain, so training moves freely between fsdp, ddp and one process:
an epoch under fsdp followed by one under ddp (and the reverse) ends with the weights of two
ddp epochs, with --accum_iter 2 and --clip_grad on.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import torch

from tests.conftest import run_cli, run_cli_in_process, write_image_folder
from tests.e2e.test_chain_e2e import labeled_folder

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
PRE = [
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
    "--num_workers",
    "0",
    "--print_freq",
    "2",
    "--blr",
    "1e-3",
    "--accum_iter",
    "2",
    "--clip_grad",
    "0.5",
    "--device",
    "cpu",
    "--amp",
    "none",
]
# fp32 reduction order differs between all-reduce and reduce-scatter. fp32 is pinned: under
# --amp auto a CPU with AMX trains in bf16 (so did one with AVX-512 BF16 before that rule),
# where fsdp's bf16 parameter policy and ddp's autocast round differently (and Adam's first
# step turns any flipped gradient sign into a 2 x lr difference): no 1e-5 agreement there.
TOL = 1e-5


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def pretrain(data: Path, out: Path, mode: str, epochs: int, tmp: Path, procs: int = 2):
    args = [
        "pretrain",
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        "--epochs",
        str(epochs),
        *PRE,
    ]
    if procs == 2:
        args += ["--dist_mode", mode]
        r = run_cli(args, tmp, launcher=TORCHRUN, timeout=300)
    else:
        r = run_cli_in_process(args, tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_fsdp_and_ddp_epochs_interchange_and_resume_in_one_process(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", classes=2, per_class=16, size=(36, 36))
    ddp = tmp_path / "ddp"
    pretrain(data, ddp, "ddp", 2, tmp_path)
    reference = weights(ddp / "checkpoint-last.pth")

    # fsdp epoch 0, then ddp epoch 1 (auto-resume from the fsdp checkpoint).
    mixed = tmp_path / "fsdp_then_ddp"
    r = pretrain(data, mixed, "fsdp", 1, tmp_path)
    assert "training mae_vit_tiny_patch16 on cpu x 2" in r.stdout
    fsdp_ckpt = torch.load(mixed / "checkpoint-0.pth", map_location="cpu", weights_only=True)
    assert all(type(t) is torch.Tensor for t in fsdp_ckpt["model"].values())  # plain, full tensors
    assert max_diff(fsdp_ckpt["model"], weights(ddp / "checkpoint-0.pth")) <= TOL
    one_proc = tmp_path / "fsdp_then_one_process"
    shutil.copytree(mixed, one_proc)
    r = pretrain(data, mixed, "ddp", 2, tmp_path)
    assert "auto-resumed from" in r.stdout and "continuing at epoch 1" in r.stdout
    assert max_diff(weights(mixed / "checkpoint-last.pth"), reference) <= TOL

    # ddp epoch 0, then fsdp epoch 1.
    other = tmp_path / "ddp_then_fsdp"
    other.mkdir()
    shutil.copy(ddp / "checkpoint-0.pth", other / "checkpoint-0.pth")
    r = pretrain(data, other, "fsdp", 2, tmp_path)
    assert "continuing at epoch 1" in r.stdout
    assert max_diff(weights(other / "checkpoint-last.pth"), reference) <= TOL

    # The fsdp checkpoint in a single process: weights and optimizer state load, training goes on.
    r = pretrain(data, one_proc, "", 2, tmp_path, procs=1)
    assert "continuing at epoch 1" in r.stdout
    ckpt = torch.load(one_proc / "checkpoint-last.pth", map_location="cpu", weights_only=True)
    # 32 images: 2 updates in epoch 0 (2 processes x batch 4 x accum 2), 4 in epoch 1 (1 process).
    assert float(ckpt["optimizer"]["state"][0]["step"]) == 6.0
    assert ckpt["epoch"] == 1


def test_fsdp_finetune_and_linprobe_with_sharded_evaluation(tmp_path: Path) -> None:
    """9 val images split 5/4 (2 and 1 batches): evaluation under fsdp runs uneven batch counts
    and logs exactly what a single-process --eval of the saved checkpoint measures."""
    data = labeled_folder(tmp_path / "data")
    common = [
        "--model",
        "vit_tiny_patch16",
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
        "--device",
        "cpu",
        "--amp",
        "none",
        "--data_path",
        str(data),
    ]
    for phase in ("finetune", "linprobe"):
        out = tmp_path / phase
        r = run_cli(
            [phase, "--dist_mode", "fsdp", "--dist_eval", "--output_dir", str(out), *common],
            tmp_path,
            launcher=TORCHRUN,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        (log,) = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
        r = run_cli_in_process(
            [
                phase,
                "--eval",
                "--resume",
                str(out / "checkpoint-0.pth"),
                "--output_dir",
                str(tmp_path / f"eval_{phase}"),
                *common,
            ],
            tmp_path,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        m = re.search(
            r"on the 9 test images: acc1 ([\d.]+)%  acc5 ([\d.]+)%  loss ([\d.]+)", r.stdout
        )
        assert m, r.stdout
        assert abs(log["test_acc1"] - float(m.group(1))) < 0.01, (phase, log, m.group(0))
        assert abs(log["test_loss"] - float(m.group(3))) < 1e-4, (phase, log, m.group(0))
