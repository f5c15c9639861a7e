"""--dist_mode fsdp (maekit/engine/fsdp.py): FSDP2 units, gradients, activation
checkpointing, full-state round trips and gathered evaluation, on CPU with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maekit.engine.distributed import DistEnv
from maekit.engine.fsdp import _to_integer_ids, _to_names, fsdp_units, wrap_model
from maekit.errors import MaekitError
from maekit.models import create_model
from tests.conftest import REPO


def tiny_mae() -> torch.nn.Module:
    return create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8)


def test_every_block_is_a_unit() -> None:
    m = tiny_mae()
    units = fsdp_units(m)
    assert len(units) == len(m.blocks) + len(m.decoder_blocks)
    assert all(type(u).__name__ == "Block" for u in units)
    # timm's ViT keeps its blocks in an nn.Sequential; a linear-probe head (BatchNorm1d, Linear)
    # is not a block container.
    from maekit.phases.linprobe import attach_probe_head

    vit = attach_probe_head(
        create_model("vit_tiny_patch16", img_size=32, patch_size=8, num_classes=3)
    )
    assert fsdp_units(vit) == list(vit.blocks)
    conv = create_model("convvit_small_patch16", img_size=32, patch_size=4, num_classes=3)
    assert len(fsdp_units(conv)) == len(conv.blocks1) + len(conv.blocks2) + len(conv.blocks3)


def test_single_process_and_bad_mode() -> None:
    m = tiny_mae()
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    assert wrap_model(m, env, "fsdp") is m  # nothing to shard across one process
    with pytest.raises(MaekitError, match="unknown --dist_mode 'zero3'; use ddp or fsdp"):
        wrap_model(m, env, "zero3")


def test_optimizer_state_names_and_integer_ids_round_trip() -> None:
    """The integer ids follow torch's own numbering (param-group order), both ways."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    m = tiny_mae()
    decay = [p for n, p in m.named_parameters() if p.ndim > 1 and p.requires_grad]
    no_decay = [p for n, p in m.named_parameters() if p.ndim <= 1 and p.requires_grad]
    opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0}, {"params": decay}], lr=1e-3)
    m(torch.randn(2, 3, 32, 32))[0].backward()
    opt.step()
    by_name = get_optimizer_state_dict(m, opt)
    by_id = _to_integer_ids(by_name, opt, m)
    own = opt.state_dict()
    assert [g["params"] for g in by_id["param_groups"]] == [
        g["params"] for g in own["param_groups"]
    ]
    assert by_id["state"].keys() == own["state"].keys()
    for i, s in own["state"].items():
        assert torch.equal(by_id["state"][i]["exp_avg"], s["exp_avg"])
        assert by_id["state"][i]["step"] is not s["step"]  # a copy, not the live counter
    back = _to_names(own, opt, m)
    assert back["param_groups"][0]["params"] == by_name["param_groups"][0]["params"]
    for name, s in back["state"].items():
        assert torch.equal(s["exp_avg_sq"], by_name["state"][name]["exp_avg_sq"])
    other = torch.optim.AdamW(m.parameters(), lr=1e-3)  # one group instead of two
    with pytest.raises(MaekitError, match="other parameter groups"):
        _to_names(own, other, m)


@pytest.mark.slow
def test_fsdp_two_processes(tmp_path: Path) -> None:
    """Under torchrun x2 (tests/engine/fsdp_worker.py): the sharded gradients equal the
    rank-averaged gradients of an unsharded model; --grad_ckpt gives the same loss and
    gradients; a full state saved and loaded into a fresh sharded model + optimizer continues
    identically and loads into a plain optimizer; gathered() evaluates uneven batch counts
    without collectives and matches the unsharded model."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "engine" / "fsdp_worker.py"),
        str(tmp_path),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for rr in res:
        assert rr["n_units"] == 16  # 12 encoder + 4 decoder blocks
        assert rr["grad_names_equal"]
        assert rr["loss_ref_diff"] <= 1e-6 and rr["grad_ref_diff"] <= 1e-6, rr
        assert rr["loss_ckpt_diff"] <= 1e-6 and rr["grad_ckpt_diff"] <= 1e-6, rr
        assert rr["gathered_eval_diff"] <= 1e-5, rr
        assert rr["bf16_master_dtypes"] == ["torch.float32"] and rr["bf16_grads_finite"], rr
        assert 0 < rr["bf16_loss_diff"] <= 0.05, rr  # computed in bf16 indeed, and close
    r0 = res[0]
    assert r0["reload_weight_diff"] == 0.0 and r0["reload_exp_avg_diff"] == 0.0, r0
    assert r0["reload_steps"] == [2.0, 2.0] and r0["plain_optimizer_loads"]
