"""benchmarks/gpu.sh: valid bash, and on a machine without time or GPU it still writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu.sh"


def test_gpu_script_parses():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_gpu_script_dry_run_records_every_run_as_skipped(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "BUDGET_S": "0", "REQUIRE_CUDA": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}  # fmt: skip
    r = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=env,
                       timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    names = [run["name"] for run in data["runs"]]
    assert "mae_b_pretrain" in names and "vit_b_finetune" in names and "pipeline_pretrain" in names
    for run in data["runs"]:
        assert run["error"].startswith("skipped") and "--json" not in run["args"]
        assert "result" not in run
    assert data["meta"]["torch"]
