"""End to end: `maekit pretrain` on a folder of JPEG/PNG images, resume, and torchrun."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from maekit.models import create_model
from tests.conftest import run_cli, run_cli_in_process

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
    "--num_workers",
    "0",
    "--print_freq",
    "2",
    "--blr",
    "1e-3",
]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def test_pretrain_two_epochs_then_resume_to_three(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = run_cli_in_process(
        [
            "pretrain",
            "--data_path",
            str(image_folder),
            "--epochs",
            "2",
            "--output_dir",
            str(out),
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (out / "checkpoint-0.pth").is_file() and (out / "checkpoint-1.pth").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "mae_vit_tiny_patch16" and cfg["epochs"] == 2 and cfg["patch_size"] == 8
    # --amp auto is saved as given, and beside it what it resolved to here (as printed)
    res = cfg["resolved"]
    assert (res["device"], res["world_size"], res["torch"]) == ("cpu", 1, torch.__version__)
    assert f"on cpu x 1 in {res['precision']} for epochs 0..1" in r.stdout
    assert f"actual lr: {res['lr']:.2e}  effective batch: {res['effective_batch']} " in r.stdout
    assert res["lr"] == pytest.approx(cfg["blr"] * res["effective_batch"] / 256)
    log = read_log(out)
    assert [rec["epoch"] for rec in log] == [0, 1]
    for rec in log:
        assert {
            "train_loss",
            "train_lr",
            "train_img_per_s",
            "epoch_time_s",
            "wall_time_s",
        } <= rec.keys()
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard events missing"

    ckpt = torch.load(out / "checkpoint-1.pth", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "epoch", "scaler", "args", "resume"}
    assert (out / "checkpoint-last.pth").is_file()
    assert ckpt["epoch"] == 1 and isinstance(ckpt["args"], dict)
    # The saved weights load strictly into a freshly built model of the same config.
    model = create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8)
    model.load_state_dict(ckpt["model"], strict=True)

    r = run_cli_in_process(
        [
            "pretrain",
            "--data_path",
            str(image_folder),
            "--epochs",
            "3",
            "--output_dir",
            str(out),
            "--resume",
            str(out / "checkpoint-1.pth"),
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "continuing at epoch 2" in r.stdout
    assert [rec["epoch"] for rec in read_log(out)] == [0, 1, 2]
    ckpt2 = torch.load(out / "checkpoint-2.pth", map_location="cpu", weights_only=True)
    assert ckpt2["epoch"] == 2
    # The optimizer continued (AdamW step count grew by one epoch of 6 steps) rather than restarting.
    step_before = ckpt["optimizer"]["state"][0]["step"].item()
    step_after = ckpt2["optimizer"]["state"][0]["step"].item()
    assert step_after == step_before + 6


def test_flat_folder_without_labels_pretrains(tmp_path: Path, image_folder: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (image_folder / "train").rglob("*.*"):
        shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
    out = tmp_path / "run"
    r = run_cli_in_process(
        ["pretrain", "--data_path", str(flat), "--epochs", "1", "--output_dir", str(out), *TINY],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "(24 images)" in r.stdout
    assert (out / "checkpoint-0.pth").is_file()


def test_torchrun_two_processes_rank0_writes_alone(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    r = run_cli(
        [
            "pretrain",
            "--data_path",
            str(image_folder),
            "--epochs",
            "1",
            "--output_dir",
            str(out),
            "--max_train_step",
            "2",
            *TINY,
        ],
        tmp_path,
        launcher=launcher,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    # One process group of two: the effective batch counts both ranks.
    assert "effective batch: 8 (4 x 1 accum x 2 procs)" in r.stdout
    # Rank 0 alone logs: each line appears once, not once per rank.
    assert r.stdout.count("epoch 0: train_loss") == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("events.")) == [
        ".maekit.lock",
        "checkpoint-0.pth",
        "checkpoint-last.pth",
        "config.json",
        "log.txt",
    ]
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert len(read_log(out)) == 1
