#!/usr/bin/env bash
# The Fashion-MNIST chain on CPU: MAE pre-training -> fine-tuning and linear probing, each
# evaluation also from a random-init encoder with the same recipe. Writes OUT/<run>/log.txt
# and OUT/results.md (via summarize_chain.py). Usage: bash benchmarks/fashion_mnist_chain.sh [OUT]
# Epochs per phase: PT_EPOCHS, FT_EPOCHS, LP_EPOCHS (environment). An existing final pre-training
# checkpoint in OUT is reused. Ends with kNN (k=20, T=0.07) of the MAE vs a random-init encoder.
set -euo pipefail
OUT=${1:-runs/fmnist_chain}
mkdir -p "$OUT"
SIZE=(--input_size 28 --patch_size 7 --num_workers 1 --print_freq 50)
PT_EPOCHS=${PT_EPOCHS:-4}
FT_EPOCHS=${FT_EPOCHS:-3}
LP_EPOCHS=${LP_EPOCHS:-2}
FT=(finetune --model vit_tiny_patch16 "${SIZE[@]}" --batch_size 128 --epochs "$FT_EPOCHS" --warmup_epochs 0.5 --blr 2e-3
    --layer_decay 0.9 --drop_path 0.1 --aa none --reprob 0 --crop_min 0.6 --smoothing 0.1)
LP=(linprobe --model vit_tiny_patch16 "${SIZE[@]}" --global_pool --batch_size 256 --epochs "$LP_EPOCHS" --warmup_epochs 0.5
    --blr 1.0 --crop_min 0.35)

CKPT="$OUT/pretrain/checkpoint-$((PT_EPOCHS - 1)).pth"
if [ ! -f "$CKPT" ]; then
  maekit pretrain --model mae_vit_tiny_patch16 "${SIZE[@]}" --norm_pix_loss --batch_size 256 --epochs "$PT_EPOCHS" \
      --warmup_epochs 1 --blr 1e-3 --output_dir "$OUT/pretrain"
fi
maekit "${FT[@]}" --finetune "$CKPT" --output_dir "$OUT/finetune_mae"
maekit "${LP[@]}" --finetune "$CKPT" --output_dir "$OUT/linprobe_mae"
maekit "${FT[@]}" --output_dir "$OUT/finetune_random"
maekit "${LP[@]}" --output_dir "$OUT/linprobe_random"
KNN=(knn --data_path fashion-mnist --pool mean --max_bank 10000 --max_query 2000 --num_workers 1)
maekit "${KNN[@]}" --checkpoint "$CKPT" | tee "$OUT/knn_mae.txt"
maekit "${KNN[@]}" --random_init --model mae_vit_tiny_patch16 --input_size 28 --patch_size 7 | tee "$OUT/knn_random.txt"
python3 "$(dirname "$0")/summarize_chain.py" "$OUT" | tee "$OUT/results.md"
