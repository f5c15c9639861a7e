"""Feature extraction: the unmasked encoder, pooling, file formats, and the same features from
one process and from two under torchrun."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torchvision.datasets import ImageFolder

from maekit.analysis.features import encode, load_features, save_features
from maekit.cli import main
from maekit.data.folder import load_rgb
from maekit.data.sampling import subset_indices
from maekit.data.transforms import eval_transform
from maekit.models import create_model
from tests.analysis.conftest import write_finetune_checkpoint
from tests.conftest import run_cli, run_cli_in_process, write_image_folder

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_mae_forward_features_is_the_encoder_without_masking_or_shuffle() -> None:
    torch.manual_seed(0)
    model = create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8).eval()
    imgs = torch.randn(2, 3, 32, 32)
    in_order = torch.arange(16.0).expand(2, 16)  # ascending noise keeps every patch in place
    with torch.no_grad():
        expected, mask, _ = model.forward_encoder(imgs, 0.0, noise=in_order)
        tokens = model.forward_features(imgs)
    assert mask.sum() == 0 and tokens.shape == (2, 17, 192)
    assert torch.allclose(tokens, expected, atol=1e-5)
    assert torch.equal(encode(model, imgs, "cls"), tokens[:, 0])
    assert torch.allclose(encode(model, imgs, "mean"), tokens[:, 1:].mean(1))
    assert torch.equal(encode(model, imgs, "all"), tokens)


def test_mean_pool_of_a_global_pool_encoder_is_what_its_head_sees() -> None:
    torch.manual_seed(0)
    model = create_model(
        "vit_tiny_patch16", img_size=32, patch_size=8, num_classes=0, global_pool=True
    ).eval()
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        head_input = model.forward_head(model.forward_features(imgs), pre_logits=True)
        assert torch.allclose(encode(model, imgs, "mean"), head_input, atol=1e-6)


def test_subset_indices_are_a_fixed_sorted_random_subset() -> None:
    assert subset_indices(5, None, 0) == [0, 1, 2, 3, 4] == subset_indices(5, 9, 0)
    a = subset_indices(100, 10, 0)
    assert a == sorted(a) and len(set(a)) == 10 and a == subset_indices(100, 10, 0)
    assert a != list(range(10)) and a != subset_indices(100, 10, 1)


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_save_and_load_round_trip(tmp_path: Path, suffix: str) -> None:
    feats, labels = torch.randn(3, 4, 5), torch.tensor([2, -1, 0])
    written = save_features(
        tmp_path / f"f{suffix}",
        feats,
        labels,
        ["a.png", "b/c.jpg", "d"],
        {"classes": ["x", "y", "z"], "pool": "all"},
    )
    expected = [tmp_path / f"f{suffix}"] + ([tmp_path / "f.json"] if suffix == ".npy" else [])
    assert written == expected and all(p.is_file() for p in written)
    f, lab, meta = load_features(tmp_path / f"f{suffix}")
    assert torch.equal(f, feats) and torch.equal(lab, labels)
    assert meta["names"] == ["a.png", "b/c.jpg", "d"] and meta["classes"] == ["x", "y", "z"]
    assert meta["pool"] == "all"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.slow
def test_extract_gives_the_same_features_in_one_and_two_processes(tmp_path: Path) -> None:
    # 3 classes x 5 = 15 images: shards of 8 and 7, and batch 4 leaves a short last batch.
    data = write_image_folder(tmp_path / "data", classes=3, per_class=5)
    ckpt = write_finetune_checkpoint(tmp_path / "ft.pth", global_pool=True)
    args = [
        "extract",
        "--checkpoint",
        str(ckpt),
        "--data_path",
        str(data),
        "--pool",
        "mean",
        "--batch_size",
        "4",
        "--num_workers",
        "0",
        "--device",
        "cpu",
    ]
    one, two = tmp_path / "one.npy", tmp_path / "two.safetensors"
    r = run_cli_in_process([*args, "--out", str(one)], tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli([*args, "--out", str(two)], tmp_path, timeout=240, launcher=TORCHRUN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("wrote") == 1  # rank 0 alone writes
    f1, l1, m1 = load_features(one)
    f2, l2, m2 = load_features(two)
    assert f1.shape == (15, 192)
    assert torch.allclose(f1, f2, atol=1e-5) and torch.equal(l1, l2) and m1["names"] == m2["names"]

    # Dataset order, checked against a direct forward of each image.
    ds = ImageFolder(str(data / "train"), transform=eval_transform(32), loader=load_rgb)
    assert m1["names"] == [os.path.relpath(p, data) for p, _ in ds.samples]
    assert l1.tolist() == ds.targets and m1["classes"] == ds.classes
    from maekit.analysis.checkpoint_model import load_checkpoint_model
    from maekit.config import ExtractConfig

    model = load_checkpoint_model(ExtractConfig(checkpoint=str(ckpt))).model
    with torch.no_grad():
        direct = encode(model, torch.stack([ds[i][0] for i in range(15)]), "mean")
    assert torch.allclose(f2, direct, atol=1e-5)


def test_extract_all_tokens_of_a_flat_folder(tmp_path: Path, mae_checkpoint, capsys) -> None:
    write_image_folder(tmp_path / "tmp", classes=1, per_class=5)
    (tmp_path / "tmp" / "train" / "class_0").rename(tmp_path / "flat")
    out = tmp_path / "f.safetensors"
    assert (
        main(
            [
                "extract",
                "--checkpoint",
                str(mae_checkpoint),
                "--data_path",
                str(tmp_path / "flat"),
                "--pool",
                "all",
                "--out",
                str(out),
                "--num_workers",
                "0",
                "--max_images",
                "3",
            ]
        )
        == 0
    )
    f, labels, meta = load_features(out)
    assert f.shape == (3, 17, 192) and labels.tolist() == [-1, -1, -1] and meta["classes"] == []
    assert all(n.endswith((".png", ".jpg")) for n in meta["names"])
