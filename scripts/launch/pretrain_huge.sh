#!/usr/bin/env bash
# MAE ViT-H/14 pre-training: the ViT-B recipe (effective batch 4096, blr 1.5e-4, 1600 epochs,
# 40 warm-up epochs, normalised-pixel loss, 75% masking) on 4 nodes x 8 GPUs x batch 128, with
# the weights, gradients and optimizer state sharded across all GPUs (--dist_mode fsdp: FSDP2,
# one shard unit per transformer block) and activation checkpointing (--grad_ckpt) to fit.
# If batch 128 does not fit, halve it and double --accum_iter (same effective batch).
#
# Run the same command on every node (settings: see common.sh):
#   NNODES=4 MASTER_ADDR=node0 DATA_PATH=/data/imagenet bash scripts/launch/pretrain_huge.sh
# Extra arguments override the recipe; DRY_RUN=1 prints the command.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH="${DATA_PATH:-/data/imagenet}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/mae_vit_huge_1600ep}"

recipe=(--accum_iter 1 --batch_size 128 --model mae_vit_huge_patch14 --norm_pix_loss
        --mask_ratio 0.75 --epochs 1600 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05
        --dist_mode fsdp --grad_ckpt)
maekit_launch pretrain "${recipe[@]}" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" "$@"
