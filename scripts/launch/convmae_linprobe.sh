#!/usr/bin/env bash
# ConvViT-Base linear probing of a ConvMAE encoder (global pooling, as the official ConvMAE),
# otherwise the MAE linear-probe recipe, one torchrun per node: 4 nodes x 8 GPUs x batch 512 =
# effective batch 16384, blr 0.1 (lr 6.4), 90 epochs, 10 warm-up epochs, weight decay 0, LARS.
# ImageNet top-1: 70.9 (paper), 71.4 (PLSC).
#
# Run the same command on every node (settings: see common.sh):
#   NNODES=4 MASTER_ADDR=node0 DATA_PATH=/data/imagenet \
#     PRETRAINED=runs/convmae_base_1600ep/checkpoint-1599.pth bash scripts/launch/convmae_linprobe.sh
# One node of 8 GPUs: add --accum_iter 4 (512 x 4 x 8 = 16384). Extra arguments override the
# recipe; DRY_RUN=1 prints the command.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATA_PATH="${DATA_PATH:-/data/imagenet}"
OUTPUT_DIR="${OUTPUT_DIR:-runs/convvit_base_linprobe_90ep}"
PRETRAINED="${PRETRAINED:-runs/convmae_base_1600ep/checkpoint-1599.pth}"

recipe=(--batch_size 512 --model convvit_base_patch16 --global_pool --finetune "$PRETRAINED"
        --epochs 90 --warmup_epochs 10 --blr 0.1 --weight_decay 0.0 --dist_eval)
maekit_launch linprobe "${recipe[@]}" --data_path "$DATA_PATH" --output_dir "$OUTPUT_DIR" "$@"
