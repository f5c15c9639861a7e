"""`maekit finetune` / `maekit linprobe` with bad input: exit 2, one error line, no traceback.

Every case fails during the up-front checks (before any process group or output). Each
`python -m maekit` subprocess spends ~9 CPU-seconds importing torch/timm/torchvision, so every
case runs in-process through ``maekit.cli.main`` (what ``python -m maekit`` calls before
``sys.exit``), and a few representative cases also run as real subprocesses, a few at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from maekit.models import create_model
from tests.conftest import assert_one_error_line, run_cli_in_process, write_image_folder

TINY = ["--model", "vit_tiny_patch16", "--input_size", "32", "--patch_size", "8"]
OK = ["--batch_size", "4", "--num_workers", "0", "--epochs", "1", "--device", "cpu"]

# name -> (phase, args relative to the scratch dir, text the error line must contain)
CASES: dict[str, tuple[str, list[str], str]] = {
    "finetune_missing": (
        "finetune",
        ["--data_path", "data", *TINY, *OK, "--finetune", "no/such.pth"],
        "no/such.pth",
    ),
    "linprobe_finetune_missing": (
        "linprobe",
        ["--data_path", "data", *TINY, *OK, "--finetune", "no/such.pth"],
        "no/such.pth",
    ),
    "other_architecture": (
        "finetune",
        ["--data_path", "data", *TINY, *OK, "--finetune", "small.pth"],
        "--model",
    ),
    "nb_classes_mismatch": (
        "finetune",
        ["--data_path", "data", *TINY, *OK, "--nb_classes", "5"],
        "3",
    ),
    "no_val_folder": ("finetune", ["--data_path", "train_only", *TINY, *OK], "val"),
    "both_pool_flags": (
        "finetune",
        ["--data_path", "data", *TINY, *OK, "--config", "both_pools.yaml"],
        "--cls_token",
    ),
    "linprobe_both_pool_flags": (
        "linprobe",
        ["--data_path", "data", *TINY, *OK, "--config", "both_pools.yaml"],
        "--cls_token",
    ),
    "eval_without_checkpoint": (
        "finetune",
        ["--data_path", "data", *TINY, *OK, "--eval"],
        "--resume",
    ),
    "pretrain_model": (
        "finetune",
        [
            "--data_path",
            "data",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "32",
            "--patch_size",
            "8",
            *OK,
        ],
        "vit_tiny_patch16",
    ),
    "linprobe_pretrain_model": (
        "linprobe",
        [
            "--data_path",
            "data",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "32",
            "--patch_size",
            "8",
            *OK,
        ],
        "pre-training",
    ),
    "convvit_cls_token": (
        "linprobe",
        [
            "--data_path",
            "data",
            "--model",
            "convvit_small_patch16",
            "--input_size",
            "32",
            "--patch_size",
            "4",
            *OK,
            "--cls_token",
        ],
        "--cls_token",
    ),
    "convvit_patch_size": (
        "finetune",
        [
            "--data_path",
            "data",
            "--model",
            "convvit_small_patch16",
            "--input_size",
            "36",
            "--patch_size",
            "6",
            *OK,
        ],
        "multiple of 4",
    ),
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft_cli")
    small = dict(per_class=2, size=(36, 36))
    write_image_folder(root / "data", classes=3, **small)
    write_image_folder(root / "val_tmp", classes=3, seed=1, **small)
    (root / "val_tmp" / "train").rename(root / "data" / "val")
    write_image_folder(root / "train_only", classes=3, **small)
    torch.manual_seed(0)
    mae_small = create_model("mae_vit_small_patch16", img_size=32, patch_size=8, depth=2)
    torch.save({"model": mae_small.state_dict()}, root / "small.pth")
    # on the command line the later of the two switches wins; a file can still set both
    (root / "both_pools.yaml").write_text("global_pool: true\ncls_token: true\n")
    return root


def run_maekit(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": ""}
    cmd = [sys.executable, "-m", "maekit", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


SUBPROCESS_CASES = ["other_architecture", "linprobe_finetune_missing"]


@pytest.fixture(scope="module")
def results(scratch) -> dict[str, subprocess.CompletedProcess]:
    """Every case through ``maekit.cli.main`` in this process; name -> CompletedProcess."""
    return {
        name: run_cli_in_process([phase, *args], scratch)
        for name, (phase, args, _) in CASES.items()
    }


@pytest.fixture(scope="module")
def subprocess_results(scratch) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            name: pool.submit(run_maekit, [CASES[name][0], *CASES[name][1]], scratch)
            for name in SUBPROCESS_CASES
        }
        return {name: f.result() for name, f in futures.items()}


def check_one_error_line(r: subprocess.CompletedProcess, case: str) -> None:
    phase, _, must_contain = CASES[case]
    assert_one_error_line(r, phase, must_contain)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(results, case):
    check_one_error_line(results[case], case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_from_the_command_line(subprocess_results, results, case):
    r = subprocess_results[case]
    check_one_error_line(r, case)
    assert r.stderr == results[case].stderr  # the in-process run says the same


def test_specific_messages(results):
    assert "does not exist" in results["finetune_missing"].stderr
    other = results["other_architecture"].stderr
    assert "384" in other and "192" in other
    nb = results["nb_classes_mismatch"].stderr
    assert "3 classes" in nb and "--nb_classes 3" in nb
    assert "val/" in results["no_val_folder"].stderr
    assert "mutually exclusive" in results["both_pool_flags"].stderr
    assert "--eval" in results["eval_without_checkpoint"].stderr
    assert "pre-training model" in results["pretrain_model"].stderr
    assert "no cls token" in results["convvit_cls_token"].stderr


def test_bad_input_creates_no_output(results, subprocess_results, scratch):
    assert not (scratch / "output_dir").exists()
