#!/usr/bin/env bash
# Shared by the launch scripts of this folder (sourced, not run by itself).
# maekit_launch PHASE [maekit flags...] starts `torchrun ... -m maekit PHASE [flags...]` on this
# node, or prints that command when DRY_RUN=1. Run the same script on every node.
#
# Settings, from the environment (the seed's PLSC variables are read when ours are unset):
#   NNODES          number of nodes                 [PADDLE_NNODES, else 1]
#   NPROC_PER_NODE  processes (one per GPU)         [how many devices CUDA_VISIBLE_DEVICES lists,
#                                                    else "gpu": torchrun counts the node's GPUs]
#   MASTER_ADDR     host name or IP of node 0       [host part of PADDLE_MASTER, else 127.0.0.1;
#                                                    must be given when NNODES > 1]
#   MASTER_PORT     rendezvous port on node 0       [port part of PADDLE_MASTER, else 29500]
#   RUN_ID          rendezvous id, same on all nodes [SLURM_JOB_ID, else maekit_PHASE]
#   RDZV_BACKEND    c10d: torchrun numbers the nodes itself (recommended); static: fixed
#                   NODE_RANK per node, as PLSC's launcher does [c10d]
#   NODE_RANK       this node's rank, static backend only [SLURM_NODEID, else 0]
#   TORCHRUN        the launcher command            [torchrun]
#   DRY_RUN=1       print the command and exit
# CUDA_VISIBLE_DEVICES itself is left exported as it is: torchrun's local rank i uses the i-th
# listed GPU, exactly like PLSC's --devices.
set -euo pipefail

# Graceful stop: on SIGTERM torchrun forwards SIGTERM to its workers (maekit then saves a
# mid-epoch checkpoint-last.pth and exits 0) and waits this many seconds before SIGKILL.
# torchrun's default of 30 s can be too short for a big model's save (recent torch reads this
# variable, e.g. 2.14; older versions always wait 30 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}"

launch_die() {
  echo "maekit launch: $*" >&2
  exit 2
}

# One argument as the shell would need it: plain words as they are, anything else quoted.
launch_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf '%q' "$1"
  fi
}

maekit_launch() {
  local phase="$1"
  shift

  # Nodes: ours, else the seed's PADDLE_NNODES.
  local nnodes="${NNODES:-${PADDLE_NNODES:-1}}"
  [[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || launch_die "NNODES must be a positive integer, got '$nnodes'"

  # Processes per node: ours, else one per GPU that CUDA_VISIBLE_DEVICES lists (PLSC's
  # --devices=$CUDA_VISIBLE_DEVICES), else torchrun's "gpu" (all GPUs of the node).
  local nproc="${NPROC_PER_NODE:-}"
  if [[ -z "$nproc" && -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    local devices=()
    IFS=, read -r -a devices <<<"$CUDA_VISIBLE_DEVICES"
    nproc="${#devices[@]}"
  fi
  nproc="${nproc:-gpu}"
  [[ "$nproc" =~ ^([1-9][0-9]*|gpu|cpu|auto)$ ]] ||
    launch_die "NPROC_PER_NODE must be a positive integer (or gpu, cpu, auto), got '$nproc'"

  # Rendezvous endpoint: MASTER_ADDR/MASTER_PORT, else the seed's PADDLE_MASTER=host:port.
  local paddle_host="" paddle_port=""
  if [[ -n "${PADDLE_MASTER:-}" ]]; then
    [[ "$PADDLE_MASTER" == *://* ]] &&
      launch_die "PADDLE_MASTER=$PADDLE_MASTER is an elastic (etcd) URL; set MASTER_ADDR and MASTER_PORT"
    paddle_host="${PADDLE_MASTER%:*}"
    [[ "$PADDLE_MASTER" == *:* ]] && paddle_port="${PADDLE_MASTER##*:}"
  fi
  local addr="${MASTER_ADDR:-$paddle_host}"
  local port="${MASTER_PORT:-${paddle_port:-29500}}"
  if [[ -z "$addr" ]]; then
    ((nnodes == 1)) || launch_die "NNODES=$nnodes needs node 0's address: set MASTER_ADDR (or PADDLE_MASTER=host:port)"
    addr=127.0.0.1
  fi
  [[ "$port" =~ ^[0-9]+$ ]] || launch_die "MASTER_PORT must be a port number, got '$port'"

  local backend="${RDZV_BACKEND:-c10d}"
  local cmd=()
  read -r -a cmd <<<"${TORCHRUN:-torchrun}"
  cmd+=(--nnodes "$nnodes" --nproc_per_node "$nproc")
  case "$backend" in
    c10d) ;;  # torchrun assigns the node ranks itself; --node_rank would only be ignored
    static) cmd+=(--node_rank "${NODE_RANK:-${SLURM_NODEID:-0}}") ;;
    *) launch_die "RDZV_BACKEND must be c10d or static, got '$backend'" ;;
  esac
  cmd+=(--rdzv_backend "$backend" --rdzv_endpoint "$addr:$port" --rdzv_id "${RUN_ID:-${SLURM_JOB_ID:-maekit_$phase}}")
  cmd+=(-m maekit "$phase" "$@")

  local line="" arg
  [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]] && line="CUDA_VISIBLE_DEVICES=$(launch_quote "$CUDA_VISIBLE_DEVICES") "
  for arg in "${cmd[@]}"; do
    line+="$(launch_quote "$arg") "
  done
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "${line% }"
    return 0
  fi
  echo "maekit launch: ${line% }" >&2
  # exec: signals sent to this script (srun, kill) reach torchrun itself.
  exec "${cmd[@]}"
}
