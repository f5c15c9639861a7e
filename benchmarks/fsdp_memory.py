"""Peak memory per process of MAE pre-training steps under ddp, fsdp and fsdp + --grad_ckpt.

Run under torchrun on CPU (gloo) or GPUs (nccl); one JSON line per run on rank 0:

    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_memory.py \
        --model mae_vit_large_patch16 --mode fsdp --grad_ckpt --batch_size 2

The model is built, wrapped and given its AdamW optimizer (as `maekit pretrain` does), then
the peak is reset and ``--steps`` full training steps (forward, backward, optimizer) run.
Reported per process: the peak resident memory during the steps (CPU, /proc VmHWM after a
reset through /proc/self/clear_refs) or the peak CUDA allocation (GPU); the maximum over ranks.
``--mode none`` runs without any wrapper (one process: the floor a ddp rank cannot go below).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import time

import torch
import torch.distributed as dist

from maekit.engine.distributed import init_distributed, shutdown
from maekit.engine.fastpath import enable_grad_checkpointing
from maekit.engine.fsdp import wrap_model
from maekit.engine.optim import build_adamw, weight_decay_groups
from maekit.engine.precision import resolve_precision
from maekit.models import create_model


def rss_peak_mb() -> float:
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def rss_now_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        # Hand freed heap memory back first (e.g. the full weights fsdp just sharded), so the
        # resident size counts live memory only.
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_peak_mb()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mae_vit_large_patch16")
    p.add_argument("--mode", choices=("ddp", "fsdp", "none"), default="fsdp")
    p.add_argument("--grad_ckpt", action="store_true")
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--amp", default="auto")
    p.add_argument("--device", default="auto")
    a = p.parse_args()

    env = init_distributed(a.device)
    precision = resolve_precision(a.amp, env.device)
    torch.manual_seed(0)
    model = create_model(a.model, img_size=a.input_size, norm_pix_loss=True).to(env.device)
    n_params = sum(p.numel() for p in model.parameters())
    if a.grad_ckpt:
        enable_grad_checkpointing(model)
    wrapped = model if a.mode == "none" else wrap_model(model, env, a.mode, precision)
    opt = build_adamw(weight_decay_groups(model, 0.05), 1e-4, betas=(0.9, 0.95), device=env.device)
    x = torch.randn(a.batch_size, 3, a.input_size, a.input_size, device=env.device)
    rss_mb = rss_now_mb() if env.device.type == "cpu" else 0.0
    reset_peak(env.device)
    base_mb = rss_now_mb() if env.device.type == "cpu" else 0.0
    start = time.perf_counter()
    for _ in range(a.steps):
        with precision.autocast():
            loss = wrapped(x, mask_ratio=0.75)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step_s = (time.perf_counter() - start) / a.steps
    peak = torch.tensor([peak_mb(env.device)], dtype=torch.float64, device=env.device)
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if env.is_main:
        print(
            json.dumps(
                {
                    "model": a.model,
                    "params_m": round(n_params / 1e6, 1),
                    "mode": a.mode,
                    "grad_ckpt": a.grad_ckpt,
                    "processes": env.world_size,
                    "batch_size": a.batch_size,
                    "input_size": a.input_size,
                    "precision": precision.name,
                    "device": str(env.device),
                    "peak_mb_per_process": round(float(peak), 0),
                    "rss_before_steps_mb": round(base_mb),
                    "rss_before_trim_mb": round(rss_mb),
                    "step_s": round(step_s, 2),
                    "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
                }
            ),
            flush=True,
        )
    shutdown()


if __name__ == "__main__":
    main()
