#!/usr/bin/env bash
# ViT-B/16 fine-tuning with the official MAE recipe, one torchrun per node:
# 4 nodes x 8 GPUs x batch 32 = effective batch 1024, blr 5e-4 (lr 2e-3), 100 epochs,
# layer decay 0.65, drop path 0.1, mixup 0.8 / cutmix 1.0, random erasing 0.25 (the other
# settings are maekit's fine-tuning defaults, which are the official script's: 5 warm-up epochs,
# RandAugment rand-m9-mstd0.5-inc1, label smoothing 0.1, min lr 1e-6, global pooling).
#
# Run the same command on every node (settings: see common.sh):
#   NNODES=4 MASTER_ADDR=node0 DATA_PATH=/data/imagenet \
#     PRETRAINED=runs/mae_vit_base_1600ep/checkpoint-1599.pth bash scripts/launch/finetune.sh
# DATA_PATH needs train/ and val/ class folders. PRETRAINED is the pre-training checkpoint
# (default: the last one scripts/launch/pretrain.sh writes; released mae_pretrain_vit_base.pth
# and PLSC .pd files work too). Extra arguments override the recipe; DRY_RUN=1 prints the command.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH="${DATA_PATH:-/data/imagenet}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/vit_base_finetune_100ep}"
PRETRAINED="${PRETRAINED:-runs/mae_vit_base_1600ep/checkpoint-1599.pth}"

recipe=(--batch_size 32 --model vit_base_patch16 --finetune "$PRETRAINED" --epochs 100
        --blr 5e-4 --layer_decay 0.65 --weight_decay 0.05 --drop_path 0.1 --mixup 0.8
        --cutmix 1.0 --reprob 0.25 --dist_eval)
maekit_launch finetune "${recipe[@]}" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" "$@"
