"""End to end: a run with its own --mean/--std (and a non-square size) is visualized and
fine-tuned without repeating them: both take them from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from maekit.cli import main
from maekit.formats import read_checkpoint
from tests.conftest import run_cli_in_process
from tests.e2e.test_chain_e2e import labeled_folder

MEAN, STD = ["0.31", "0.42", "0.53"], ["0.21", "0.22", "0.23"]
COMMON = [
    "--patch_size",
    "8",
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
]


def test_custom_statistics_travel_with_the_checkpoint(tmp_path: Path) -> None:
    data = labeled_folder(tmp_path / "data")
    pre = tmp_path / "pre"
    r = run_cli_in_process(
        [
            "pretrain",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "24",
            "40",
            "--mean",
            *MEAN,
            "--std",
            *STD,
            "--data_path",
            str(data),
            "--output_dir",
            str(pre),
            *COMMON,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    saved = read_checkpoint(pre / "checkpoint-0.pth")["args"]
    config = json.loads((pre / "config.json").read_text())
    for where in (saved, config):
        assert where["mean"] == [0.31, 0.42, 0.53] and where["std"] == [0.21, 0.22, 0.23]
        assert where["in_chans"] == 3 and where["input_size"] == [24, 40]

    # visualize: no --mean/--std/--input_size given
    r = run_cli_in_process(
        [
            "visualize",
            "--checkpoint",
            str(pre / "checkpoint-0.pth"),
            "--data_path",
            str(data),
            "--num_images",
            "2",
            "--out",
            str(tmp_path / "grid.png"),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "(24x40 px, patch 8)" in r.stdout
    assert "Inputs normalised with mean 0.31/0.42/0.53, std 0.21/0.22/0.23." in r.stdout

    # finetune: no --mean/--std/--input_size given either
    ft = tmp_path / "ft"
    r = run_cli_in_process(
        [
            "finetune",
            "--model",
            "vit_tiny_patch16",
            "--finetune",
            str(pre / "checkpoint-0.pth"),
            "--data_path",
            str(data),
            "--output_dir",
            str(ft),
            *COMMON,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    taken = next(
        ln for ln in r.stdout.splitlines() if ln.startswith(f"from {pre / 'checkpoint-0.pth'}:")
    )
    assert (
        "--input_size [24, 40]" in taken
        and "--mean 0.31 0.42 0.53" in taken
        and "--std 0.21 0.22 0.23" in taken
    )
    ft_args = read_checkpoint(ft / "checkpoint-0.pth")["args"]
    assert ft_args["mean"] == [0.31, 0.42, 0.53] and ft_args["std"] == [0.21, 0.22, 0.23]
    assert ft_args["input_size"] == [24, 40]
    # and a flag still wins over the checkpoint
    r = run_cli_in_process(
        [
            "finetune",
            "--model",
            "vit_tiny_patch16",
            "--finetune",
            str(pre / "checkpoint-0.pth"),
            "--mean",
            "0.5",
            "0.5",
            "0.5",
            "--data_path",
            str(data),
            "--output_dir",
            str(tmp_path / "ft2"),
            *COMMON,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ft2" / "config.json").read_text())["mean"] == [0.5, 0.5, 0.5]


def test_mean_of_the_wrong_length_is_one_line(capsys, tmp_path) -> None:
    assert main(["pretrain", "--mean", "0.5", "0.5", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--mean has 2 values but the model takes 3 input channels (--in_chans)" in err[0]
    assert "maekit stats" in err[0]
    assert (
        main(
            [
                "pretrain",
                "--in_chans",
                "1",
                "--std",
                "0.2",
                "0.2",
                "0.2",
                "--output_dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--std has 3 values but the model takes 1 input channel " in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
