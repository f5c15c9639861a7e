"""Weighted k-NN: separable features are classified perfectly, shuffled labels at chance,
votes weighted by exp(sim / T); the command and the pre-training monitor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maekit.analysis.knn import knn_accuracy, knn_scores
from maekit.cli import main
from tests.conftest import run_cli_in_process, write_image_folder

CLASSES = 10


def clustered(
    per_class: int, seed: int, centers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    feats = centers[labels] + 0.3 * torch.randn(len(labels), centers.shape[1], generator=g)
    return feats, labels


def toy(seed: int = 0):
    centers = torch.randn(CLASSES, 64, generator=torch.Generator().manual_seed(seed)) * 3
    bank, bank_labels = clustered(200, seed + 1, centers)
    queries, query_labels = clustered(100, seed + 2, centers)
    return bank, bank_labels, queries, query_labels


def test_separable_features_are_classified_perfectly() -> None:
    bank, bank_labels, queries, query_labels = toy()
    r = knn_accuracy(bank, bank_labels, queries, query_labels, CLASSES, k=20, temperature=0.07)
    assert r == {"acc1": 100.0, "acc5": 100.0, "n": 1000}


def test_shuffled_labels_give_chance() -> None:
    bank, bank_labels, queries, query_labels = toy(seed=5)
    g = torch.Generator().manual_seed(0)
    bank_labels = bank_labels[torch.randperm(len(bank_labels), generator=g)]
    query_labels = query_labels[torch.randperm(len(query_labels), generator=g)]
    r = knn_accuracy(bank, bank_labels, queries, query_labels, CLASSES)
    # chance: 10 % top-1, 50 % top-5; 1000 queries -> standard deviation ~1 % and ~1.6 %
    assert 5.0 < r["acc1"] < 15.0
    assert 40.0 < r["acc5"] < 60.0


def test_votes_are_weighted_by_similarity_over_temperature() -> None:
    # One neighbour of class 0 right on the query; two of class 1 a little off.
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # any length: features are L2-normalised
    sharp = knn_scores(bank, labels, query, 2, k=3, temperature=0.07)
    assert sharp.argmax().item() == 0  # exp(1/0.07) > 2 exp(0.8/0.07)
    assert torch.allclose(
        sharp, torch.tensor([[torch.tensor(1 / 0.07).exp(), 2 * torch.tensor(0.8 / 0.07).exp()]])
    )
    flat = knn_scores(bank, labels, query, 2, k=3, temperature=100.0)
    assert flat.argmax().item() == 1  # nearly a plain majority vote
    only_nearest = knn_scores(bank, labels, query, 2, k=1)
    assert only_nearest[0, 1] == 0
    assert knn_scores(bank, labels, query, 2, k=50).shape == (1, 2)  # k capped at the bank size


def labeled_data(root: Path) -> Path:
    write_image_folder(root / "a", classes=3, per_class=6, seed=0)
    write_image_folder(root / "b", classes=3, per_class=3, seed=1)
    (root / "a" / "train").rename(root / "train")
    (root / "b" / "train").rename(root / "val")
    return root


def test_knn_command_on_a_checkpoint_and_a_random_init(
    tmp_path: Path, mae_checkpoint, capsys
) -> None:
    data = labeled_data(tmp_path / "data")
    args = ["--data_path", str(data), "--device", "cpu", "--num_workers", "0", "--batch_size", "5"]
    assert main(["knn", "--checkpoint", str(mae_checkpoint), *args, "--max_bank", "12"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "9 val queries, bank of 12 train images, k=12" in out
    assert (
        main(
            [
                "knn",
                "--random_init",
                "--model",
                "vit_tiny_patch16",
                "--input_size",
                "32",
                "--patch_size",
                "8",
                "--pool",
                "mean",
                *args,
            ]
        )
        == 0
    )
    assert "bank of 18 train images" in capsys.readouterr().out


@pytest.mark.parametrize(
    "layout, message",
    [
        ("flat", "has no train/ or val/ folder"),
        ("no_val", "has no val/ folder"),
        ("flat_train", "holds images without class folders"),
    ],
)
def test_knn_needs_labels(
    tmp_path: Path, mae_checkpoint, capsys, layout: str, message: str
) -> None:
    data = tmp_path / "data"
    write_image_folder(tmp_path / "tmp", classes=1, per_class=4)
    if layout == "flat":
        (tmp_path / "tmp" / "train" / "class_0").rename(data)
    elif layout == "no_val":
        write_image_folder(data, classes=2, per_class=2)
    else:
        data.mkdir()
        (tmp_path / "tmp" / "train" / "class_0").rename(data / "train")
        write_image_folder(tmp_path / "v", classes=2, per_class=2)
        (tmp_path / "v" / "train").rename(data / "val")
    assert main(["knn", "--checkpoint", str(mae_checkpoint), "--data_path", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maekit knn: error: k-NN needs labels") and message in err


@pytest.mark.slow
def test_pretrain_logs_knn_every_n_epochs_and_at_the_last(tmp_path: Path) -> None:
    data = labeled_data(tmp_path / "data")
    out = tmp_path / "run"
    r = run_cli_in_process(
        [
            "pretrain",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "32",
            "--patch_size",
            "8",
            "--batch_size",
            "6",
            "--epochs",
            "3",
            "--warmup_epochs",
            "0",
            "--num_workers",
            "0",
            "--data_path",
            str(data),
            "--output_dir",
            str(out),
            "--knn_eval_freq",
            "2",
            "--knn_max_bank",
            "10",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    logs = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert ["knn_acc1" in log for log in logs] == [
        False,
        True,
        True,
    ]  # epoch 1 (every 2nd), 2 (last)
    assert all(0.0 <= log["knn_acc1"] <= log["knn_acc5"] <= 100.0 for log in logs[1:])
    assert "epoch 1: knn top-1" in r.stdout and "(9 queries, bank 10)" in r.stdout
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/knn_acc1")] == [1, 2]


def test_pretrain_knn_on_unlabeled_data_fails_at_start_up(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "tmp", classes=1, per_class=8)
    (tmp_path / "tmp" / "train" / "class_0").rename(tmp_path / "flat")
    r = run_cli_in_process(
        [
            "pretrain",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "32",
            "--patch_size",
            "8",
            "--data_path",
            str(tmp_path / "flat"),
            "--output_dir",
            str(tmp_path / "run"),
            "--knn_eval_freq",
            "1",
        ],
        tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("maekit pretrain: error: --knn_eval_freq: k-NN needs labels"), (
        r.stderr
    )
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()
