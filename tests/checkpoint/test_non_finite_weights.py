"""Issue 29, misleading one-liners: NaN weights given to --init / --finetune trained to a
non-finite loss at step 1 with advice about --blr; they are refused at load, naming the
tensors, before a run folder exists."""

from __future__ import annotations

import pytest
import torch

from maekit.models import create_model
from tests.conftest import assert_one_error_line, run_cli_in_process

TINY = ["--input_size", "32", "--patch_size", "8", "--epochs", "1", "--num_workers", "0"]


@pytest.mark.parametrize(
    "command, model",
    [
        (["pretrain", "--init"], "mae_vit_tiny_patch16"),
        (["finetune", "--finetune"], "vit_tiny_patch16"),
    ],
    ids=["init", "finetune"],
)
def test_non_finite_weights_are_refused_at_load(tmp_path, command, model):
    state = create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8).state_dict()
    state["blocks.0.attn.qkv.weight"][0, :2] = torch.tensor([float("nan"), float("inf")])
    torch.save({"model": state}, tmp_path / "bad.pth")
    out = tmp_path / "run"
    r = run_cli_in_process(
        [*command, str(tmp_path / "bad.pth"), "--model", model, *TINY, "--output_dir", str(out)],
        tmp_path,
    )
    assert_one_error_line(r, command[0], "holds 2 non-finite (NaN or inf) values in 1 tensors")
    assert "blocks.0.attn.qkv.weight" in r.stderr and "--blr" not in r.stderr
    assert not out.exists()
