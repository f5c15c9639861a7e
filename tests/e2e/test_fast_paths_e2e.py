"""End to end: --grad_ckpt through the phases changes memory, not the training numbers."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import run_cli_in_process, write_image_folder

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
    "--max_train_step",
    "3",
    "--device",
    "cpu",
]


def train_loss(out: Path) -> float:
    return json.loads((out / "log.txt").read_text().splitlines()[-1])["train_loss"]


def test_pretrain_with_grad_ckpt_logs_the_same_loss(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data")
    losses = []
    for flags in ([], ["--grad_ckpt"]):
        out = tmp_path / f"run{len(losses)}"
        r = run_cli_in_process(
            [
                "pretrain",
                "--model",
                "mae_vit_tiny_patch16",
                "--data_path",
                str(data),
                "--output_dir",
                str(out),
                *TINY,
                *flags,
            ],
            tmp_path,
        )
        assert r.returncode == 0, r.stderr
        losses.append(train_loss(out))
    assert losses[0] == losses[1]  # same seed, data, masking; recomputation is exact


def test_finetune_with_grad_ckpt_saves_plain_weights(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data")
    (data / "val").symlink_to(data / "train")
    out = tmp_path / "ft"
    r = run_cli_in_process(
        [
            "finetune",
            "--model",
            "vit_tiny_patch16",
            "--data_path",
            str(data),
            "--output_dir",
            str(out),
            "--grad_ckpt",
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    state = torch.load(out / "checkpoint-0.pth", map_location="cpu", weights_only=True)["model"]
    assert "blocks.0.attn.qkv.weight" in state and not any(k.startswith("_orig_mod") for k in state)
