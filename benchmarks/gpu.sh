#!/usr/bin/env bash
# The speed matrix on one GPU (made for an H100/H200), in under 8 minutes, into one JSON file.
#
#   bash benchmarks/gpu.sh [OUT.json]
#
# Needs torch (CUDA build), torchvision and timm importable; if they are not, they are installed
# offline from the wheels in $WHEELS (default: ./wheels), e.g. prepared elsewhere with
#   pip download -d wheels torch torchvision timm tqdm pillow numpy
# maekit itself runs from this checkout (no install). Each run is `maekit bench --json`; a run
# that fails or overruns is recorded with its error and the matrix goes on. Runs that would not
# fit in the time left ($BUDGET_S, default 450 s) are recorded as skipped (BUDGET_S=0
# REQUIRE_CUDA=0 checks the script itself on any machine: every run skipped, the JSON written).
# SMOKE=1 runs the whole matrix on the CPU with tiny models, images and step counts, so every
# command line is exercised before device time is spent on it (the CUDA-only runs fail there
# and their error is recorded); COMPILE=0 records the --compile runs as skipped (they take
# ~45 s each to compile on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${1:-benchmarks/gpu-results.json}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
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
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 0 ] && [ "${REQUIRE_CUDA:-1}" = 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA device visible to torch" >&2
    exit 2
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
N=0

# The matrix's sizes; SMOKE=1 shrinks them to seconds on a CPU.
DEV=cuda MAE_B=mae_vit_base_patch16 VIT_B=vit_base_patch16 CONV_B=convmae_convvit_base_patch16
MAE_L=mae_vit_large_patch16 B=256 B_HALF=128 STEPS=20 WARM=5 WARM_COMPILED=3 IMAGES=4096 JPEGS=512 COPIES=32 E2E_EPOCHS=3
WORKERS=$("$PY" -c "import os; print(len(os.sched_getaffinity(0)))")
SIZE=()  # appended to every command
if [ "$SMOKE" = 1 ]; then
    DEV=cpu MAE_B=mae_vit_tiny_patch16 VIT_B=vit_tiny_patch16 CONV_B=convmae_convvit_small_patch16
    MAE_L=mae_vit_tiny_patch16 B=4 B_HALF=2 STEPS=1 WARM=1 WARM_COMPILED=1 IMAGES=8 JPEGS=8 COPIES=2 E2E_EPOCHS=2 WORKERS=1
    SIZE=(--input_size 64)
fi

# due NAME ESTIMATE_S ARGS...: sets $f (the run's file stem) and $left; fails if the run must be
# skipped for want of time (recorded as such).
due() {
    local name=$1 estimate=$2
    shift 2
    N=$((N + 1))
    left=$((BUDGET_S - ($(date +%s) - START)))
    f="$TMP/$(printf %02d $N)-$name"
    printf '%s\n' "$@" >"$f.args"
    if [ "$left" -lt "$estimate" ]; then
        echo "skipped: $left s left, needs about $estimate s" >"$f.err"
        echo "gpu.sh: $name skipped ($left s left)" >&2
        return 1
    fi
    if [ "${COMPILE:-1}" = 0 ] && [[ " $* " == *" --compile "* ]]; then
        echo "skipped: COMPILE=0" >"$f.err"
        return 1
    fi
    echo "gpu.sh: $name ($left s left)" >&2
}

# run NAME ESTIMATE_S ARGS...: one `maekit bench --json` with a timeout of the time left.
run() {
    due "$@" || return 0
    shift 2
    timeout --kill-after=10 "$left" "$PY" -m maekit bench --json "$@" "${SIZE[@]}" >"$f.json" 2>"$f.err"
    echo "gpu.sh: exit $? after $(($(date +%s) - START)) s" >&2
}

# run_e2e NAME ESTIMATE_S ARGS...: end to end, `maekit pretrain` from the JPEG folder for
# $E2E_EPOCHS epochs. Its result is the last epoch's train_img_per_s from log.txt: the first
# epoch also holds worker start-up, cuDNN autotuning and the allocator's growth.
run_e2e() {
    due "$@" || return 0
    shift 2
    timeout --kill-after=10 "$left" "$PY" -m maekit pretrain --data_path "$TMP/jpegs" --output_dir "$f-out" \
        --epochs "$E2E_EPOCHS" --warmup_epochs 1 --print_freq 1000 "$@" "${SIZE[@]}" >"$f.log" 2>"$f.err"
    local rc=$?
    echo "gpu.sh: exit $rc after $(($(date +%s) - START)) s" >&2
    [ $rc = 0 ] && "$PY" -c '
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(json.dumps({"end_to_end": True, "img_per_s": rows[-1]["train_img_per_s"],
                  "epochs_img_per_s": [r["train_img_per_s"] for r in rows],
                  "epoch_time_s": [r["epoch_time_s"] for r in rows],
                  "train_loss": [r["train_loss"] for r in rows]}))' "$f-out/log.txt" >"$f.json" 2>>"$f.err"
    rm -rf "$f-out"  # ViT-B checkpoints with optimizer state: 1.3 GB each
}

# The JPEGs (ImageNet-like 500x375, ~100 kB): $JPEGS distinct files, hard-linked $COPIES times
# into one class folder (decode cost is per file read; this keeps the writing short).
"$PY" - "$TMP/jpegs" "$JPEGS" "$COPIES" <<'EOF' || true
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

COMMON=(--device "$DEV" --amp auto --steps "$STEPS" --warmup "$WARM")
COMPILED=(--device "$DEV" --amp auto --steps "$STEPS" --warmup "$WARM_COMPILED" --compile)
E2E=(--model "$MAE_B" --batch_size "$B" --device "$DEV" --amp auto --num_workers "$WORKERS")
# In order of importance: a run that would not fit in the time left is recorded as skipped.
run mae_b_pretrain 70 --model "$MAE_B" --phase pretrain --batch_size "$B" "${COMMON[@]}" --reference --ablate
run vit_b_finetune 40 --model "$VIT_B" --phase finetune --batch_size "$B" "${COMMON[@]}" --reference
run convmae_b_pretrain 50 --model "$CONV_B" --phase pretrain --batch_size "$B_HALF" "${COMMON[@]}" --reference
run_e2e mae_b_e2e_gpu_decode 60 "${E2E[@]}" --gpu_decode
run_e2e mae_b_e2e 60 "${E2E[@]}"
run mae_b_pretrain_compile 100 --model "$MAE_B" --phase pretrain --batch_size "$B" "${COMPILED[@]}"
run mae_l_pretrain 60 --model "$MAE_L" --phase pretrain --batch_size "$B_HALF" "${COMMON[@]}" --reference
# The input pipeline alone: decode + pre-training augmentation, all cores; then on the GPU.
PIPE=(--pipeline --data_path "$TMP/jpegs" --phase pretrain --batch_size "$B_HALF" --num_workers "$WORKERS" --images "$IMAGES")
run pipeline_pretrain 30 "${PIPE[@]}"
run pipeline_gpu_decode 30 "${PIPE[@]}" --gpu_decode --device cuda
run vit_b_finetune_compile 100 --model "$VIT_B" --phase finetune --batch_size "$B" "${COMPILED[@]}"
run mae_l_pretrain_ckpt 30 --model "$MAE_L" --phase pretrain --batch_size "$B_HALF" "${COMMON[@]}" --grad_ckpt
run mae_l_pretrain_compile 150 --model "$MAE_L" --phase pretrain --batch_size "$B_HALF" "${COMPILED[@]}"

"$PY" - "$TMP" "$OUT" "$(($(date +%s) - START))" "$SMOKE" <<'EOF'
import json, subprocess, sys
from pathlib import Path
tmp, out, wall, smoke = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
runs = []
for args in sorted(tmp.glob("*.args")):
    stem = args.with_suffix("")
    rec = {"name": stem.name[3:], "args": args.read_text().split("\n")[:-1]}
    js, err = Path(f"{stem}.json"), Path(f"{stem}.err")
    text = js.read_text().strip() if js.exists() else ""
    try:
        rec["result"] = json.loads(text.splitlines()[-1])
    except (IndexError, ValueError):
        rec["error"] = (err.read_text() if err.exists() else "")[-2000:]
    runs.append(rec)
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    smi = ""
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
meta = {"gpu": gpu, "nvidia_smi": smi, "torch": torch.__version__,
        "cuda": torch.version.cuda, "wall_s": wall, "smoke": smoke}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
ok = sum("result" in r for r in runs)
print(f"gpu.sh: {ok}/{len(runs)} runs measured in {wall} s -> {out}")
for r in runs:
    res = r.get("result")
    if res is None:
        print(f"  {r['name']:24s} {r['error'].strip().splitlines()[-1] if r['error'].strip() else 'no output'}")
    elif res.get("end_to_end"):
        print(f"  {r['name']:24s} {res['img_per_s']:9.1f} img/s  end to end (epochs: {res['epochs_img_per_s']})")
    elif "step_ms" in res:
        ref = f"  x{res['speedup']:.2f} vs reference" if "speedup" in res else ""
        mfu = f"  MFU {res['mfu'] * 100:.1f}%" if res.get("mfu") else ""
        print(f"  {r['name']:24s} {res['img_per_s']:9.1f} img/s  {res['peak_mem_mb']:8.0f} MB{mfu}{ref}")
    else:
        print(f"  {r['name']:24s} {res['img_per_s']:9.1f} img/s ({res['num_workers']} workers)")
EOF
