"""Counts in the lines maekit prints take the noun's number: "1 image", "16 images"."""

from __future__ import annotations

from pathlib import Path

import pytest

from maekit.analysis.watch import validation_split
from maekit.config import PretrainConfig
from maekit.data import build_dataset
from maekit.data.shards.write import write_shards
from maekit.errors import counted
from tests.conftest import write_image_folder


@pytest.mark.parametrize(
    ("n", "noun", "plural", "text"),
    [
        (1, "image", None, "1 image"),
        (0, "image", None, "0 images"),
        (16, "image", None, "16 images"),
        (1, "class", "classes", "1 class"),
        (3, "class", "classes", "3 classes"),
        (1, "test image", None, "1 test image"),
    ],
)
def test_counted(n: int, noun: str, plural, text: str) -> None:
    assert counted(n, noun, plural) == text


def test_the_held_out_line_says_each_count_once(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", classes=1, per_class=4, size=(32, 32))
    cfg = PretrainConfig(data_path=str(root), input_size=32, val_frac=0.25)
    train = build_dataset(cfg.data_path, "train", lambda img: img)
    _, val, line = validation_split(cfg, train)
    assert len(val) == 1
    assert line == "validation: 1 training image held out (--val_frac 0.25), fixed masks"
    # capped by --val_max_images: "K of N ..."
    write_image_folder(tmp_path / "more", classes=1, per_class=12, size=(32, 32))
    cfg = PretrainConfig(data_path=str(tmp_path / "more"), val_frac=0.5, val_max_images=2)
    _, val, line = validation_split(cfg, build_dataset(cfg.data_path, "train", lambda img: img))
    assert len(val) == 2
    assert line == (
        "validation: 2 of 6 training images held out (--val_frac 0.5; --val_max_images 2), "
        "fixed masks"
    )


def test_one_shard_of_one_class_is_said_so(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "src", classes=1, per_class=1, size=(8, 8))
    (line,) = write_shards(root, tmp_path / "dst", shard_size=10)
    assert line.startswith("train: 1 sample (1 class) in 1 shard of up to 10,"), line
