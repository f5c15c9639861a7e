"""``maekit finetune --finetune CKPT`` accepts every format, end to end on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from maekit.cli import main
from maekit.models import create_model
from tests.conftest import run_cli_in_process, write_image_folder

from .builders import paddle_layout, write_official_pth, write_pd, write_pdparams

pytestmark = pytest.mark.slow  # starts maekit processes: the full tier only

TINY = [
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
    "--epochs",
    "1",
    "--warmup_epochs",
    "0",
    "--max_train_step",
    "2",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict]:
    """One MAE pre-training state (the size vit_tiny_patch16 fine-tunes) and labeled data."""
    root = tmp_path_factory.mktemp("formats")
    write_image_folder(root / "a", classes=2, per_class=4, seed=0)
    write_image_folder(root / "b", classes=2, per_class=2, seed=1)
    (root / "data").mkdir()
    (root / "a" / "train").rename(root / "data" / "train")
    (root / "b" / "train").rename(root / "data" / "val")
    torch.manual_seed(0)
    mae = create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8, decoder_depth=1)
    return root, mae.state_dict()


def write(fmt: str, root: Path, state: dict) -> tuple[Path, str]:
    """The checkpoint in ``fmt`` and the format name its summary line shows."""
    model = create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8, decoder_depth=1)
    model.load_state_dict(state)
    if fmt == "official":  # args pickled as an argparse.Namespace
        return write_official_pth(
            root / "mae_pretrain_full.pth", state
        ), "PyTorch checkpoint ('model' entry, epoch 799)"
    if fmt == "pd":
        return write_pd(
            root / "checkpoint-7.pd", paddle_layout(model)
        ), "PLSC Paddle checkpoint (.pd, epoch 7)"
    if fmt == "pdparams":
        return write_pdparams(
            root / "mae.pdparams", paddle_layout(model)
        ), "Paddle parameters (.pdparams)"
    if fmt == "safetensors":
        save_file(state, str(root / "mae.safetensors"))
        return root / "mae.safetensors", "safetensors"
    src = root / "for_timm.pth"  # timm: exported by `maekit convert --to timm`
    torch.save({"model": state}, src)
    assert main(["convert", str(src), str(root / "timm_vit.pth"), "--to", "timm"]) == 0
    return root / "timm_vit.pth", "PyTorch state dict"


@pytest.mark.parametrize("fmt", ["official", "pd", "pdparams", "safetensors", "timm"])
def test_finetune_from_each_format(source, tmp_path, fmt):
    root, state = source
    ckpt, shown = write(fmt, tmp_path, state)
    out = tmp_path / "ft"
    r = run_cli_in_process(
        [
            "finetune",
            "--finetune",
            str(ckpt),
            "--data_path",
            str(root / "data"),
            "--output_dir",
            str(out),
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith(f"{ckpt}: ")]
    assert (
        shown in line
        and "newly initialised: fc_norm.bias, fc_norm.weight, head.bias, head.weight" in line
    )
    # The fine-tuned weights are the source's after two tiny AdamW steps (lr ~1.6e-5): a
    # wrong transposition or a missed load would differ by far more.
    tuned = torch.load(out / "checkpoint-0.pth", weights_only=True)["model"]
    for k in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.weight"):
        assert (tuned[k] - state[k]).abs().max() < 1e-3, k
    fresh = create_model("vit_tiny_patch16", img_size=32, patch_size=8).state_dict()
    assert (
        fresh["blocks.0.attn.qkv.weight"] - state["blocks.0.attn.qkv.weight"]
    ).abs().max() > 1e-2
