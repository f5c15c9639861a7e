#!/usr/bin/env bash
# ConvViT-Base fine-tuning from a ConvMAE checkpoint, with the official recipe (that of MAE
# ViT-B), one torchrun per node: 4 nodes x 8 GPUs x batch 32 = effective batch 1024, blr 5e-4
# (lr 2e-3), 100 epochs, layer decay 0.65 (the official ConvViT layer ids; --layer_decay_rule
# plsc for PLSC's), drop path 0.1, mixup 0.8 / cutmix 1.0, random erasing 0.25, global pooling.
# ImageNet top-1: 85.0 (paper).
#
# Run the same command on every node (settings: see common.sh):
#   NNODES=4 MASTER_ADDR=node0 DATA_PATH=/data/imagenet \
#     PRETRAINED=runs/convmae_base_1600ep/checkpoint-1599.pth bash scripts/launch/convmae_finetune.sh
# One node of 8 GPUs: add --accum_iter 4 (32 x 4 x 8 = 1024). Extra arguments override the
# recipe; DRY_RUN=1 prints the command.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH="${DATA_PATH:-/data/imagenet}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/convvit_base_finetune_100ep}"
PRETRAINED="${PRETRAINED:-runs/convmae_base_1600ep/checkpoint-1599.pth}"

recipe=(--batch_size 32 --model convvit_base_patch16 --finetune "$PRETRAINED" --epochs 100
        --blr 5e-4 --layer_decay 0.65 --weight_decay 0.05 --drop_path 0.1 --mixup 0.8
        --cutmix 1.0 --reprob 0.25 --dist_eval)
maekit_launch finetune "${recipe[@]}" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" "$@"
