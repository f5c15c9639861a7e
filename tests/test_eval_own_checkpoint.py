"""`maekit finetune|linprobe --eval --resume CKPT` of maekit's own checkpoint without --model:
the model (and its patch size, size, channels, statistics) come from the checkpoint's saved
args, and the evaluation runs; without a checkpoint the default stays the official ViT-L."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from maekit.config import FinetuneConfig, LinprobeConfig
from maekit.phases.supervised import resolve_inputs
from tests.conftest import run_cli_in_process, write_image_folder

TINY = ["--model", "vit_tiny_patch16", "--input_size", "32", "--patch_size", "8"]
RUN = ["--batch_size", "4", "--num_workers", "0", "--epochs", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own_ckpt")
    small = dict(per_class=3, size=(36, 36))
    write_image_folder(root / "data", classes=3, **small)
    write_image_folder(root / "val_tmp", classes=3, seed=1, **small)
    (root / "val_tmp" / "train").rename(root / "data" / "val")
    return root


@pytest.mark.parametrize("phase", ["finetune", "linprobe"])
def test_eval_of_an_own_checkpoint_needs_no_model_flag(data: Path, phase: str) -> None:
    out = f"runs/{phase}"
    train = [phase, "--data_path", "data", *TINY, *RUN, "--output_dir", out]
    r = run_cli_in_process(train, data)
    assert r.returncode == 0, r.stderr
    ckpt = data / out / "checkpoint-0.pth"
    assert ckpt.is_file()

    argv = [phase, "--data_path", "data", *RUN[:6], "--eval", "--resume", str(ckpt)]
    r = run_cli_in_process([*argv, "--output_dir", f"runs/{phase}-eval"], data)
    assert r.returncode == 0, r.stderr
    # the note names what was taken from the checkpoint
    assert re.search(
        r"from .*checkpoint-0\.pth: --model vit_tiny_patch16, --patch_size 8", r.stdout
    )
    assert "--input_size 32" in r.stdout
    # the weights are the checkpoint's: the accuracy is the one the training run logged for it
    (logged,) = [json.loads(line) for line in (data / out / "log.txt").read_text().splitlines()]
    acc1 = re.search(r"acc1 (\d+\.\d\d)%", r.stdout)
    assert acc1, r.stdout
    assert float(acc1.group(1)) == pytest.approx(logged["test_acc1"], abs=0.006)


def test_without_a_checkpoint_the_default_is_the_official_vit_large() -> None:
    for cls in (FinetuneConfig, LinprobeConfig):
        cfg, note, _ = resolve_inputs(cls())
        assert cfg.model == "vit_large_patch16" and cfg.patch_size is None and note is None


def test_a_given_model_is_kept(data: Path, tmp_path: Path) -> None:
    import torch

    ckpt = tmp_path / "ck.pth"
    torch.save({"model": {}, "args": {"model": "vit_tiny_patch16", "patch_size": 8}}, ckpt)
    cfg, note, _ = resolve_inputs(FinetuneConfig(model="vit_small_patch16", resume=str(ckpt)))
    assert (cfg.model, cfg.patch_size) == ("vit_small_patch16", None)
    assert note is None or "--model" not in note
    # a pre-training checkpoint's model is no encoder name: the default, said by no note
    torch.save({"model": {}, "args": {"model": "mae_vit_tiny_patch16"}}, ckpt)
    cfg, note, _ = resolve_inputs(FinetuneConfig(finetune=str(ckpt)))
    assert cfg.model == "vit_large_patch16" and (note is None or "--model" not in note)
