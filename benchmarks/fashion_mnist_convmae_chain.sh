#!/usr/bin/env bash
# The ConvMAE-small Fashion-MNIST chain on CPU (~30-40 CPU-minutes): ConvMAE pre-training ->
# ConvViT fine-tuning and linear probing, each also from a random-init encoder with the same
# recipe. 32 px input (Fashion-MNIST resized), overall stride 8 (16 tokens). Epochs are capped
# with --max_train_step to fit the CPU. Usage: bash benchmarks/fashion_mnist_convmae_chain.sh [OUT]
set -euo pipefail
OUT=${1:-runs/fmnist_convmae}
mkdir -p "$OUT"
S=(--input_size 32 --patch_size 8 --num_workers 1 --print_freq 10)
FT=(finetune --model convvit_small_patch16 "${S[@]}" --batch_size 128 --epochs 1 --max_train_step 35 --warmup_epochs 0.2
    --blr 1e-3 --layer_decay 0.75 --drop_path 0.1 --aa none --reprob 0 --crop_min 0.35 --smoothing 0.1)
LP=(linprobe --model convvit_small_patch16 "${S[@]}" --batch_size 256 --epochs 1 --max_train_step 15 --warmup_epochs 0.2
    --blr 1.0 --crop_min 0.35)
CKPT="$OUT/pretrain/checkpoint-3.pth"
maekit pretrain --model convmae_convvit_small_patch16 "${S[@]}" --norm_pix_loss --batch_size 64 --epochs 4 \
    --max_train_step 50 --warmup_epochs 1 --blr 1e-3 --output_dir "$OUT/pretrain"
maekit "${FT[@]}" --finetune "$CKPT" --output_dir "$OUT/finetune_mae"
maekit "${LP[@]}" --finetune "$CKPT" --output_dir "$OUT/linprobe_mae"
maekit "${FT[@]}" --output_dir "$OUT/finetune_random"
maekit "${LP[@]}" --output_dir "$OUT/linprobe_random"
python3 "$(dirname "$0")/summarize_chain.py" "$OUT" | tee "$OUT/results.md"
