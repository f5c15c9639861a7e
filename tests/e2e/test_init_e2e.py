"""End to end: `maekit pretrain --init` from a Hugging Face folder into a one-channel, non-square
run on a grayscale folder; then auto-resume wins over --init."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from maekit.formats import read_checkpoint
from tests.conftest import run_cli_in_process
from tests.formats.test_hf import set_sincos_tables

# mae_vit_tiny_patch16's sizes, so `--model mae_vit_tiny_patch16` takes the HF weights as they are
TINY_HF = dict(
    hidden_size=192,
    num_hidden_layers=12,
    num_attention_heads=3,
    intermediate_size=768,
    decoder_hidden_size=128,
    decoder_num_hidden_layers=4,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=512,
    image_size=32,
    patch_size=8,
    layer_norm_eps=1e-6,
)
FLAGS = [
    "--model",
    "mae_vit_tiny_patch16",
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


def hf_folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**TINY_HF))
    set_sincos_tables(model)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def gray_folder(root: Path, n: int = 12) -> Path:
    """One-channel PNGs (mode L) of different sizes."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        arr = (rng.random((30 + i, 50 - i)) * 255).astype("uint8")
        Image.fromarray(arr, mode="L").save(root / f"{i:02d}.png")
    return root


def test_pretrain_init_from_hf_folder_one_channel_non_square(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    data = gray_folder(tmp_path / "gray")
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--init",
        str(folder),
        "--in_chans",
        "1",
        "--input_size",
        "24",
        "40",
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        *FLAGS,
    ]
    r = run_cli_in_process([*args, "--epochs", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("init from"))
    assert "Hugging Face ViTMAEForPreTraining folder" in line
    assert "adapted patch_embed.proj 3 -> 1 input channels (sum of the 3 kernels" in line
    assert "adapted decoder_pred 192 -> 64 outputs (mean of the per-channel predictions)" in line
    assert "recomputed pos_embed and decoder_pos_embed for the 3x5 grid" in line
    assert "newly initialised: none" in line
    assert "for epochs 0..0" in r.stdout  # epoch 0, a fresh schedule
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["input_size"] == [24, 40] and cfg["init"] == str(folder) and cfg["in_chans"] == 1
    assert cfg["mean"] == [0.449] and cfg["std"] == [0.226]  # the one-channel default, as numbers
    ckpt = read_checkpoint(out / "checkpoint-0.pth")
    assert ckpt["args"]["input_size"] == [24, 40]
    assert ckpt["model"]["pos_embed"].shape == (1, 16, 192)
    assert ckpt["model"]["patch_embed.proj.weight"].shape == (192, 1, 8, 8)
    # the same run folder again, with more epochs: its progress wins over --init
    r = run_cli_in_process([*args, "--epochs", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"--init {folder} not used: {out} already has progress" in r.stdout
    assert "auto-resumed from" in r.stdout and "for epochs 1..1" in r.stdout
    assert not any(ln.startswith("init from") for ln in r.stdout.splitlines())
