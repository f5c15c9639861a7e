"""`pip install .` into an environment that already has torch (conda, a cluster module, a
virtualenv): no root, no apt, no torch download. Built from a copy of the source tree into a
fresh virtualenv that sees the system's packages, never into the system (whose maekit stays
as it is)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maekit import __version__
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # starts maekit processes: the full tier only


def test_pip_install_dot_into_a_venv_with_torch_then_the_cli_runs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "maekit", src / "maekit", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    # --system-site-packages: torch, torchvision, timm... are already there (as in a conda or
    # cluster environment); --without-pip: the system's pip installs into it (--python).
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_BREAK_SYSTEM_PACKAGES")
    }
    # --no-index: everything maekit depends on must already be there; nothing is downloaded.
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-index",
            "--no-build-isolation",
            str(src),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # The venv's own copy is the one imported (not the checkout, not the system's).
    r = subprocess.run(
        [str(python), "-c", "import maekit; print(maekit.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip().startswith(str(venv)), r.stdout + r.stderr
    maekit = venv / "bin" / "maekit"
    r = subprocess.run(
        [str(maekit), "pretrain", "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "--data_path" in r.stdout and "--norm_pix_loss" in r.stdout
    # One version: the package metadata pip wrote is maekit.__version__.
    r = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('maekit'))"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == __version__
    r = subprocess.run(
        [str(maekit), "--version"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.stdout.strip() == f"maekit {__version__}"
