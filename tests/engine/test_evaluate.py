"""evaluate(): exact top-1/top-5/loss from known logits; RankSplitSampler; 2-process --dist_eval."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from maekit.engine.distributed import DistEnv
from maekit.engine.evaluate import RankSplitSampler, build_eval_loader, evaluate
from maekit.engine.precision import Precision

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
FP32 = Precision(None, "cpu")


class TableModel(torch.nn.Module):
    """Input i (a float index) -> row i of a fixed logits table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.long().view(-1)]


def logits_with_target_rank(target: int, rank: int, num_classes: int) -> list[float]:
    """A logits row in which ``target`` is the rank-th largest (0 = top-1)."""
    order = [c for c in range(num_classes) if c != target]
    order.insert(rank, target)
    row = [0.0] * num_classes
    for position, c in enumerate(order):
        row[c] = float(num_classes - position) * 0.7
    return row


def reference_loss(rows: list[list[float]], targets: list[int]) -> float:
    total = 0.0
    for row, t in zip(rows, targets, strict=True):
        m = max(row)
        total += m + math.log(sum(math.exp(v - m) for v in row)) - row[t]
    return total / len(rows)


def run_eval(rows, targets, batch_size, split=False):
    table = torch.tensor(rows, dtype=torch.float32)
    ds = TensorDataset(torch.arange(len(rows)).float(), torch.tensor(targets))
    loader = DataLoader(ds, batch_size=batch_size)
    return evaluate(TableModel(table), loader, CPU, FP32, split=split)


def test_rank_split_sampler_disjoint_and_covering():
    shards = [list(RankSplitSampler(10, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert [len(RankSplitSampler(10, r, 3)) for r in range(3)] == [4, 3, 3]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(10))  # each index exactly once, no padding


def test_rank_split_sampler_more_ranks_than_samples():
    shards = [list(RankSplitSampler(2, r, 3)) for r in range(3)]
    assert shards == [[0], [1], []]


def test_exact_acc1_acc5_and_loss():
    num_classes = 7
    targets = [3, 0, 6, 2, 5, 1]
    ranks = [0, 0, 1, 4, 5, 6]  # top-1 hits: 2; top-5 hits: 4; misses: 2
    rows = [logits_with_target_rank(t, r, num_classes) for t, r in zip(targets, ranks, strict=True)]
    stats = run_eval(rows, targets, batch_size=4)  # a full and a partial batch
    assert stats["n"] == 6
    assert stats["acc1"] == pytest.approx(100.0 * 2 / 6)
    assert stats["acc5"] == pytest.approx(100.0 * 4 / 6)
    assert stats["loss"] == pytest.approx(reference_loss(rows, targets), rel=1e-6)


def test_fewer_than_five_classes():
    targets = [0, 1, 2, 2]
    ranks = [0, 1, 2, 0]
    rows = [logits_with_target_rank(t, r, 3) for t, r in zip(targets, ranks, strict=True)]
    stats = run_eval(rows, targets, batch_size=3)
    assert stats["n"] == 4
    assert stats["acc1"] == pytest.approx(50.0)
    assert stats["acc5"] == pytest.approx(100.0)  # top-k with k = number of classes
    assert stats["loss"] == pytest.approx(reference_loss(rows, targets), rel=1e-6)


def test_model_is_put_in_eval_mode():
    model = torch.nn.Sequential(torch.nn.Dropout(0.9), torch.nn.Linear(2, 3))
    model.train()
    ds = TensorDataset(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    s1 = evaluate(model, DataLoader(ds, batch_size=2), CPU, FP32, split=False)
    s2 = evaluate(model, DataLoader(ds, batch_size=5), CPU, FP32, split=False)
    assert not model.training
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-6)  # no dropout noise


# --------------------------------------------------------------------------- 2 processes

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch.utils.data import TensorDataset
    from maekit.engine.distributed import init_distributed, shutdown
    from maekit.engine.evaluate import build_eval_loader, evaluate
    from maekit.engine.precision import Precision

    torch.manual_seed(0)
    x = torch.randn(7, 4)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 1])
    model = torch.nn.Linear(4, 6)
    env = init_distributed("cpu")
    assert env.distributed and env.world_size == 2
    loader = build_eval_loader(TensorDataset(x, y), 2, env, True, 0, False)
    stats = evaluate(model, loader, env, Precision(None, "cpu"), split=True)
    stats["shard"] = list(loader.sampler)
    shutdown()
    with open(sys.argv[1], "w") as f:
        json.dump(stats, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_rank_split_evaluation_on_two_processes_equals_single_process(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs, outs = [], []
    for rank in range(2):
        out = tmp_path / f"rank{rank}.json"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        outs.append(out)
    try:
        logs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, logs, strict=True):
        assert p.returncode == 0, err
    results = [json.loads(o.read_text()) for o in outs]

    # the same data and model in this process, unsharded
    torch.manual_seed(0)
    x = torch.randn(7, 4)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 1])
    model = torch.nn.Linear(4, 6)
    loader = build_eval_loader(TensorDataset(x, y), 2, CPU, True, 0, False)
    assert isinstance(loader.sampler, torch.utils.data.SequentialSampler)
    single = evaluate(model, loader, CPU, FP32, split=False)

    assert results[0]["shard"] == [0, 2, 4, 6] and results[1]["shard"] == [1, 3, 5]
    for r in results:
        assert r["n"] == 7 == single["n"]  # no padded duplicate
        assert r["acc1"] == single["acc1"]
        assert r["acc5"] == single["acc5"]
        # loss sums per batch in float32; the batches differ, so allow rounding
        assert r["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert 0 < single["acc5"] < 100  # a non-trivial case (6 classes, some top-5 misses)


def test_unreadable_evaluation_images_are_skipped_not_fatal(tmp_path):
    from PIL import Image

    from maekit.data import build_dataset
    from maekit.data.transforms import eval_transform
    from maekit.engine.precision import resolve_precision

    for c in range(2):
        d = tmp_path / "val" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i + c, np.uint8)).save(d / f"{i}.png")
    (tmp_path / "val" / "c1" / "9.png").write_bytes(b"")
    ds = build_dataset(str(tmp_path), "val", eval_transform(16))
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    loader = build_eval_loader(ds, 4, env, False, 0, False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    stats = evaluate(model, loader, env, resolve_precision("none", torch.device("cpu")), False)
    assert stats["n"] == 6
