"""Issue 29, tracebacks and blow-ups (cases 23-30): each hostile input works or stops with one
line (exit 2), bounded in time and memory. (Cases done so far: 23 for stats, 28.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from maekit.config.files import read_mapping
from maekit.errors import MaekitError
from tests.conftest import run_cli, write_image_folder


def case_stats_skips_an_unreadable_image(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    (data / "train" / "class_0" / "zz.png").write_bytes(b"garbage")
    r = run_cli(["stats", "--data_path", str(data), "--num_workers", "0"], tmp)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "skipping unreadable image" in r.stderr and "zz.png" in r.stderr
    assert "8 of 9 images" in r.stdout and "(1 unreadable left out)" in r.stdout, r.stdout


def case_billion_laughs_config(tmp: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp / "bomb.yaml").write_text("\n".join([*lines, "blr: *a8"]) + "\n")  # 10**9 values
    with pytest.raises(MaekitError, match="expand to more than 100000 items"):
        read_mapping(str(tmp / "bomb.yaml"))
    many = "\n".join(["a: &a 1", *(f"k{i}: *a" for i in range(101))])
    (tmp / "many.yaml").write_text(many + "\n")
    with pytest.raises(MaekitError, match="more than 100 aliases"):
        read_mapping(str(tmp / "many.yaml"))


CASES = {
    "23-stats-unreadable-image": case_stats_skips_an_unreadable_image,
    "28-billion-laughs-yaml": case_billion_laughs_config,
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line(case: str, tmp_path: Path) -> None:
    CASES[case](tmp_path)
