"""benchmarks/gpu.sh: valid bash and shellcheck-clean; without time or GPU it still writes its JSON;
and SMOKE=1 runs every command line of its matrix on the CPU, so device time is not spent on a typo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu.sh"


def test_gpu_script_parses():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_gpu_script_shellcheck_clean():
    exe = shutil.which("shellcheck")
    assert exe, (
        "shellcheck is not installed: apt-get install shellcheck (or bash scripts/install.sh --dev)"
    )
    r = subprocess.run([exe, str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


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


def test_gpu_script_smoke_runs_the_whole_matrix_on_cpu(tmp_path):
    """Every bench and end-to-end command of the matrix runs (tiny models, 64 px, 1 step); the
    CUDA-only ones fail with maekit's error recorded, not a crash of the script."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "SMOKE": "1", "COMPILE": "0", "BUDGET_S": "900", "PYTHONPATH": str(REPO)}
    r = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=env,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["smoke"] is True
    runs = {run["name"]: run for run in data["runs"]}
    cuda_only = {"mae_b_e2e_gpu_decode", "pipeline_gpu_decode"}
    compiled = {name for name, run in runs.items() if "--compile" in run["args"]}
    assert compiled == {
        "mae_b_pretrain_compile",
        "vit_b_finetune_compile",
        "mae_l_pretrain_compile",
    }
    for name, run in runs.items():
        if name in compiled:
            assert run["error"].startswith("skipped: COMPILE=0")
        elif name in cuda_only:
            assert "result" not in run and "CUDA" in run["error"], run["error"]
        else:
            assert run["result"]["img_per_s"] > 0, (name, run)
    for name in ("mae_b_pretrain", "vit_b_finetune", "convmae_b_pretrain", "mae_l_pretrain"):
        assert runs[name]["result"]["speedup"] > 0  # --reference ran beside the fast mode
    ablated = runs["mae_b_pretrain"]["result"]["ablation"]  # --ablate: each fast path's gain
    assert {"fused_attn", "fused_adamw", "deferred_loss_read"} <= set(ablated)
    e2e = runs["mae_b_e2e"]["result"]
    assert e2e["end_to_end"] and len(e2e["epochs_img_per_s"]) == 2  # E2E_EPOCHS in SMOKE mode
    assert e2e["img_per_s"] == e2e["epochs_img_per_s"][-1]
    assert runs["pipeline_pretrain"]["result"]["images"] >= 8
    assert "mae_b_e2e" in r.stdout and "end to end" in r.stdout
