"""``--in_chans 1`` end to end on one-channel PNGs: pretrain -> finetune / linprobe -> knn,
extract, visualize, and pre-training from tar shards. The model sees one channel throughout,
normalised with one mean and one std."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maekit.cli import main
from maekit.data.transforms import eval_transform, normalization, pretrain_transform
from maekit.formats import read_checkpoint
from tests.golden.models import register_golden_models

SIZE = [
    "--input_size",
    "32",
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
    "--in_chans",
    "1",
]


def gray_folder(root: Path, per_class: int = 6) -> Path:
    """train/ and val/ with 3 classes of mode-'L' PNGs (a class = a brightness band)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(3):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(rng.normal(60 + 70 * c, 30, (36, 40)), 0, 255).astype(np.uint8)
                Image.fromarray(arr, mode="L").save(d / f"{i}.png")
    return root


def test_one_channel_normalisation_and_pipelines():
    assert normalization(1) == ((0.449,), (0.226,))
    assert normalization(3) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    img = Image.fromarray(np.full((40, 40), 200, np.uint8), mode="L").convert("RGB")  # as loaded
    for tf in (pretrain_transform(32, in_chans=1), eval_transform(32, in_chans=1)):
        x = tf(img)
        assert x.shape == (1, 32, 32)
        torch.testing.assert_close(x, torch.full_like(x, (200 / 255 - 0.449) / 0.226))


def test_grayscale_chain(tmp_path: Path, capsys) -> None:
    register_golden_models()
    data = gray_folder(tmp_path / "data")
    pre = tmp_path / "pre"
    assert (
        main(
            [
                "pretrain",
                "--model",
                "mae_vit_golden",
                "--data_path",
                str(data),
                "--output_dir",
                str(pre),
                *SIZE,
            ]
        )
        == 0
    )
    ckpt = pre / "checkpoint-0.pth"
    assert read_checkpoint(ckpt)["model"]["patch_embed.proj.weight"].shape[1] == 1

    for phase in ("finetune", "linprobe"):
        out = tmp_path / phase
        assert (
            main(
                [
                    phase,
                    "--model",
                    "vit_golden",
                    "--finetune",
                    str(ckpt),
                    "--data_path",
                    str(data),
                    "--output_dir",
                    str(out),
                    *SIZE,
                ]
            )
            == 0
        )
        assert (
            read_checkpoint(out / "checkpoint-0.pth")["model"]["patch_embed.proj.weight"].shape[1]
            == 1
        )
    capsys.readouterr()

    assert (
        main(
            [
                "knn",
                "--checkpoint",
                str(ckpt),
                "--data_path",
                str(data),
                "--k",
                "3",
                "--num_workers",
                "0",
            ]
        )
        == 0
    )
    assert "top-1" in capsys.readouterr().out

    feats = tmp_path / "feats.safetensors"
    assert (
        main(
            [
                "extract",
                "--checkpoint",
                str(ckpt),
                "--data_path",
                str(data),
                "--out",
                str(feats),
                "--num_workers",
                "0",
            ]
        )
        == 0
    )
    from safetensors.torch import load_file

    assert load_file(str(feats))["features"].shape == (18, 16)

    grid = tmp_path / "grid.png"
    assert (
        main(
            [
                "visualize",
                "--checkpoint",
                str(ckpt),
                "--data_path",
                str(data),
                "--num_images",
                "3",
                "--scale",
                "1",
                "--out",
                str(grid),
            ]
        )
        == 0
    )
    pic = np.asarray(Image.open(grid).convert("RGB")).astype(int)
    assert pic.shape[0] > 3 * 32
    gray = (pic[..., 0] == pic[..., 1]) & (pic[..., 1] == pic[..., 2])
    assert gray.mean() > 0.99  # a one-channel model's grid is gray (the title text aside)

    shards = tmp_path / "shards"
    assert main(["shard", str(data), str(shards)]) == 0
    out = tmp_path / "pre_shards"
    assert (
        main(
            [
                "pretrain",
                "--model",
                "mae_vit_golden",
                "--data_path",
                str(shards),
                "--output_dir",
                str(out),
                *SIZE,
            ]
        )
        == 0
    )
    assert (out / "checkpoint-0.pth").is_file()


@pytest.mark.parametrize("chans", ["2", "4"])
def test_other_channel_counts_are_refused_for_8bit_data(tmp_path, chans, capsys):
    """N bands are read from full-precision files (tests/data/test_pixels.py); Fashion-MNIST
    is 8-bit gray, read as 1 or 3 channels."""
    assert main(["pretrain", "--in_chans", chans, "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "fashion-mnist holds 8-bit images, read as 1 or 3 channels" in err, err
