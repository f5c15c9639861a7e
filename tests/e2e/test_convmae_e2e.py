"""End to end: ConvMAE-small pretrain -> ConvViT fine-tune -> ConvViT linear probe via the CLI,
32 px images with an overall stride of 4 (stage strides 1, 2, 2: an 8x8 token grid)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import run_cli_in_process, write_image_folder

TINY = [
    "--input_size",
    "32",
    "--patch_size",
    "4",
    "--batch_size",
    "4",
    "--num_workers",
    "0",
    "--print_freq",
    "1",
    "--warmup_epochs",
    "0",
    "--epochs",
    "1",
    "--max_train_step",
    "2",
]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def test_convmae_pretrain_finetune_linprobe(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_image_folder(data, classes=2, per_class=6, seed=0)
    write_image_folder(tmp_path / "v", classes=2, per_class=2, seed=1)
    (tmp_path / "v" / "train").rename(data / "val")

    pre = tmp_path / "pre"
    r = run_cli_in_process(
        [
            "pretrain",
            "--model",
            "convmae_convvit_small_patch16",
            "--norm_pix_loss",
            "--data_path",
            str(data / "train"),
            "--output_dir",
            str(pre),
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    (log,) = read_log(pre)
    assert torch.isfinite(torch.tensor(log["train_loss"]))
    ckpt = torch.load(pre / "checkpoint-0.pth", map_location="cpu", weights_only=False)
    assert ckpt["model"]["stage1_output_decode.weight"].shape == (384, 128, 4, 4)
    assert ckpt["model"]["patch_embed1.proj.weight"].shape == (128, 3, 1, 1)  # stride 4 / 4
    assert ckpt["model"]["decoder_pred.weight"].shape == (4 * 4 * 3, 256)

    ft = tmp_path / "ft"
    r = run_cli_in_process(
        [
            "finetune",
            "--model",
            "convvit_small_patch16",
            "--finetune",
            str(pre / "checkpoint-0.pth"),
            "--layer_decay_rule",
            "plsc",
            "--aa",
            "none",
            "--reprob",
            "0",
            "--data_path",
            str(data),
            "--output_dir",
            str(ft),
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "newly initialised: fc_norm.bias, fc_norm.weight, head.bias, head.weight" in r.stdout
    (log,) = read_log(ft)
    assert {"train_loss", "test_acc1", "test_loss"} <= log.keys()
    tuned = torch.load(ft / "checkpoint-0.pth", map_location="cpu", weights_only=False)["model"]
    assert tuned["head.weight"].shape == (2, 384) and "stage1_output_decode.weight" not in tuned
    assert not torch.equal(tuned["blocks1.0.conv1.weight"], ckpt["model"]["blocks1.0.conv1.weight"])

    # linear probe without pooling flags: the phase's cls-token default falls back to global
    # pooling for a ConvViT, which has no cls token
    lp = tmp_path / "lp"
    r = run_cli_in_process(
        [
            "linprobe",
            "--model",
            "convvit_small_patch16",
            "--finetune",
            str(pre / "checkpoint-0.pth"),
            "--data_path",
            str(data),
            "--output_dir",
            str(lp),
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    (log,) = read_log(lp)
    assert {"train_loss", "test_acc1"} <= log.keys()
    probed = torch.load(lp / "checkpoint-0.pth", map_location="cpu", weights_only=False)["model"]
    assert {"head.0.running_mean", "head.1.weight"} <= probed.keys()
    # frozen encoder: the pre-trained weights are unchanged
    assert torch.equal(
        probed["blocks3.0.attn.qkv.weight"], ckpt["model"]["blocks3.0.attn.qkv.weight"]
    )
