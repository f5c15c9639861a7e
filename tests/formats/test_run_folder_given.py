"""Issue 29, misleading one-liners: a run folder given where a checkpoint file goes was called
"a Hugging Face unknown checkpoint"; it is now named as a run folder, with the file to give."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_one_error_line, run_cli_in_process


@pytest.mark.parametrize(
    "command",
    [
        ["finetune", "--finetune", "RUN", "--model", "vit_tiny_patch16"],
        ["pretrain", "--init", "RUN", "--model", "mae_vit_tiny_patch16"],
        ["convert", "RUN", "out.pth", "--to", "timm"],
    ],
    ids=["finetune", "init", "convert"],
)
def test_a_run_folder_for_a_checkpoint_names_the_file_to_give(tmp_path, command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "mae_vit_tiny_patch16"}))
    (run / "log.txt").write_text("")
    for name in ("checkpoint-0.pth", "checkpoint-last.pth"):
        (run / name).write_bytes(b"not read")
    args = [str(run) if a == "RUN" else a for a in command]
    extra = [] if command[0] == "convert" else ["--input_size", "32", "--patch_size", "8"]
    r = run_cli_in_process([*args, *extra], tmp_path)
    assert_one_error_line(r, command[0], "is a maekit run folder, not a checkpoint file")
    assert str(run / "checkpoint-last.pth") in r.stderr
