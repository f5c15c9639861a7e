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
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/gpu-results.json}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
WHEELS=${WHEELS:-wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

if ! $PY -c "import torch, torchvision, timm, tqdm" 2>/dev/null; then
    if [ ! -d "$WHEELS" ]; then
        echo "gpu.sh: torch/torchvision/timm are not importable and there is no wheel folder $WHEELS" >&2
        exit 2
    fi
    $PY -m pip install -q --no-index --find-links "$WHEELS" torch torchvision timm tqdm pillow numpy || exit 2
fi
if [ "${REQUIRE_CUDA:-1}" = 1 ] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA device visible to torch" >&2
    exit 2
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
N=0

# run NAME ESTIMATE_S ARGS...: one `maekit bench --json` with a timeout of the time left.
run() {
    local name=$1 estimate=$2
    shift 2
    N=$((N + 1))
    local left=$((BUDGET_S - ($(date +%s) - START)))
    local f="$TMP/$(printf %02d $N)-$name"
    printf '%s\n' "$@" >"$f.args"
    if [ "$left" -lt "$estimate" ]; then
        echo "skipped: $left s left, needs about $estimate s" >"$f.err"
        echo "gpu.sh: $name skipped ($left s left)" >&2
        return
    fi
    echo "gpu.sh: $name ($left s left)" >&2
    timeout --kill-after=10 "$left" $PY -m maekit bench --json "$@" >"$f.json" 2>"$f.err"
    echo "gpu.sh: $name exit $? after $(($(date +%s) - START)) s" >&2
}

COMMON=(--device cuda --amp auto --steps 20 --warmup 5)
COMPILED=(--device cuda --amp auto --steps 20 --warmup 3 --compile)
# In order of importance: a run that would not fit in the time left is recorded as skipped.
run mae_b_pretrain 40 --model mae_vit_base_patch16 --phase pretrain --batch_size 256 "${COMMON[@]}" --reference
run vit_b_finetune 40 --model vit_base_patch16 --phase finetune --batch_size 256 "${COMMON[@]}" --reference
run convmae_b_pretrain 50 --model convmae_convvit_base_patch16 --phase pretrain --batch_size 128 "${COMMON[@]}" --reference
run mae_b_pretrain_compile 100 --model mae_vit_base_patch16 --phase pretrain --batch_size 256 "${COMPILED[@]}"
run mae_l_pretrain 60 --model mae_vit_large_patch16 --phase pretrain --batch_size 128 "${COMMON[@]}" --reference
# The input pipeline: decode + pre-training augmentation of JPEGs (ImageNet-like 500x375), all cores.
$PY - "$TMP/jpegs" <<'EOF' || true
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1]) / "train" / "class_0"
root.mkdir(parents=True)
rng = np.random.default_rng(0)
for i in range(512):  # upsampled noise: smooth content, JPEG sizes like photos (~100 kB)
    small = Image.fromarray((rng.random((47, 63, 3)) * 255).astype("uint8"))
    small.resize((500, 375), Image.BICUBIC).save(root / f"{i}.jpg", quality=90)
EOF
WORKERS=$($PY -c "import os; print(len(os.sched_getaffinity(0)))")
run pipeline_pretrain 30 --pipeline --data_path "$TMP/jpegs" --phase pretrain --batch_size 128 --num_workers "$WORKERS" --images 4096
run pipeline_gpu_decode 30 --pipeline --gpu_decode --device cuda --data_path "$TMP/jpegs" --phase pretrain --batch_size 128 --num_workers "$WORKERS" --images 4096
run vit_b_finetune_compile 100 --model vit_base_patch16 --phase finetune --batch_size 256 "${COMPILED[@]}"
run mae_l_pretrain_ckpt 30 --model mae_vit_large_patch16 --phase pretrain --batch_size 128 "${COMMON[@]}" --grad_ckpt
run mae_l_pretrain_compile 150 --model mae_vit_large_patch16 --phase pretrain --batch_size 128 "${COMPILED[@]}"

$PY - "$TMP" "$OUT" "$(($(date +%s) - START))" <<'EOF'
import json, subprocess, sys
from pathlib import Path
tmp, out, wall = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
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
        "cuda": torch.version.cuda, "wall_s": wall}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
ok = sum("result" in r for r in runs)
print(f"gpu.sh: {ok}/{len(runs)} runs measured in {wall} s -> {out}")
for r in runs:
    res = r.get("result")
    if res is None:
        print(f"  {r['name']:24s} {r['error'].strip().splitlines()[-1] if r['error'].strip() else 'no output'}")
    elif "step_ms" in res:
        ref = f"  x{res['speedup']:.2f} vs reference" if "speedup" in res else ""
        mfu = f"  MFU {res['mfu'] * 100:.1f}%" if res.get("mfu") else ""
        print(f"  {r['name']:24s} {res['img_per_s']:9.1f} img/s  {res['peak_mem_mb']:8.0f} MB{mfu}{ref}")
    else:
        print(f"  {r['name']:24s} {res['img_per_s']:9.1f} img/s ({res['num_workers']} workers)")
EOF
