"""benchmarks/gpu.sh: valid bash and shellcheck-clean; without time or GPU it still writes its JSON;
and SMOKE=1 runs every command line of its matrix on the CPU, so device time is not spent on a typo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # starts maekit processes: the full tier only

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


MATRIX = [
    "mae_b_pretrain",
    "pipeline_pretrain",
    "pipeline_gpu_decode",
    "vit_b_finetune",
    "mae_b_e2e_gpu_decode",
    "mae_b_e2e",
    "convmae_b_pretrain",
    "mae_l_pretrain",
    "mae_l_pretrain_ckpt",
    "mae_b_pretrain_compile",
    "vit_b_finetune_compile",
]


def _script(tmp_path, timeout: int, **env_vars) -> dict:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env_vars}
    r = subprocess.run(
        ["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    data["stdout"] = r.stdout
    return data


def test_gpu_script_plan_fits_its_budget_with_every_timeout_capped(tmp_path):
    """DRY_RUN=1: the plan as it would run on a GPU. Every run has an entry; the estimates (set-up
    included) add up to less than the 560 s budget; no run may take more than twice its
    estimate, so one hang cannot eat the rest of the matrix. The machine is recorded first."""
    data = _script(tmp_path, 180, DRY_RUN="1", REQUIRE_CUDA="0")
    meta, runs = data["meta"], data["runs"]
    assert list(data)[:1] == ["meta"]
    assert [run["name"] for run in runs] == MATRIX  # the most important run first
    assert meta["budget_s"] == 560 and meta["estimates_s"] <= 560
    assert meta["estimates_s"] == meta["setup_estimate_s"] + sum(r["estimate_s"] for r in runs)
    for run in runs:
        assert 0 < run["timeout_s"] <= 2 * run["estimate_s"], run
        assert run["error"].startswith("skipped: DRY_RUN") and "result" not in run
    for key in (
        "gpu",
        "driver",
        "torch",
        "dev_shm_free_bytes",
        "dev_shm_total_bytes",
        "open_files_soft",
        "open_files_hard",
        "workers",
        "workers_gpu_decode",
    ):
        assert key in meta, key
    assert meta["torch"] and meta["open_files_soft"] > 0 and meta["workers"] >= 0


def test_gpu_script_out_of_time_records_every_run_as_skipped(tmp_path):
    data = _script(tmp_path, 180, BUDGET_S="0", REQUIRE_CUDA="0")
    assert [run["name"] for run in data["runs"]] == MATRIX
    for run in data["runs"]:
        assert run["error"].startswith("skipped") and "--json" not in run["args"]
        assert "result" not in run and run["timeout_s"] <= 0
    assert data["meta"]["torch"]


def test_gpu_script_smoke_runs_the_whole_matrix_on_cpu(tmp_path):
    """Every bench and end-to-end command of the matrix runs (tiny models, 64 px, 1 step); the
    CUDA-only one fails with maekit's error recorded, not a crash of the script."""
    data = _script(tmp_path, 600, SMOKE="1", COMPILE="0", BUDGET_S="900")
    assert data["meta"]["smoke"] is True and data["meta"]["workers"] == 1
    runs = {run["name"]: run for run in data["runs"]}
    assert list(runs) == MATRIX
    cuda_only = {"mae_b_e2e_gpu_decode"}
    compiled = {name for name, run in runs.items() if "--compile" in run["args"]}
    assert compiled == {"mae_b_pretrain_compile", "vit_b_finetune_compile"}
    for name, run in runs.items():
        assert run["timeout_s"] <= data["meta"]["timeout_cap"] * run["estimate_s"]
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
    decoded = runs["pipeline_gpu_decode"]["result"]  # the --gpu_decode loader, CPU decoding
    assert decoded["decode_device"] == "cpu" and decoded["decode"]["cpu_fallback"] == 0
    assert "mae_b_e2e" in data["stdout"] and "end to end" in data["stdout"]
