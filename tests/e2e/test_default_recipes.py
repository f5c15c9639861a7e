"""Every default recipe runs for real: each phase with its *default* augmentation flags for one
full epoch over 2,000 real Fashion-MNIST training images, so a transform that fails one image in
hundreds is hit (RandAugment's posterize at its maximum magnitude failed about once per 500
images under Pillow 13). Only the model (tiny), the input size, the epoch count and the data
differ from what a user gets with no flags; the phases run in this process, their data loaders
with worker processes as usual.

The images: a fixed subset (``--max_train_images``, drawn from ``--seed``) of the installed
Fashion-MNIST training set, read through the built-in loader; the evaluation of fine-tuning and
linear probing reads 200 test images written as PNG class folders (the folder loader, and a
val set small enough for CI).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maekit.cli import main
from maekit.data import FashionMNIST
from maekit.data.fashion_mnist import CLASSES, DEFAULT_ROOT
from maekit.data.sampling import subset_indices
from tests.golden.models import register_golden_models

N_IMAGES = 2000
COMMON = [
    "--max_train_images",
    str(N_IMAGES),
    "--epochs",
    "1",
    "--input_size",
    "28",
    "--patch_size",
    "4",
    "--print_freq",
    "1000",
]
RUNS = {
    "pretrain-mae": ["pretrain", "--model", "mae_vit_golden"],
    "pretrain-convmae": ["pretrain", "--model", "convmae_golden"],
    "finetune-vit": ["finetune", "--model", "vit_golden"],
    "finetune-convvit": ["finetune", "--model", "convvit_golden"],
    "linprobe-vit": ["linprobe", "--model", "vit_golden"],
    "linprobe-convvit": ["linprobe", "--model", "convvit_golden"],
}


def test_fashion_mnist_is_installed():
    """The recipes below need the real data set (Debian package dataset-fashion-mnist)."""
    assert len(FashionMNIST("train")) == 60000, DEFAULT_ROOT


@pytest.fixture(scope="module")
def fmnist_val_folder(tmp_path_factory) -> Path:
    """``train/`` + ``val/``: class folders of 2,000 / 200 Fashion-MNIST PNGs (fixed subsets)."""
    root = tmp_path_factory.mktemp("fmnist")
    for split, n in (("train", N_IMAGES), ("val", 200)):
        ds = FashionMNIST(split)
        for i in subset_indices(len(ds), n, seed=0):
            img, label = ds[i]
            d = root / split / CLASSES[label].replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            img.convert("L").save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("run", RUNS, ids=list(RUNS))
def test_default_recipe_one_full_epoch(tmp_path: Path, run: str, capsys, fmnist_val_folder) -> None:
    register_golden_models()
    out = tmp_path / "out"
    # pre-training reads the installed data set; the labeled phases the PNG folders
    data = "fashion-mnist" if run.startswith("pretrain") else str(fmnist_val_folder)
    assert main([*RUNS[run], *COMMON, "--data_path", data, "--output_dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"({N_IMAGES} " in stdout  # the subset, not all 60,000 images
    (log,) = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert log["epoch"] == 0 and log["train_loss"] == log["train_loss"]  # finite, not NaN
    resolved = json.loads((out / "config.json").read_text())
    flags = resolved.get("config", resolved)
    if run.startswith("finetune"):  # the official fine-tuning augmentation, untouched
        assert flags["aa"] == "rand-m9-mstd0.5-inc1" and flags["reprob"] == 0.25
    assert (out / "checkpoint-0.pth").is_file()
