"""`maekit shard` and shard --data_path with bad input: exit code 2 and one clear line on
stderr, no traceback (also for a broken shard found by a data worker mid-epoch).

Every case runs in-process through ``maekit.cli.main``; a few also run as real subprocesses,
which must print exactly what the in-process run printed."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maekit.data.shards.write import write_shards
from tests.conftest import assert_one_error_line, run_cli_in_process, write_image_folder

TINY = [
    "--input_size",
    "32",
    "--patch_size",
    "8",
    "--batch_size",
    "2",
    "--epochs",
    "1",
    "--warmup_epochs",
    "0",
    "--device",
    "cpu",
    "--num_workers",
    "0",
]
PRE = ["pretrain", "--model", "mae_vit_tiny_patch16", *TINY]

# name -> (argv relative to the scratch dir, command, text the error line must contain)
CASES: dict[str, tuple[list[str], str, str]] = {
    "dst_has_shards": (["shard", "src", "shards"], "shard", "already holds shards"),
    "src_missing": (["shard", "nope", "out"], "shard", "not a folder"),
    "dst_inside_src": (["shard", "src", "src/sh"], "shard", "inside SRC"),
    "shard_size_zero": (["shard", "src", "out", "--shard_size", "0"], "shard", "--shard_size"),
    "url_without_manifest": (
        [*PRE, "--data_path", "URL/bare/shard-000000.tar"],
        "pretrain",
        "need the manifest",
    ),
    "pattern_matches_nothing": (
        [*PRE, "--data_path", "shards/train/shard-{000007..000009}.tar"],
        "pretrain",
        "no shard file",
    ),
    "corrupt_tar": ([*PRE, "--data_path", "corrupt/*.tar"], "pretrain", "not a readable tar file"),
    "broken_shard_in_worker": (
        [*PRE[:-1], "2", "--data_path", "broken"],
        "pretrain",
        "not a readable tar file",
    ),
    "no_val_shards": (
        ["finetune", "--model", "vit_tiny_patch16", *TINY, "--data_path", "flat_shards"],
        "finetune",
        "val/shards.json",
    ),
    "knn_on_shards": (
        ["knn", "--random_init", "--model", "vit_tiny_patch16", "--data_path", "shards"],
        "knn",
        "not tar shards",
    ),
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shard_cli")
    write_image_folder(root / "src", classes=2, per_class=4, size=(16, 16))
    write_shards(root / "src", root / "shards", 3)
    write_shards(root / "src" / "train" / "class_0", root / "flat_shards", 3)
    write_shards(root / "src", root / "bare", 8)
    (root / "bare" / "train" / "shards.json").unlink()
    (root / "corrupt").mkdir()
    (root / "corrupt" / "a.tar").write_bytes(b"\x07not a tar" * 200)
    write_shards(root / "src", root / "broken", 2)  # manifest fine, one shard damaged later
    for shard in (root / "broken" / "train").glob("*.tar"):
        shard.write_bytes(b"\x07not a tar" * 200)
    return root


def _argv(args: list[str], cwd: Path) -> list[str]:
    return [a.replace("URL/", f"file://{cwd}/") for a in args]


def run_maekit(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": ""}
    return subprocess.run(
        [sys.executable, "-m", "maekit", *_argv(args, cwd)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


SUBPROCESS_CASES = ["src_missing", "broken_shard_in_worker"]


@pytest.fixture(scope="module")
def results(scratch) -> dict[str, subprocess.CompletedProcess]:
    return {
        name: run_cli_in_process(_argv(argv, scratch), scratch)
        for name, (argv, _, _) in CASES.items()
    }


@pytest.fixture(scope="module")
def subprocess_results(scratch) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_maekit, CASES[name][0], scratch) for name in SUBPROCESS_CASES
        }
        return {name: f.result() for name, f in futures.items()}


def check_one_error_line(r: subprocess.CompletedProcess, case: str) -> None:
    _, command, must_contain = CASES[case]
    assert_one_error_line(r, command, must_contain)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_shard_input_is_one_error_line(results, case):
    check_one_error_line(results[case], case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_shard_input_from_the_command_line(subprocess_results, results, case):
    r = subprocess_results[case]
    check_one_error_line(r, case)
    assert r.stderr == results[case].stderr  # the in-process run says the same


def test_refused_shard_run_leaves_the_existing_shards(results, subprocess_results, scratch):
    assert results["dst_has_shards"].returncode == 2
    names = sorted(p.name for p in (scratch / "shards" / "train").iterdir())
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shards.json"]
    assert not (scratch / "src" / "sh").exists() and not (scratch / "out").exists()
