#!/usr/bin/env bash
# The speed matrix on one GPU (made for an H100/H200), in under 560 s, into one JSON file.
#
#   bash benchmarks/gpu.sh [OUT.json]
#
# Needs torch (CUDA build), torchvision and timm importable; if they are not, they are installed
# offline from the wheels in $WHEELS (default: ./wheels), e.g. prepared elsewhere with
#   pip download -d wheels torch torchvision timm tqdm pillow numpy
# maekit itself runs from this checkout (no install). Each run is `maekit bench --json` (or an
# end-to-end `maekit pretrain`); runs go cheapest and most important first, each with a timeout
# of at most $CAP (2) times its estimate, and the estimates plus the set-up add up to less than
# $BUDGET_S (560): one hang costs its own slot, not the rest. A run that fails or overruns is
# recorded with its error and the matrix goes on; one that would not fit in the time left is
# recorded as skipped. The JSON is rewritten after every run, so a matrix cut short still has
# what it measured; the machine (GPU, driver, torch, /dev/shm, open-file limit, the workers
# used) is recorded at its top.
#
# DRY_RUN=1 records the plan (every run with its estimate and timeout, none run). SMOKE=1 runs
# the whole matrix on the CPU with tiny models, images and step counts, so every command line
# is exercised before device time is spent on it (the CUDA-only run fails there and its error
# is recorded); COMPILE=0 records the --compile runs as skipped (~45 s each to compile on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${1:-benchmarks/gpu-results.json}
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
DRY_RUN=${DRY_RUN:-0}
BUDGET_S=${BUDGET_S:-560}
SETUP_S=15  # the estimate for everything before the first run (checks, writing the JPEGs)
# A run's timeout is at most CAP x its estimate. Tiny CPU runs on a busy CI machine are not
# timed, only exercised: SMOKE=1 allows them more.
if [ "$SMOKE" = 1 ]; then CAP=${CAP:-20}; else CAP=${CAP:-2}; fi
WHEELS=${WHEELS:-wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

if ! "$PY" -c "import torch, torchvision, timm, tqdm" 2>/dev/null; then
    if [ ! -d "$WHEELS" ]; then
        echo "gpu.sh: torch/torchvision/timm are not importable and there is no wheel folder $WHEELS" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" torch torchvision timm tqdm pillow numpy || exit 2
fi
if [ "$SMOKE" = 0 ] && [ "$DRY_RUN" = 0 ] && [ "${REQUIRE_CUDA:-1}" = 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA device visible to torch" >&2
    exit 2
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
N=0

# The matrix's sizes; SMOKE=1 shrinks them to seconds on a CPU.
DEV=cuda MAE_B=mae_vit_base_patch16 VIT_B=vit_base_patch16 CONV_B=convmae_convvit_base_patch16
MAE_L=mae_vit_large_patch16 B=256 B_HALF=128 STEPS=20 WARM=5 WARM_COMPILED=3 IMAGES=4096 JPEGS=512 COPIES=16 E2E_EPOCHS=3
PX=224
SIZE=()  # appended to every command
if [ "$SMOKE" = 1 ]; then
    DEV=cpu MAE_B=mae_vit_tiny_patch16 VIT_B=vit_tiny_patch16 CONV_B=convmae_convvit_small_patch16
    MAE_L=mae_vit_tiny_patch16 B=4 B_HALF=2 STEPS=1 WARM=1 WARM_COMPILED=1 IMAGES=8 JPEGS=8 COPIES=2 E2E_EPOCHS=2
    PX=64
    SIZE=(--input_size 64)
fi

# The machine, once (the only Python start that imports torch outside the runs): GPU, driver,
# torch, /dev/shm, the open-file limit; and the loader workers /dev/shm can hold: each CPU-decode
# worker keeps 2 batches of uint8 images in flight in /dev/shm, a --gpu_decode worker 2 packed
# batches of JPEG bytes (~100 kB an image); half of /dev/shm's free space is the most planned for.
"$PY" - "$TMP/meta.json" "$B" "$PX" "$SMOKE" "$BUDGET_S" "$SETUP_S" "$CAP" <<'EOF' || exit 2
import json, os, resource, subprocess, sys
out, b, px, smoke = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
budget, setup, cap = map(int, sys.argv[5:])
import torch, torchvision
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
except (OSError, subprocess.SubprocessError):
    smi = ""
try:
    st = os.statvfs("/dev/shm")
    shm_total, shm_free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
except OSError:
    shm_total = shm_free = None
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
cpus = len(os.sched_getaffinity(0))
def fit(per_worker: int) -> int:
    return cpus if shm_free is None else max(0, min(cpus, shm_free // 2 // per_worker))
workers = 1 if smoke else fit(2 * b * 3 * px * px)  # uint8 crops (normalised on the GPU)
workers_gpu_decode = 1 if smoke else fit(2 * b * 100_000)
meta = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "driver": smi.split(", ")[1] if smi.count(", ") >= 2 else None, "nvidia_smi": smi,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
        "python": sys.version.split()[0], "cpus": cpus, "dev_shm_total_bytes": shm_total,
        "dev_shm_free_bytes": shm_free, "open_files_soft": soft, "open_files_hard": hard,
        "workers": workers, "workers_gpu_decode": workers_gpu_decode, "budget_s": budget,
        "setup_estimate_s": setup, "timeout_cap": cap, "smoke": smoke}
json.dump(meta, open(out, "w"))
EOF
read -r WORKERS WORKERS_GPU < <("$PY" -c 'import json, sys; m = json.load(open(sys.argv[1])); print(m["workers"], m["workers_gpu_decode"])' "$TMP/meta.json")

# collect: (re)write $OUT from what has run so far (json only, no torch: fast).
collect() {
    "$PY" - "$TMP" "$OUT" "$(($(date +%s) - START))" <<'EOF'
import json, sys
from pathlib import Path
tmp, out, wall = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
meta = {**json.loads((tmp / "meta.json").read_text()), "wall_s": wall}
runs = []
for args in sorted(tmp.glob("*.args")):
    stem = args.with_suffix("")
    lines = args.read_text().split("\n")[:-1]
    rec = {"name": stem.name[3:], "estimate_s": int(lines[0]), "timeout_s": int(lines[1]), "args": lines[2:]}
    js, err = Path(f"{stem}.json"), Path(f"{stem}.err")
    text = js.read_text().strip() if js.exists() else ""
    try:
        rec["result"] = json.loads(text.splitlines()[-1])
    except (IndexError, ValueError):
        rec["error"] = (err.read_text() if err.exists() else "")[-2000:]
    runs.append(rec)
meta["estimates_s"] = meta["setup_estimate_s"] + sum(r["estimate_s"] for r in runs)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
EOF
}

# due NAME ESTIMATE_S ARGS...: sets $f (the run's file stem) and $limit (its timeout: CAP x the
# estimate, or the time left if less); fails if the run must be skipped (recorded as such).
due() {
    local name=$1 estimate=$2 left
    shift 2
    N=$((N + 1))
    left=$((BUDGET_S - ($(date +%s) - START)))
    limit=$((CAP * estimate < left ? CAP * estimate : left))
    f="$TMP/$(printf %02d $N)-$name"
    printf '%s\n' "$estimate" "$limit" "$@" >"$f.args"
    if [ "$DRY_RUN" = 1 ]; then
        echo "skipped: DRY_RUN (estimate $estimate s, timeout $limit s)" >"$f.err"
        return 1
    fi
    if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        echo "skipped: not in ONLY" >"$f.err"
        return 1
    fi
    if [ "$left" -lt "$estimate" ]; then
        echo "skipped: $left s left, needs about $estimate s" >"$f.err"
        echo "gpu.sh: $name skipped ($left s left)" >&2
        return 1
    fi
    if [ "${COMPILE:-1}" = 0 ] && [[ " $* " == *" --compile "* ]]; then
        echo "skipped: COMPILE=0" >"$f.err"
        return 1
    fi
    echo "gpu.sh: $name (timeout $limit s, $left s left)" >&2
}

# run NAME ESTIMATE_S ARGS...: one `maekit bench --json`.
run() {
    due "$@" || { collect; return 0; }
    shift 2
    timeout --kill-after=10 "$limit" "$PY" -m maekit bench --json "$@" "${SIZE[@]}" >"$f.json" 2>"$f.err"
    local rc=$?
    [ $rc = 124 ] && echo "timed out after $limit s" >>"$f.err"
    echo "gpu.sh: exit $rc after $(($(date +%s) - START)) s" >&2
    collect
}

# run_e2e NAME ESTIMATE_S ARGS...: end to end, `maekit pretrain` from the JPEG folder for
# $E2E_EPOCHS epochs. Its result is the last epoch's train_img_per_s from log.txt: the first
# epoch also holds worker start-up, cuDNN autotuning and the allocator's growth.
run_e2e() {
    due "$@" || { collect; return 0; }
    shift 2
    timeout --kill-after=10 "$limit" "$PY" -m maekit pretrain --data_path "$TMP/jpegs" --output_dir "$f-out" \
        --epochs "$E2E_EPOCHS" --warmup_epochs 1 --print_freq 1000 "$@" "${SIZE[@]}" >"$f.log" 2>"$f.err"
    local rc=$?
    [ $rc = 124 ] && echo "timed out after $limit s" >>"$f.err"
    echo "gpu.sh: exit $rc after $(($(date +%s) - START)) s" >&2
    cp "$f.err" "$f.stderr"  # the run's own warnings (--gpu_decode fallbacks), read below
    [ $rc = 0 ] && "$PY" -c '
import json, re, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
err = open(sys.argv[2]).read()
fell_back = [int(n) for n in re.findall(r"--gpu_decode: (\d+) of \d+ JPEGs this epoch", err)]
print(json.dumps({"end_to_end": True, "img_per_s": rows[-1]["train_img_per_s"],
                  "epochs_img_per_s": [r["train_img_per_s"] for r in rows],
                  "epoch_time_s": [r["epoch_time_s"] for r in rows],
                  "train_loss": [r["train_loss"] for r in rows],
                  "gpu_decode_cpu_fallbacks": sum(fell_back)}))' "$f-out/log.txt" "$f.stderr" >"$f.json" 2>>"$f.err"
    rm -rf "$f-out"  # ViT-B checkpoints with optimizer state: 1.3 GB each
    collect
}

# The JPEGs (ImageNet-like 500x375, ~100 kB): $JPEGS distinct files, hard-linked $COPIES times
# into one class folder (decode cost is per file read; this keeps the writing short).
[ "$DRY_RUN" = 1 ] || "$PY" - "$TMP/jpegs" "$JPEGS" "$COPIES" <<'EOF' || true
import os, sys
from pathlib import Path
import numpy as np
from PIL import Image
root, n, copies = Path(sys.argv[1]) / "train" / "class_0", int(sys.argv[2]), int(sys.argv[3])
root.mkdir(parents=True)
rng = np.random.default_rng(0)
for i in range(n):  # upsampled noise: smooth content, JPEG sizes like photos
    small = Image.fromarray((rng.random((47, 63, 3)) * 255).astype("uint8"))
    small.resize((500, 375), Image.BICUBIC).save(root / f"{i}_0.jpg", quality=90)
    for c in range(1, copies):
        os.link(root / f"{i}_0.jpg", root / f"{i}_{c}.jpg")
EOF
echo "gpu.sh: set-up done after $(($(date +%s) - START)) s; $WORKERS loader workers ($WORKERS_GPU with --gpu_decode)" >&2

COMMON=(--device "$DEV" --amp auto --steps "$STEPS" --warmup "$WARM")
COMPILED=(--device "$DEV" --amp auto --steps "$STEPS" --warmup "$WARM_COMPILED" --compile)
E2E=(--model "$MAE_B" --batch_size "$B" --device "$DEV" --amp auto)
PIPE=(--pipeline --data_path "$TMP/jpegs" --phase pretrain --batch_size "$B" --images "$IMAGES")
# Most important and cheapest first; estimates on an H200 include each run's start-up (~10 s).
# With SETUP_S they add up to 550 s of the 560 s budget (tests/bench/test_gpu_script.py checks).
run mae_b_pretrain 60 --model "$MAE_B" --phase pretrain --batch_size "$B" "${COMMON[@]}" --reference --ablate
run pipeline_pretrain 20 "${PIPE[@]}" --num_workers "$WORKERS"
run pipeline_gpu_decode 20 "${PIPE[@]}" --num_workers "$WORKERS_GPU" --gpu_decode --device "$DEV"
run vit_b_finetune 40 --model "$VIT_B" --phase finetune --batch_size "$B" "${COMMON[@]}" --reference
run_e2e mae_b_e2e_gpu_decode 45 "${E2E[@]}" --num_workers "$WORKERS_GPU" --gpu_decode
run_e2e mae_b_e2e 45 "${E2E[@]}" --num_workers "$WORKERS"
run convmae_b_pretrain 45 --model "$CONV_B" --phase pretrain --batch_size "$B_HALF" "${COMMON[@]}" --reference
run mae_l_pretrain 50 --model "$MAE_L" --phase pretrain --batch_size "$B_HALF" "${COMMON[@]}" --reference
run mae_l_pretrain_ckpt 30 --model "$MAE_L" --phase pretrain --batch_size "$B_HALF" "${COMMON[@]}" --grad_ckpt
run mae_b_pretrain_compile 90 --model "$MAE_B" --phase pretrain --batch_size "$B" "${COMPILED[@]}"
run vit_b_finetune_compile 90 --model "$VIT_B" --phase finetune --batch_size "$B" "${COMPILED[@]}"

collect
"$PY" - "$OUT" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
meta, runs = data["meta"], data["runs"]
ok = sum("result" in r for r in runs)
print(f"gpu.sh: {ok}/{len(runs)} runs measured in {meta['wall_s']} s -> {sys.argv[1]}")
print(f"  {meta['gpu']} (driver {meta['driver']}), torch {meta['torch']}, {meta['cpus']} CPUs, "
      f"/dev/shm free {meta['dev_shm_free_bytes']} B, open files {meta['open_files_soft']}/{meta['open_files_hard']}")
for r in runs:
    res = r.get("result")
    if res is None:
        print(f"  {r['name']:24s} {r['error'].strip().splitlines()[-1] if r['error'].strip() else 'no output'}")
    elif res.get("end_to_end"):
        print(f"  {r['name']:24s} {res['img_per_s']:9.1f} img/s  end to end (epochs: {res['epochs_img_per_s']})")
    elif "step_ms" in res:
        ref = ""
        if "speedup" in res:
            ref = f"  x{res['speedup']:.2f} vs official-style reference ({res['reference']['precision']})"
        if "speedup_fp32" in res:
            ref += f", x{res['speedup_fp32']:.2f} vs fp32"
        mfu = f"  MFU {res['mfu'] * 100:.1f}%" if res.get("mfu") else ""
        print(f"  {r['name']:24s} {res['img_per_s']:9.1f} img/s  {res['peak_mem_mb']:8.0f} MB{mfu}{ref}")
    else:
        dec = f" decode: {res['decode']}" if "decode" in res else ""
        print(f"  {r['name']:24s} {res['img_per_s']:9.1f} img/s ({res['num_workers']} workers, "
              f"at most {res.get('open_files_per_worker')} files open per worker){dec}")
EOF
