"""`maekit pretrain` with bad input: exit code 2 and one clear line on stderr, no traceback.

Every case runs in-process through ``maekit.cli.main`` (a fresh interpreter spends ~9
CPU-seconds importing torch); a few representative ones also run as real subprocesses, which
must print exactly what the in-process run printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import assert_one_error_line, run_cli_in_process

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
        [
            "--data_path",
            "flat",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "30",
            "--patch_size",
            "4",
            *OK,
        ],
        "divisible",
    ),
    "convmae_patch_size": (
        [
            "--data_path",
            "flat",
            "--model",
            "convmae_convvit_small_patch16",
            "--input_size",
            "36",
            "--patch_size",
            "6",
            *OK,
        ],
        "multiple of 4",
    ),
    "mask_ratio_one": (["--data_path", "flat", *TINY, *OK, "--mask_ratio", "1.0"], "--mask_ratio"),
    "mask_ratio_negative": (
        ["--data_path", "flat", *TINY, *OK, "--mask_ratio", "-0.5"],
        "--mask_ratio",
    ),
    "keep_last_zero": (["--data_path", "flat", *TINY, *OK, "--keep_last", "0"], "--keep_last"),
    "max_bad_frac_above_one": (
        ["--data_path", "flat", *TINY, *OK, "--max_bad_frac", "1.5"],
        "--max_bad_frac",
    ),
    "max_nonfinite_negative": (
        ["--data_path", "flat", *TINY, *OK, "--max_nonfinite", "-1"],
        "--max_nonfinite",
    ),
    "batch_size_zero": (["--data_path", "flat", *TINY, *OK, "--batch_size", "0"], "--batch_size"),
    "epochs_zero": (
        ["--data_path", "flat", *TINY, "--warmup_epochs", "0", "--device", "cpu", "--epochs", "0"],
        "--epochs",
    ),
    # issue 18: non-finite / meaningless float flags are refused before anything is written
    "blr_inf": (["--data_path", "flat", *TINY, *OK, "--blr", "inf"], "--blr must be a finite"),
    "weight_decay_nan": (
        ["--data_path", "flat", *TINY, *OK, "--weight_decay", "nan"],
        "--weight_decay must be a finite",
    ),
    "lr_nan": (["--data_path", "flat", *TINY, *OK, "--lr", "nan"], "--lr must be a finite"),
    # issue 27: the grids' channels and window, refused before anything is written
    "vis_channels_out_of_range": (
        ["--data_path", "flat", *TINY, *OK, "--vis_channels", "0", "1", "3"],
        "--vis_channels 0 1 3: channel 3 does not exist; the model has 3 channels, valid "
        "indices are 0..2",
    ),
    "vis_window_malformed": (
        ["--data_path", "flat", *TINY, *OK, "--vis_window", "pct", "5"],
        "--vis_window pct 5: give auto, full, pct A B",
    ),
    "unwritable_output_dir": (
        ["--data_path", "flat", *TINY, *OK, "--batch_size", "2", "--output_dir", "blocker/out"],
        "--output_dir",
    ),
    "unwritable_log_dir": (
        [
            "--data_path",
            "flat",
            *TINY,
            *OK,
            "--batch_size",
            "2",
            "--output_dir",
            "out_log",
            "--log_dir",
            "blocker/tb",
        ],
        "--log_dir",
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


def run_maekit(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "maekit", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


SUBPROCESS_CASES = [
    "missing_data_path",
    "unknown_model",
    "mask_ratio_one",
    "vis_channels_out_of_range",
]


@pytest.fixture(scope="module")
def results(scratch) -> dict[str, subprocess.CompletedProcess]:
    """Every case (and `maekit models`) through ``maekit.cli.main``; name -> CompletedProcess."""
    jobs = {name: ["pretrain", *args] for name, (args, _) in CASES.items()}
    jobs["models"] = ["models"]
    return {name: run_cli_in_process(argv, scratch) for name, argv in jobs.items()}


@pytest.fixture(scope="module")
def subprocess_results(scratch) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            name: pool.submit(run_maekit, ["pretrain", *CASES[name][0]], scratch)
            for name in SUBPROCESS_CASES
        }
        return {name: f.result() for name, f in futures.items()}


def check_one_error_line(r: subprocess.CompletedProcess, case: str) -> None:
    _, must_contain = CASES[case]
    assert_one_error_line(r, "pretrain", must_contain)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(results, case):
    check_one_error_line(results[case], case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_from_the_command_line(subprocess_results, results, case):
    r = subprocess_results[case]
    check_one_error_line(r, case)
    assert r.stderr == results[case].stderr  # the in-process run says the same


def test_unknown_model_lists_every_mae_model(results):
    line = results["unknown_model"].stderr
    assert "mae_vit_gigantic" in line
    assert all(name in line for name in MAE_NAMES)


def test_bad_input_creates_no_output(results, subprocess_results, scratch):
    """Validation happens before anything is written (default --output_dir is ./output_dir)."""
    assert not (scratch / "output_dir").exists()
    assert not (scratch / "blocker/out").exists()


def test_models_lists_the_mae_names(results):
    r = results["models"]
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert set(MAE_NAMES) <= set(names)
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_pretrain_help(tmp_path):
    r = run_maekit(["pretrain", "--help"], tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    for flag in ("--batch_size", "--mask_ratio", "--norm_pix_loss", "--blr", "--data_path"):
        assert flag in r.stdout
    assert not r.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("maekit") is None, reason="console script not installed")
def test_console_script_help(tmp_path):
    r = subprocess.run(
        [shutil.which("maekit"), "pretrain", "--help"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "--mask_ratio" in r.stdout


def test_an_error_raised_in_a_data_worker_prints_its_message_alone():
    """torch re-raises a worker's MaekitError with the worker's traceback in its text; the CLI
    keeps the message alone."""
    from maekit.errors import MaekitError, error_text

    wrapped = MaekitError(
        "Caught MaekitError in DataLoader worker process 1.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 3, in f\n    raise X\n'
        "maekit.data.robust.TooManyBadImages: 32 images in a row: check --data_path\n"
    )
    assert error_text(wrapped) == "32 images in a row: check --data_path"
    assert error_text(MaekitError("plain: message")) == "plain: message"


@pytest.mark.slow
def test_out_of_memory_while_building_the_model_is_one_line(tmp_path):
    """Issue 29 case 26: a model too big for the memory allowed (here ``ulimit -v`` 6 GiB and
    ViT-H, 2.5 GB of fp32 weights plus the decoder) stops with one line naming the fix, no
    RuntimeError traceback, whether the allocator fails while building the model or in its
    first steps."""
    import resource

    from tests.conftest import run_cli

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    out = tmp_path / "run"
    args = ["pretrain", "--model", "mae_vit_huge_patch14", "--epochs", "1", "--num_workers", "0"]
    r = run_cli([*args, "--output_dir", str(out)], tmp_path, preexec_fn=limited)
    assert_one_error_line(r, "pretrain", "memory")
    assert "smaller --model" in r.stderr
