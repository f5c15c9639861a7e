#!/usr/bin/env bash
# ConvMAE-Base pre-training with the official ConvMAE recipe, one torchrun per node. The
# official run used batch 128 x 24 GPUs = effective batch 3072; on 4 nodes x 8 GPUs this script
# keeps that batch with 96 per GPU (96 x 32 = 3072): blr 1.5e-4 (lr 1.8e-3), 1600 epochs, 40
# warm-up epochs, normalised-pixel loss, 75% masking.
#
# Run the same command on every node (settings: see common.sh):
#   NNODES=4 MASTER_ADDR=node0 DATA_PATH=/data/imagenet bash scripts/launch/convmae_pretrain.sh
# One node of 8 GPUs: add --accum_iter 4 (96 x 4 x 8 = 3072). Extra arguments override the
# recipe (the last value wins); DRY_RUN=1 prints the command. Interrupted or preempted runs
# continue from OUTPUT_DIR when the same command is run again.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH="${DATA_PATH:-/data/imagenet}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/convmae_base_1600ep}"

recipe=(--accum_iter 1 --batch_size 96 --model convmae_convvit_base_patch16 --norm_pix_loss
        --mask_ratio 0.75 --epochs 1600 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05)
maekit_launch pretrain "${recipe[@]}" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" "$@"
