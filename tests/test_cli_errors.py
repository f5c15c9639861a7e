"""`maekit pretrain` with bad input: exit code 2 and one clear line on stderr, no traceback.

All subprocesses start together (each spends most of its time importing torch), so the
whole module costs about one import per core.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

TINY = ["--model", "mae_vit_tiny_patch16", "--input_size", "32", "--patch_size", "4"]
OK = ["--epochs", "1", "--warmup_epochs", "0", "--num_workers", "0", "--device", "cpu"]
MAE_NAMES = [
    "mae_vit_tiny_patch16",
    "mae_vit_small_patch16",
    "mae_vit_base_patch16",
    "mae_vit_large_patch16",
    "mae_vit_huge_patch14",
]

# name -> (args relative to the scratch dir, text the error line must contain)
CASES: dict[str, tuple[list[str], str]] = {
    "missing_data_path": (["--data_path", "no/such/folder", *TINY, *OK], "no/such/folder"),
    "empty_data_folder": (["--data_path", "empty", *TINY, *OK], "no images"),
    "unknown_model": (
        ["--data_path", "flat", "--model", "mae_vit_gigantic", *OK],
        "mae_vit_base_patch16",
    ),
    "input_not_divisible": (
        ["--data_path", "flat", "--model", "mae_vit_tiny_patch16", "--input_size", "30",
         "--patch_size", "4", *OK],
        "divisible",
    ),  # fmt: skip
    "mask_ratio_one": (["--data_path", "flat", *TINY, *OK, "--mask_ratio", "1.0"], "--mask_ratio"),
    "mask_ratio_negative": (
        ["--data_path", "flat", *TINY, *OK, "--mask_ratio", "-0.5"],
        "--mask_ratio",
    ),
    "batch_size_zero": (["--data_path", "flat", *TINY, *OK, "--batch_size", "0"], "--batch_size"),
    "epochs_zero": (
        ["--data_path", "flat", *TINY, "--warmup_epochs", "0", "--device", "cpu", "--epochs", "0"],
        "--epochs",
    ),
    "unwritable_output_dir": (
        ["--data_path", "flat", *TINY, *OK, "--batch_size", "2", "--output_dir", "blocker/out"],
        "--output_dir",
    ),
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "empty").mkdir()
    (root / "flat").mkdir()
    for i in range(4):
        Image.new("RGB", (36, 36), (40 * i, 100, 200)).save(root / "flat" / f"{i}.png")
    (root / "blocker").write_text("a regular file, not a folder")
    return root


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": ""}


@pytest.fixture(scope="module")
def results(scratch) -> dict[str, subprocess.CompletedProcess]:
    """Run every case concurrently; name -> CompletedProcess-like (returncode, stdout, stderr)."""
    procs = {}
    for name, (args, _) in CASES.items():
        cmd = [sys.executable, "-m", "maekit", "pretrain", *args]
        procs[name] = subprocess.Popen(
            cmd, cwd=scratch, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    out = {}
    for name, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(results, scratch, case):
    r = results[case]
    _, must_contain = CASES[case]
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("maekit pretrain: error:"), lines[0]
    assert must_contain in lines[0]


def test_unknown_model_lists_every_mae_model(results):
    line = results["unknown_model"].stderr
    assert "mae_vit_gigantic" in line
    assert all(name in line for name in MAE_NAMES)


def test_bad_input_creates_no_output(results, scratch):
    """Validation happens before anything is written (default --output_dir is ./output_dir)."""
    assert not (scratch / "output_dir").exists()
    assert not (scratch / "blocker/out").exists()


def test_models_lists_the_mae_names(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "maekit", "models"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert set(MAE_NAMES) <= set(names)
    assert "Traceback" not in r.stderr


def test_pretrain_help(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "maekit", "pretrain", "--help"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for flag in ("--batch_size", "--mask_ratio", "--norm_pix_loss", "--blr", "--data_path"):
        assert flag in r.stdout
    assert not r.stderr
