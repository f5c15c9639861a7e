#!/usr/bin/env bash
# MAE ViT-B/16 pre-training with the seed's PLSC recipe, one torchrun per node:
# 4 nodes x 8 GPUs x batch 128 = effective batch 4096, blr 1.5e-4 (lr 2.4e-3), 1600 epochs,
# 40 warm-up epochs, normalised-pixel loss, 75% masking.
#
# Run the same command on every node (settings: see common.sh; PADDLE_NNODES, PADDLE_MASTER and
# CUDA_VISIBLE_DEVICES from PLSC's scripts work too):
#   NNODES=4 MASTER_ADDR=node0 DATA_PATH=/data/imagenet bash scripts/launch/pretrain.sh
# Extra arguments are appended to maekit's flags, so they override the recipe (the last value
# wins), e.g. `... pretrain.sh --epochs 800`. DRY_RUN=1 prints the command instead.
# On fewer GPUs keep the effective batch with --accum_iter (e.g. 1 node of 8: --accum_iter 4).
# Interrupted or preempted runs continue from OUTPUT_DIR when the same command is run again.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH="${DATA_PATH:-/data/imagenet}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/mae_vit_base_1600ep}"

recipe=(--accum_iter 1 --batch_size 128 --model mae_vit_base_patch16 --norm_pix_loss
        --mask_ratio 0.75 --epochs 1600 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05)
maekit_launch pretrain "${recipe[@]}" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" "$@"
