"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by tests/engine/test_fsdp.py.

Writes ``<out>/rank<r>.json`` with the measured differences; the test asserts on them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from maekit.engine.distributed import DistEnv, shutdown
from maekit.engine.fastpath import enable_grad_checkpointing
from maekit.engine.fsdp import fsdp_units, full_state, gathered, load_full_state, wrap_model
from maekit.engine.precision import Precision
from maekit.models import create_model


def build(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8, norm_pix_loss=True)


def step(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(123)  # the same random mask in every variant
    loss = model(x, mask_ratio=0.75)[0]
    loss.backward()
    return loss.detach()


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    res: dict = {}
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(rank))  # own data

    # Reference: an unsharded model on this rank, gradients averaged over ranks (what DDP does).
    ref = build()
    ref_loss = step(ref, x)
    ref_grads = {}
    for n, p in ref.named_parameters():
        if p.grad is not None:
            g = p.grad.clone()
            dist.all_reduce(g)
            ref_grads[n] = g / world

    grads, losses = {}, {}
    for ckpt in (False, True):
        m = build()
        if ckpt:
            enable_grad_checkpointing(m)
        wrap_model(m, env, "fsdp", Precision(None, "cpu"))
        losses[ckpt] = step(m, x)
        grads[ckpt] = full_grads(m)
    # --amp bf16: FSDP's mixed-precision policy computes in bf16, keeps fp32 master weights.
    m = wrap_model(build(), env, "fsdp", Precision(torch.bfloat16, "cpu"))
    with Precision(torch.bfloat16, "cpu").autocast():
        bf16_loss = step(m, x)
    res["bf16_loss_diff"] = float((bf16_loss.float() - losses[False]).abs())
    res["bf16_master_dtypes"] = sorted({str(p.dtype) for p in m.parameters()})
    res["bf16_grads_finite"] = all(bool(g.isfinite().all()) for g in full_grads(m).values())
    res["n_units"] = len(fsdp_units(build()))
    res["loss_ckpt_diff"] = float((losses[True] - losses[False]).abs())
    res["loss_ref_diff"] = float((losses[False] - ref_loss).abs())
    res["grad_names_equal"] = sorted(grads[True]) == sorted(grads[False]) == sorted(ref_grads)
    res["grad_ckpt_diff"] = max(
        float((grads[True][n] - grads[False][n]).abs().max()) for n in ref_grads
    )
    res["grad_ref_diff"] = max(
        float((grads[False][n] - ref_grads[n]).abs().max()) for n in ref_grads
    )

    # Full state out and back in: a fresh sharded model + optimizer continues identically.
    m = wrap_model(build(), env, "fsdp")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    step(m, x)
    opt.step()
    msd, osd = full_state(m, opt)
    box = [msd, osd]
    dist.broadcast_object_list(box, src=0)  # every rank loads the same full tensors
    m2 = wrap_model(build(seed=1), env, "fsdp")
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    load_full_state(m2, box[0], opt2, box[1])
    for model, o in ((m, opt), (m2, opt2)):
        o.zero_grad()
        step(model, x)
        o.step()
    a, b = full_state(m, opt), full_state(m2, opt2)
    if rank == 0:
        res["reload_weight_diff"] = max(float((a[0][k] - b[0][k]).abs().max()) for k in a[0])
        res["reload_exp_avg_diff"] = max(
            float((a[1]["state"][i]["exp_avg"] - b[1]["state"][i]["exp_avg"]).abs().max())
            for i in a[1]["state"]
        )
        res["reload_steps"] = [float(a[1]["state"][0]["step"]), float(b[1]["state"][0]["step"])]
        plain = torch.optim.AdamW(build().parameters(), lr=1e-3)
        plain.load_state_dict(a[1])  # torch's integer-id format: loads into a plain optimizer
        res["plain_optimizer_loads"] = True

    # Uneven evaluation under gathered(): rank 0 runs two forwards, rank 1 one; no collectives.
    box = [b[0]]
    dist.broadcast_object_list(box, src=0)  # m2's current weights, gathered
    plain = build(seed=1)
    plain.load_state_dict(box[0])
    m2.eval()
    diffs = []
    with torch.no_grad(), gathered(m2):
        for i in range(2 if rank == 0 else 1):
            xi = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(10 + i))
            torch.manual_seed(7)
            got = m2.forward_encoder(xi, 0.0)[0]
            torch.manual_seed(7)
            want = plain.forward_encoder(xi, 0.0)[0]
            diffs.append(float((got - want).abs().max()))
    res["gathered_eval_diff"] = max(diffs)
    dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(res))
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
