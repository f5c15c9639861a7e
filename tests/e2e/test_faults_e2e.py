"""Issue 18 end to end: one run per output folder, a failing checkpoint writer (full disk),
FIFOs / sockets / dangling links in the data folder. Every run is bounded by a timeout."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
from pathlib import Path

import torch
from PIL import Image

from tests.conftest import run_cli, run_cli_in_process, write_image_folder
from tests.e2e.test_crash_safety import TINY, Run


def epochs_logged(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    data = write_image_folder(tmp_path / "data", per_class=4)  # 8 images: 2 steps per epoch
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data_path",
        str(data),
        "--epochs",
        "2",
        "--num_workers",
        "0",
        "--output_dir",
        str(out),
        *TINY,
    ]
    first = Run(args, tmp_path, save_delay=1)
    try:
        # Caught in the middle of its first save, then frozen: the second run starts exactly
        # when it used to delete the first one's temp file as "stale".
        first.wait_for(lambda: any(out.glob(".checkpoint-*.tmp")), timeout=240)
        first.kill(signal.SIGSTOP)
        second = run_cli(args, tmp_path, timeout=240)
        first.kill(signal.SIGCONT)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"in use by another maekit run (pid {first.proc.pid})" in lines[0]
        assert first.finish(timeout=300) == 0, "".join(first.lines)
    finally:
        if first.proc.poll() is None:
            first.kill(signal.SIGCONT)
            first.kill()
    assert epochs_logged(out) == [0, 1]  # one line per epoch
    assert not leftovers(out)
    assert torch.load(out / "checkpoint-last.pth", weights_only=True)["epoch"] == 1


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past ``limit`` bytes fail (EFBIG), like ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_failing_checkpoint_writer_is_one_line_and_the_run_resumes_after(tmp_path):
    data = write_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data_path",
        str(data),
        "--num_workers",
        "0",
        "--output_dir",
        str(out),
        *TINY,
    ]
    assert run_cli_in_process([*args, "--epochs", "1"], tmp_path).returncode == 0
    before = (out / "checkpoint-last.pth").read_bytes()

    # The checkpoint (tens of MB) cannot be written past 1 MB: torch's zip writer fails as on a
    # full disk (RuntimeError "unexpected pos"); log lines and config.json are small.
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    full = subprocess.run(
        [sys.executable, "-m", "maekit", *args, "--epochs", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_file_size_limit(1 << 20),
    )
    assert full.returncode == 2, full.stderr[-3000:]
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert "could not write checkpoint" in lines[0] and "free disk space" in lines[0]
    assert (out / "checkpoint-last.pth").read_bytes() == before  # the old checkpoint intact
    assert not leftovers(out)

    # Space freed: the same command continues from the last good checkpoint.
    again = run_cli_in_process([*args, "--epochs", "2"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "continuing at epoch 1" in again.stdout
    assert epochs_logged(out) == [0, 1]  # the failed attempt's epoch-1 line was cut back
    assert torch.load(out / "checkpoint-last.pth", weights_only=True)["epoch"] == 1


def _special_files(folder: Path) -> None:
    os.mkfifo(folder / "fifo.png")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(folder / "sock.png"))
    s.close()
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")


def test_fifo_socket_and_dangling_link_are_skipped_and_counted(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(13):  # 13 images + 3 special entries: 4 full batches, every entry visited
        Image.new("RGB", (36, 36), (15 * i, 80, 160)).save(flat / f"g{i}.png")
    _special_files(flat)
    out = tmp_path / "run"
    r = run_cli(
        [
            "pretrain",
            "--data_path",
            str(flat),
            "--epochs",
            "1",
            "--num_workers",
            "1",
            "--max_bad_frac",
            "0.5",
            "--output_dir",
            str(out),
            *TINY,
        ],
        tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert [
        rec["bad_images_skipped"]
        for rec in map(json.loads, (out / "log.txt").read_text().splitlines())
    ] == [3]
    for name in ("fifo.png", "sock.png", "dangling.jpg"):
        assert name in r.stderr

    shard = run_cli(["shard", str(flat), str(tmp_path / "shards")], tmp_path, timeout=300)
    assert shard.returncode == 0, shard.stderr
    assert "13 samples" in shard.stdout and "3 unreadable entries skipped" in shard.stdout
