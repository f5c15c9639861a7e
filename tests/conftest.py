"""Shared fixtures: small image folders written by the tests themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`-n 2`, README command 2) the workers already fill the cores: the CLI
# subprocesses the end-to-end tests start get one intra-op thread each instead of all cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items) -> None:
    """Everything in tests/e2e/ is slow (it trains through the CLI); the slow tests run first, so
    that under ``-n 2`` (``--dist worksteal``, pyproject.toml) the workers end on short tests
    instead of one long one."""
    e2e = Path(__file__).parent / "e2e"
    for item in items:
        if e2e in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


def write_image_folder(
    root: Path, classes: int = 2, per_class: int = 12, size=(40, 36), seed: int = 0
) -> Path:
    """ImageNet-style ``root/train/<class>/*`` with alternating JPEG and PNG files."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / "train" / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = (rng.random((size[0], size[1], 3)) * 255).astype("uint8")
            Image.fromarray(arr).save(d / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Unit tests use tiny tensors: one intra-op thread is faster, far faster on a busy machine.
    (End-to-end tests run the CLI in subprocesses, which pick their own thread count.)"""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data")


def run_cli(
    args: list[str],
    cwd: Path,
    timeout: float = 300,
    launcher: list[str] | None = None,
    preexec_fn=None,
):
    """Run ``python -m maekit ARGS`` (or under ``launcher``) and return the CompletedProcess.
    ``preexec_fn`` runs in the child before maekit (e.g. a file size limit).

    The command runs in its own process group, killed whole on timeout, so a hung torchrun
    never leaves worker processes behind.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = (launcher or [sys.executable]) + ["-m", "maekit", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_cli_in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``maekit ARGS`` through ``maekit.cli.main`` in this process, as a CompletedProcess.

    What ``python -m maekit`` does minus the ~9 CPU-seconds a fresh interpreter spends
    importing torch/timm/torchvision: for cases that fail in the up-front checks. An exception
    that escapes ``main`` is printed as the traceback the command line would show; the working
    directory and the signal handlers are restored afterwards.
    """
    import contextlib
    import io
    import traceback

    from maekit.cli import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stdout, stderr = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                rc = main(list(args))
            except SystemExit as e:  # argparse rejected the flags
                rc = e.code
            except Exception:  # would be a traceback on the command line
                traceback.print_exc()
                rc = 1
    finally:
        os.chdir(old_cwd)
        for s, h in handlers.items():
            signal.signal(s, h)
    return subprocess.CompletedProcess(["maekit", *args], rc, stdout.getvalue(), stderr.getvalue())


def assert_one_error_line(r: subprocess.CompletedProcess, command: str, must_contain: str) -> None:
    """What every bad input must give: exit 2 and one line ``maekit COMMAND: error: ...``
    naming the problem, no traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"maekit {command}: error:"), lines[0]
    assert must_contain in lines[0], lines[0]


@pytest.fixture(autouse=True)
def _registry_restored():
    """Models a test registers (the golden files' tiny geometry) are gone after it, so tests
    that list the registered models see only the shipped ones, whichever xdist worker ran what."""
    from maekit.models.family import families, unregister_family
    from maekit.models.registry import _REGISTRY

    before, before_families = set(_REGISTRY), {f.name for f in families()}
    yield
    for name in set(_REGISTRY) - before:
        del _REGISTRY[name]
    for family in families():
        if family.name not in before_families:
            unregister_family(family.name)
