"""``maekit recipes | head -5``: the reader of stdout goes away; maekit stops quietly (exit
141, as a Unix tool killed by SIGPIPE), with no BrokenPipeError traceback (issue 29, case 25)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [["recipes"], ["models"], ["pretrain", "--print_config"]])
def test_a_closed_stdout_pipe_is_no_traceback(tmp_path, command):
    p = subprocess.Popen(
        [sys.executable, "-m", "maekit", *command],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    p.stdout.close()  # before maekit writes a byte (its imports take seconds)
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
