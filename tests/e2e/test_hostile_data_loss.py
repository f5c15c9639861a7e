"""Issue 29, data loss (cases 1-6): each hostile input either works or stops with one line
(exit 2), and nothing a user had is lost or overwritten. Every run is bounded by a timeout."""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli, run_cli_in_process, write_image_folder
from tests.e2e.test_crash_safety import TINY, Run


def epochs_logged(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()]


def pretrain(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--data_path",
        str(data),
        "--num_workers",
        "0",
        "--output_dir",
        str(out),
        *TINY,
        *extra,
    ]


def one_line_refusal(r, needle: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in errors[0], errors[0]


def _file_size_limit(limit: int):
    def apply() -> (
        None
    ):  # in the child: writes past ``limit`` bytes fail (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def case_knn_monitor_skips_an_unreadable_image(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    for split in ("val",):
        for c in range(2):
            d = data / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((36, 40, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    (data / "val" / "class_0" / "bad.png").write_bytes(b"\x89PNG not really")
    (data / "train" / "class_1" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp / "run"
    r = run_cli_in_process(
        pretrain(data, out, "--epochs", "1", "--knn_eval_freq", "1", "--max_bad_frac", "0.5"), tmp
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "knn top-1" in r.stdout and "(6 queries, bank 8)" in r.stdout, r.stdout
    assert (out / "checkpoint-last.pth").is_file()
    assert "knn_acc1" in json.loads((out / "log.txt").read_text().splitlines()[-1])


def case_no_auto_resume_starts_over_without_mixing_runs(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    out = tmp / "run"
    assert run_cli_in_process(pretrain(data, out, "--epochs", "2"), tmp).returncode == 0
    old = (out / "checkpoint-1.pth").read_bytes()
    r = run_cli_in_process(pretrain(data, out, "--epochs", "1", "--no_auto_resume"), tmp)
    assert r.returncode == 0, r.stderr
    assert f"the previous run's files moved to {out / 'previous-1'}" in r.stdout
    assert epochs_logged(out) == [0]
    assert epochs_logged(out / "previous-1") == [0, 1]
    assert (out / "previous-1" / "checkpoint-1.pth").read_bytes() == old
    # The next plain run continues the new run, not the old one.
    r = run_cli_in_process(pretrain(data, out, "--epochs", "2"), tmp)
    assert r.returncode == 0, r.stderr
    assert f"auto-resumed from {out / 'checkpoint-last.pth'}: continuing at epoch 1" in r.stdout
    assert epochs_logged(out) == [0, 1]


def case_a_failing_resume_leaves_config_json(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    out = tmp / "run"
    assert run_cli_in_process(pretrain(data, out, "--epochs", "1"), tmp).returncode == 0
    config = (out / "config.json").read_text()
    bad = tmp / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    r = run_cli_in_process(
        pretrain(data, out, "--epochs", "2", "--blr", "2e-3", "--resume", str(bad)), tmp
    )
    one_line_refusal(r, str(bad))
    r = run_cli_in_process(pretrain(data, out, "--epochs", "2", "--resume", str(out)), tmp)
    one_line_refusal(r, "is a folder; give the checkpoint file in it")
    assert (out / "config.json").read_text() == config


def case_interrupt_in_the_first_save_logs_no_epoch_twice(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    out = tmp / "run"
    args = pretrain(data, out, "--epochs", "2")
    # Ctrl-C ends the sleep at once: the long delay costs nothing, but keeps the temp file in
    # place while a loaded machine's polling thread finds it (2 s once missed it under load)
    first = Run(args, tmp, save_delay=20)
    try:
        first.wait_for(lambda: any(out.glob(".checkpoint-*.tmp")), timeout=240)
        first.kill(signal.SIGINT)
        first.finish(timeout=120)
    finally:
        if first.proc.poll() is None:
            first.kill()
    assert not (out / "checkpoint-last.pth").exists()
    r = run_cli_in_process(args, tmp)
    assert r.returncode == 0, r.stderr
    assert epochs_logged(out) == [0, 1]


def case_exports_never_replace_a_runs_files(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    out = tmp / "run"
    assert run_cli_in_process(pretrain(data, out, "--epochs", "1"), tmp).returncode == 0
    config = (out / "config.json").read_text()
    ckpt = out / "checkpoint-last.pth"
    r = run_cli_in_process(["convert", str(ckpt), str(out), "--to", "hf", "--force"], tmp)
    one_line_refusal(r, "is not a Hugging Face folder that maekit convert wrote")
    side = tmp / "feats.json"
    side.write_text(config)  # a file of the same stem, not an extract's
    r = run_cli_in_process(
        [
            "extract",
            "--checkpoint",
            str(ckpt),
            "--data_path",
            str(data),
            "--out",
            str(tmp / "feats.npy"),
            "--num_workers",
            "0",
            "--batch_size",
            "4",
        ],
        tmp,
    )
    one_line_refusal(r, "is not the label file of an earlier maekit extract")
    assert side.read_text() == config and (out / "config.json").read_text() == config
    # An earlier extract's own files are replaced (a rerun), and a HF folder convert wrote too.
    side.unlink()
    extract = [
        "extract",
        "--checkpoint",
        str(ckpt),
        "--data_path",
        str(data),
        "--out",
        str(tmp / "feats.npy"),
        "--num_workers",
        "0",
        "--batch_size",
        "4",
    ]
    assert run_cli_in_process(extract, tmp).returncode == 0
    assert run_cli_in_process(extract, tmp).returncode == 0
    hf = tmp / "hf"
    assert run_cli_in_process(["convert", str(ckpt), str(hf), "--to", "hf"], tmp).returncode == 0
    assert (
        run_cli_in_process(["convert", str(ckpt), str(hf), "--to", "hf", "--force"], tmp).returncode
        == 0
    )


def case_a_write_failure_is_one_line_and_leaves_no_debris(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    out = tmp / "run"
    assert run_cli_in_process(pretrain(data, out, "--epochs", "1"), tmp).returncode == 0
    config = (out / "config.json").read_text()
    ckpt = out / "checkpoint-last.pth"
    limited = _file_size_limit(1000)  # config.json is ~3 KB; every output is larger
    r = run_cli(pretrain(data, out, "--epochs", "2"), tmp, preexec_fn=limited)
    one_line_refusal(r, "could not write")
    assert (out / "config.json").read_text() == config
    assert not list(out.glob(".config.json.*"))
    for args, target in (
        (
            ["convert", str(ckpt), str(tmp / "w.safetensors"), "--to", "safetensors"],
            tmp / "w.safetensors",
        ),
        (["convert", str(ckpt), str(tmp / "hf"), "--to", "hf"], tmp / "hf"),
        (["shard", str(data), str(tmp / "shards")], tmp / "shards" / "train" / "shard-000000.tar"),
        (
            [
                "extract",
                "--checkpoint",
                str(ckpt),
                "--data_path",
                str(data),
                "--out",
                str(tmp / "f.npy"),
                "--num_workers",
                "0",
            ],
            tmp / "f.npy",
        ),
    ):
        r = run_cli(args, tmp, preexec_fn=limited)
        one_line_refusal(r, "could not write")
        assert not target.exists(), target
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0


CASES = {
    "1-knn-monitor-unreadable-image": case_knn_monitor_skips_an_unreadable_image,
    "2-no-auto-resume-in-a-used-folder": case_no_auto_resume_starts_over_without_mixing_runs,
    "3-failing-resume-keeps-config": case_a_failing_resume_leaves_config_json,
    "4-interrupt-during-first-save": case_interrupt_in_the_first_save_logs_no_epoch_twice,
    "5-exports-never-overwrite-run-files": case_exports_never_replace_a_runs_files,
    "6-write-failure-one-line": case_a_write_failure_is_one_line_and_leaves_no_debris,
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_loses_no_data(case: str, tmp_path: Path) -> None:
    CASES[case](tmp_path)
