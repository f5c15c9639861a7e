"""scripts/launch/: the torchrun launch scripts and the SLURM batch script.

Static checks (bash -n, shellcheck), the exact commands they build (DRY_RUN=1), a real two-process
CPU run of pretrain.sh under torchrun, and slurm.sbatch against fake srun/scontrol/scancel
executables (one torchrun per node, SIGUSR1 -> graceful stop of the steps -> requeue).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maekit.cli import build_parser
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # starts maekit processes: the full tier only

LAUNCH = REPO / "scripts" / "launch"
PHASE_SCRIPTS = [
    "pretrain.sh",
    "finetune.sh",
    "linprobe.sh",
    "pretrain_huge.sh",
    "convmae_pretrain.sh",
    "convmae_finetune.sh",
    "convmae_linprobe.sh",
]
ALL_SCRIPTS = ["common.sh", *PHASE_SCRIPTS, "slurm.sbatch"]

# The seed's PLSC pre-training flags, verbatim and in order.
SEED_PRETRAIN = (
    "--accum_iter 1 --batch_size 128 --model mae_vit_base_patch16 --norm_pix_loss "
    "--mask_ratio 0.75 --epochs 1600 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05"
)
# The official MAE ViT-B fine-tuning recipe (FINETUNE.md; recipes.md agrees).
FINETUNE_RECIPE = (
    "--batch_size 32 --model vit_base_patch16 --finetune {ckpt} --epochs 100 --blr 5e-4 "
    "--layer_decay 0.65 --weight_decay 0.05 --drop_path 0.1 --mixup 0.8 --cutmix 1.0 "
    "--reprob 0.25 --dist_eval"
)

# Settings the scripts read: cleared so the caller's environment cannot leak into a test.
SETTINGS = (
    "NNODES",
    "NPROC_PER_NODE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "RUN_ID",
    "RDZV_BACKEND",
    "TORCHRUN",
    "DRY_RUN",
    "DATA_PATH",
    "OUTPUT_DIR",
    "PRETRAINED",
    "CUDA_VISIBLE_DEVICES",
    "LAUNCH_DIR",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SETTINGS and not k.startswith(("PADDLE_", "SLURM_"))
    }
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def dry_run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        env=clean_env(DRY_RUN="1", **env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def command(script: str, *args: str, **env: str) -> str:
    r = dry_run(script, *args, **env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    return lines[0]


def maekit_args(line: str) -> tuple[str, list[str]]:
    """The phase and the flags after `-m maekit` in a printed command."""
    words = shlex.split(line)
    i = words.index("-m")
    assert words[i + 1] == "maekit"
    return words[i + 2], words[i + 3 :]


# --------------------------------------------------------------------------- static checks


def test_the_launch_scripts_are_all_there() -> None:
    found = sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
    assert found == sorted(ALL_SCRIPTS)
    for name in ALL_SCRIPTS:
        text = (LAUNCH / name).read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), name
        assert "\nset -euo pipefail\n" in text, name
    for name in [*PHASE_SCRIPTS, "slurm.sbatch"]:
        assert (LAUNCH / name).stat().st_mode & 0o111, f"{name} is not executable"


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_bash_parses(name: str) -> None:
    r = subprocess.run(
        ["bash", "-n", str(LAUNCH / name)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_shellcheck_clean(name: str) -> None:
    # Not a skip: CI installs shellcheck (scripts/install.sh --dev), and a missing linter must
    # not let the scripts pass unchecked.
    exe = shutil.which("shellcheck")
    assert exe, (
        "shellcheck is not installed: apt-get install shellcheck (or bash scripts/install.sh --dev)"
    )
    # From the repository root, as a user would run it; scripts/launch/.shellcheckrc makes it
    # follow `source common.sh`.
    r = subprocess.run(
        [exe, "--severity=style", f"scripts/launch/{name}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- DRY_RUN commands


def test_pretrain_command_is_the_seed_recipe_under_torchrun() -> None:
    line = command("pretrain.sh", NNODES="4", NPROC_PER_NODE="8", MASTER_ADDR="node0")
    assert line == (
        "torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node0:29500 "
        f"--rdzv_id maekit_pretrain -m maekit pretrain {SEED_PRETRAIN} "
        "--data_path /data/imagenet --output_dir runs/mae_vit_base_1600ep"
    )


def test_finetune_command_is_the_official_recipe() -> None:
    line = command("finetune.sh", DATA_PATH="/d/in", OUTPUT_DIR="runs/ft", PRETRAINED="/c/mae.pth")
    phase, args = maekit_args(line)
    assert phase == "finetune"
    assert (
        " ".join(args)
        == FINETUNE_RECIPE.format(ckpt="/c/mae.pth") + " --data_path /d/in --output_dir runs/ft"
    )
    # The default checkpoint is the last one pretrain.sh writes.
    default = command("finetune.sh")
    assert "--finetune runs/mae_vit_base_1600ep/checkpoint-1599.pth " in default


def test_pretrain_huge_command_shards_with_fsdp() -> None:
    _, args = maekit_args(command("pretrain_huge.sh"))
    joined = " ".join(args)
    assert "--model mae_vit_huge_patch14 --norm_pix_loss --mask_ratio 0.75 --epochs 1600 " in joined
    assert "--blr 1.5e-4 --weight_decay 0.05 --dist_mode fsdp --grad_ckpt" in joined
    # Effective batch 4096 on 4 nodes x 8 GPUs, as ViT-B.
    assert "--accum_iter 1 --batch_size 128 " in joined


# script -> (phase, the effective batch on 4 nodes x 8 GPUs, the recipe's published batch)
EFFECTIVE_BATCH = {
    "pretrain.sh": ("pretrain", 4096),
    "pretrain_huge.sh": ("pretrain", 4096),
    "finetune.sh": ("finetune", 1024),
    "linprobe.sh": ("linprobe", 16384),
    "convmae_pretrain.sh": ("pretrain", 3072),  # the official ConvMAE run: 128 x 24 GPUs
    "convmae_finetune.sh": ("finetune", 1024),
    "convmae_linprobe.sh": ("linprobe", 16384),
}


@pytest.mark.parametrize("script", PHASE_SCRIPTS)
@pytest.mark.parametrize(("nodes", "accum"), [(4, 1), (1, 4)])
def test_effective_batch_is_the_recipes(script: str, nodes: int, accum: int) -> None:
    """4 nodes x 8 GPUs as the scripts are; one node of 8 with --accum_iter 4, as they say."""
    extra = ["--accum_iter", str(accum)] if accum > 1 else []
    line = command(script, *extra, NNODES=str(nodes), NPROC_PER_NODE="8", MASTER_ADDR="node0")
    phase, args = maekit_args(line)
    ns = build_parser().parse_args([phase, *args])
    assert phase == EFFECTIVE_BATCH[script][0]
    assert ns.batch_size * ns.accum_iter * nodes * 8 == EFFECTIVE_BATCH[script][1]


def test_linprobe_commands_are_the_official_recipe() -> None:
    parser = build_parser()
    for script, model, pool in (
        ("linprobe.sh", "vit_base_patch16", "cls_token"),
        ("convmae_linprobe.sh", "convvit_base_patch16", "global_pool"),
    ):
        phase, args = maekit_args(command(script, PRETRAINED="/c/p.pth", DATA_PATH="/d"))
        ns = parser.parse_args([phase, *args])
        assert (phase, ns.model, ns.finetune, ns.data_path) == ("linprobe", model, "/c/p.pth", "/d")
        assert (ns.epochs, ns.warmup_epochs, ns.blr, ns.weight_decay, ns.dist_eval) == (
            90,
            10,
            0.1,
            0.0,
            True,
        )
        assert getattr(ns, pool) is True


def test_convmae_commands() -> None:
    parser = build_parser()
    _, args = maekit_args(command("convmae_pretrain.sh"))
    ns = parser.parse_args(["pretrain", *args])
    assert (ns.model, ns.norm_pix_loss, ns.mask_ratio, ns.epochs, ns.warmup_epochs, ns.blr) == (
        "convmae_convvit_base_patch16",
        True,
        0.75,
        1600,
        40,
        1.5e-4,
    )
    assert ns.output_dir == "runs/convmae_base_1600ep"
    _, args = maekit_args(command("convmae_finetune.sh"))
    ns = parser.parse_args(["finetune", *args])
    assert (ns.model, ns.finetune) == (
        "convvit_base_patch16",
        "runs/convmae_base_1600ep/checkpoint-1599.pth",
    )
    assert (ns.epochs, ns.blr, ns.layer_decay, ns.drop_path, ns.mixup, ns.cutmix, ns.reprob) == (
        100,
        5e-4,
        0.65,
        0.1,
        0.8,
        1.0,
        0.25,
    )
    _, args = maekit_args(command("convmae_linprobe.sh"))
    assert "runs/convmae_base_1600ep/checkpoint-1599.pth" in args


@pytest.mark.parametrize("script", PHASE_SCRIPTS)
def test_seed_variables_map_to_torchrun(script: str) -> None:
    line = command(
        script, CUDA_VISIBLE_DEVICES="0,1,2,3", PADDLE_NNODES="4", PADDLE_MASTER="10.0.0.1:8090"
    )
    # CUDA_VISIBLE_DEVICES stays as it is; torchrun starts one process per listed GPU.
    assert line.startswith("CUDA_VISIBLE_DEVICES=0,1,2,3 torchrun --nnodes 4 --nproc_per_node 4 ")
    assert " --rdzv_backend c10d --rdzv_endpoint 10.0.0.1:8090 " in line
    assert " --node_rank " not in line  # c10d numbers the nodes itself


def test_own_variables_win_over_the_seeds() -> None:
    line = command(
        "pretrain.sh",
        NNODES="2",
        PADDLE_NNODES="4",
        NPROC_PER_NODE="8",
        CUDA_VISIBLE_DEVICES="0,1",
        MASTER_ADDR="head",
        MASTER_PORT="1234",
        PADDLE_MASTER="10.0.0.1:8090",
        RUN_ID="exp7",
    )
    assert " --nnodes 2 --nproc_per_node 8 " in line
    assert " --rdzv_endpoint head:1234 --rdzv_id exp7 " in line
    # PADDLE_MASTER without a port: the default port; MASTER_PORT alone changes only the port.
    assert " --rdzv_endpoint h0:29500 " in command(
        "pretrain.sh", PADDLE_NNODES="2", PADDLE_MASTER="h0"
    )
    assert " --rdzv_endpoint 10.0.0.1:600 " in command(
        "pretrain.sh", PADDLE_MASTER="10.0.0.1:8090", MASTER_PORT="600"
    )
    # No GPUs listed and no NPROC_PER_NODE: torchrun counts the node's GPUs.
    assert " --nproc_per_node gpu " in command("pretrain.sh")


def test_static_backend_takes_the_node_rank() -> None:
    line = command(
        "pretrain.sh", NNODES="4", MASTER_ADDR="node0", RDZV_BACKEND="static", SLURM_NODEID="2"
    )
    assert (
        " --nnodes 4 --nproc_per_node gpu --node_rank 2 --rdzv_backend static --rdzv_endpoint node0:29500 "
        in line
    )
    line = command(
        "pretrain.sh", NNODES="4", MASTER_ADDR="node0", RDZV_BACKEND="static", NODE_RANK="3"
    )
    assert " --node_rank 3 " in line


def test_extra_arguments_come_last_and_override_the_recipe() -> None:
    line = command("pretrain.sh", "--epochs", "800", "--output_dir", "/tmp/with space")
    assert line.endswith(" --epochs 800 --output_dir /tmp/with\\ space")
    phase, args = maekit_args(line)
    ns = build_parser().parse_args([phase, *args])
    # The recipe's other flags are maekit's own flag names and keep their values.
    assert (ns.epochs, ns.output_dir) == (800, "/tmp/with space")
    assert (ns.batch_size, ns.accum_iter, ns.model, ns.norm_pix_loss, ns.mask_ratio) == (
        128,
        1,
        "mae_vit_base_patch16",
        True,
        0.75,
    )
    assert (ns.warmup_epochs, ns.blr, ns.weight_decay) == (40, 1.5e-4, 0.05)


def test_every_recipe_flag_is_a_maekit_flag() -> None:
    parser = build_parser()
    for script in PHASE_SCRIPTS:
        phase, args = maekit_args(command(script))
        ns, unknown = parser.parse_known_args([phase, *args])
        assert unknown == [], (script, unknown)
        if script == "pretrain_huge.sh":
            assert (ns.dist_mode, ns.grad_ckpt) == ("fsdp", True)
        if script == "finetune.sh":
            assert (ns.layer_decay, ns.drop_path, ns.mixup, ns.cutmix, ns.dist_eval) == (
                0.65,
                0.1,
                0.8,
                1.0,
                True,
            )
        if script == "pretrain_huge.sh":
            assert ns.grad_ckpt and ns.model == "mae_vit_huge_patch14"


@pytest.mark.parametrize(
    ("script", "switch", "other"),
    [
        ("pretrain.sh", "norm_pix_loss", None),
        ("pretrain_huge.sh", "norm_pix_loss", None),
        ("pretrain_huge.sh", "grad_ckpt", None),
        ("convmae_pretrain.sh", "norm_pix_loss", None),
        ("finetune.sh", "dist_eval", None),
        ("convmae_finetune.sh", "dist_eval", None),
        ("linprobe.sh", "dist_eval", None),
        ("linprobe.sh", "cls_token", "global_pool"),
        ("convmae_linprobe.sh", "global_pool", "cls_token"),
    ],
)
def test_an_appended_no_switch_undoes_the_recipes(script: str, switch: str, other) -> None:
    """docs/cluster.md: the last value of a flag wins, switches too."""
    parser = build_parser()
    phase, args = maekit_args(command(script))
    assert f"--{switch}" in args and getattr(parser.parse_args([phase, *args]), switch) is True
    phase, args = maekit_args(command(script, f"--no_{switch}"))
    assert args[-1] == f"--no_{switch}" and f"--{switch}" in args  # appended after the recipe's
    ns = parser.parse_args([phase, *args])
    assert getattr(ns, switch) is False
    if other:  # a pooling switch: off means the other pooling, not both off
        assert getattr(ns, other) is True
        phase, args = maekit_args(command(script, f"--{other}"))
        ns = parser.parse_args([phase, *args])
        assert (getattr(ns, switch), getattr(ns, other)) == (False, True)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NNODES": "4"}, "MASTER_ADDR"),
        ({"PADDLE_NNODES": "2"}, "MASTER_ADDR"),
        ({"NNODES": "four"}, "NNODES must be a positive integer"),
        ({"NPROC_PER_NODE": "0"}, "NPROC_PER_NODE"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT"),
        ({"PADDLE_MASTER": "etcd://10.0.0.1:2379"}, "PADDLE_MASTER"),
        ({"RDZV_BACKEND": "etcd"}, "RDZV_BACKEND"),
    ],
)
def test_bad_settings_stop_with_one_line(env: dict, message: str) -> None:
    r = dry_run("pretrain.sh", **env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("maekit launch: ") and message in r.stderr
    assert len(r.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- a real run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = [
    "--model",
    "mae_vit_tiny_patch16",
    "--input_size",
    "32",
    "--patch_size",
    "8",
    "--batch_size",
    "4",
    "--epochs",
    "1",
    "--warmup_epochs",
    "1",
    "--max_train_step",
    "2",
    "--num_workers",
    "0",
    "--print_freq",
    "2",
    "--blr",
    "1e-3",
    "--device",
    "cpu",
]


def test_pretrain_script_runs_torchrun_with_two_cpu_processes(
    image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    env = clean_env(
        NNODES="1",
        NPROC_PER_NODE="2",
        MASTER_PORT=str(free_port()),
        TORCHRUN=f"{sys.executable} -m torch.distributed.run",
        DATA_PATH=str(image_folder),
        OUTPUT_DIR=str(out),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.Popen(
        ["bash", str(LAUNCH / "pretrain.sh"), *TINY],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert (
        "maekit launch: " in stderr
        and " --nnodes 1 --nproc_per_node 2 --rdzv_backend c10d " in stderr
    )
    # Two ranks in one group: the overrides made it tiny, the recipe's other flags stayed.
    assert "effective batch: 8 (4 x 1 accum x 2 procs)" in stdout
    assert (out / "checkpoint-0.pth").is_file() and (out / "checkpoint-last.pth").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model"], cfg["epochs"], cfg["norm_pix_loss"], cfg["mask_ratio"]) == (
        "mae_vit_tiny_patch16",
        1,
        True,
        0.75,
    )


# --------------------------------------------------------------------------- SLURM

FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_LOG/calls"
if [[ "$1 $2" == "show hostnames" ]]; then printf '%s\\n' node-a node-b node-c node-d; fi
if [[ "$1 $2" == "show job" ]]; then echo "JobId=$3 JobName=x JobState=${FAKE_JOB_STATE:-RUNNING} Reason=None"; fi
exit 0
"""

# One "node" per allocated node: the task's command runs with that node's SLURM_NODEID under
# DRY_RUN=1, so it prints its torchrun command. With FAKE_STEP_SECONDS the step then stays
# alive, recording any signal it receives (and ending, like maekit, on SIGTERM/SIGUSR1).
FAKE_SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG/calls"
while [[ "${1:-}" == -* ]]; do shift; done
for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do
  SLURM_NODEID=$i SLURM_PROCID=$i DRY_RUN=1 "$@" > "$FAKE_LOG/node$i.out" 2>&1
done
if [[ -n "${FAKE_STEP_SECONDS:-}" ]]; then
  trap 'echo TERM >> "$FAKE_LOG/signals"; exit 0' TERM
  trap 'echo USR1 >> "$FAKE_LOG/signals"; exit 0' USR1
  echo $$ > "$FAKE_LOG/srun.pid.tmp" && mv "$FAKE_LOG/srun.pid.tmp" "$FAKE_LOG/srun.pid"
  end=$((SECONDS + FAKE_STEP_SECONDS))
  while ((SECONDS < end)); do sleep 0.05; done
  echo TIMEOUT >> "$FAKE_LOG/signals"
fi
exit 0
"""

# scancel --signal=SIG JOBID: signal the job steps (here: the fake srun).
FAKE_SCANCEL = """#!/usr/bin/env bash
echo "scancel $*" >> "$FAKE_LOG/calls"
sig=TERM
for a in "$@"; do [[ "$a" == --signal=* ]] && sig="${a#--signal=}"; done
kill -s "$sig" "$(cat "$FAKE_LOG/srun.pid")"
"""


@pytest.fixture
def fake_slurm(tmp_path: Path) -> dict[str, str]:
    bin_dir, log = tmp_path / "fakebin", tmp_path / "slurmlog"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return clean_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_LOG=str(log),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="node-[a-d]",
        SLURM_JOB_NUM_NODES="4",
        SLURM_NNODES="4",
        SLURM_SUBMIT_DIR=str(REPO),
        CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
    )


def calls(env: dict) -> list[str]:
    path = Path(env["FAKE_LOG"]) / "calls"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("backend", ["c10d", "static"])
def test_sbatch_starts_one_torchrun_per_node(
    fake_slurm: dict, tmp_path: Path, backend: str
) -> None:
    env = {**fake_slurm, "SLURM_JOB_NAME": "mae_b", "RDZV_BACKEND": backend}
    r = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "pretrain", "--epochs", "3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    srun = [c for c in calls(env) if c.startswith("srun ")]
    assert len(srun) == 1 and srun[0].startswith("srun --nodes=4 --ntasks-per-node=1 ")
    assert srun[0].endswith(f" {LAUNCH / 'pretrain.sh'} --epochs 3")
    assert not [c for c in calls(env) if "requeue" in c or c.startswith("scancel")]
    log = Path(env["FAKE_LOG"])
    for node in range(4):
        line = (log / f"node{node}.out").read_text().strip()
        rank = f"--node_rank {node} " if backend == "static" else ""
        # Every node: the first host as rendezvous, a port and id from the job id, 8 GPUs.
        assert line.startswith(
            "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 torchrun --nnodes 4 --nproc_per_node 8 "
            f"{rank}--rdzv_backend {backend} --rdzv_endpoint node-a:24242 --rdzv_id 4242 "
            f"-m maekit pretrain {SEED_PRETRAIN} "
        ), line
        # A named job keeps its output directory across requeues; the user's flags come last.
        assert line.endswith(" --output_dir runs/mae_b --epochs 3")


@pytest.mark.parametrize(
    "name", ["linprobe", "convmae_pretrain", "convmae_finetune", "convmae_linprobe"]
)
def test_sbatch_runs_the_new_launch_scripts_by_name(
    fake_slurm: dict, tmp_path: Path, name: str
) -> None:
    r = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), name],
        cwd=tmp_path,
        env=fake_slurm,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (srun,) = [c for c in calls(fake_slurm) if c.startswith("srun ")]
    assert srun.endswith(f" {LAUNCH / (name + '.sh')}")
    line = (Path(fake_slurm["FAKE_LOG"]) / "node0.out").read_text().strip()
    phase = name.removeprefix("convmae_")
    assert f" -m maekit {phase} " in line and " --nnodes 4 --nproc_per_node 8 " in line


def test_sbatch_rejects_an_unknown_phase(fake_slurm: dict, tmp_path: Path) -> None:
    r = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "pretrian"],
        cwd=tmp_path,
        env=fake_slurm,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "no launch script" in r.stderr and not calls(fake_slurm)


def run_until_signal(
    env: dict, tmp_path: Path, sig: signal.Signals, also_step: bool
) -> subprocess.CompletedProcess:
    """Start slurm.sbatch with a long-running fake step, send ``sig`` to the batch shell (and
    to the step too when ``also_step``, as SLURM does for preemption), wait for it to end."""
    env = {**env, "FAKE_STEP_SECONDS": "60"}
    pid_file = Path(env["FAKE_LOG"]) / "srun.pid"
    proc = subprocess.Popen(
        ["bash", str(LAUNCH / "slurm.sbatch"), "pretrain"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the fake step never started"
            time.sleep(0.05)
        if also_step:
            os.kill(int(pid_file.read_text()), sig)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sbatch_on_sigusr1_stops_the_steps_gracefully_and_requeues(
    fake_slurm: dict, tmp_path: Path
) -> None:
    r = run_until_signal(fake_slurm, tmp_path, signal.SIGUSR1, also_step=False)
    assert r.returncode == 0, r.stderr
    # The steps got SIGTERM (torchrun's graceful stop; maekit saves and exits 0) through scancel.
    assert (Path(fake_slurm["FAKE_LOG"]) / "signals").read_text().split() == ["TERM"]
    c = calls(fake_slurm)
    assert "scancel --signal=TERM 4242" in c
    # ... and only after the step had ended was the job requeued.
    assert c[-1] == "scontrol requeue 4242", c
    assert "SIGUSR1 received" in r.stderr and "requeueing job 4242" in r.stderr


@pytest.mark.parametrize(("state", "requeued"), [("RUNNING", True), ("CANCELLED", False)])
def test_sbatch_on_sigterm_requeues_unless_cancelled(
    fake_slurm: dict, tmp_path: Path, state: str, requeued: bool
) -> None:
    env = {**fake_slurm, "FAKE_JOB_STATE": state}
    r = run_until_signal(env, tmp_path, signal.SIGTERM, also_step=True)
    assert r.returncode == 0, r.stderr
    assert (Path(env["FAKE_LOG"]) / "signals").read_text().split() == ["TERM"]
    c = calls(env)
    # SLURM signalled the steps itself: no second SIGTERM from the batch shell.
    assert not [x for x in c if x.startswith("scancel")]
    assert ("scontrol requeue 4242" in c) is requeued, c
