#!/usr/bin/env bash
# MAE ViT-B/16 linear probing with the official recipe, one torchrun per node:
# 4 nodes x 8 GPUs x batch 512 = effective batch 16384, blr 0.1 (lr 6.4), 90 epochs, 10 warm-up
# epochs, weight decay 0, LARS on a BatchNorm + Linear head over the frozen encoder's cls token
# (maekit's linear-probing defaults are the official script's). ImageNet top-1: 67.8 (paper),
# 68.08 (PLSC).
#
# Run the same command on every node (settings: see common.sh):
#   NNODES=4 MASTER_ADDR=node0 DATA_PATH=/data/imagenet \
#     PRETRAINED=runs/mae_vit_base_1600ep/checkpoint-1599.pth bash scripts/launch/linprobe.sh
# One node of 8 GPUs: add --accum_iter 4 (512 x 4 x 8 = 16384). DATA_PATH needs train/ and val/
# class folders. PRETRAINED is the pre-training checkpoint (default: the last one
# scripts/launch/pretrain.sh writes; released mae_pretrain_vit_base.pth and PLSC .pd files work
# too). Extra arguments override the recipe; DRY_RUN=1 prints the command.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH="${DATA_PATH:-/data/imagenet}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/vit_base_linprobe_90ep}"
PRETRAINED="${PRETRAINED:-runs/mae_vit_base_1600ep/checkpoint-1599.pth}"

recipe=(--batch_size 512 --model vit_base_patch16 --cls_token --finetune "$PRETRAINED"
        --epochs 90 --warmup_epochs 10 --blr 0.1 --weight_decay 0.0 --dist_eval)
maekit_launch linprobe "${recipe[@]}" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" "$@"
