"""The shared training loop on a tiny model: lr schedule, accumulation, caps, NaN, clipping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from maekit.engine.distributed import DistEnv
from maekit.engine.parallelize import plain
from maekit.engine.precision import resolve_precision
from maekit.engine.progress import RunRecorder
from maekit.engine.schedule import lr_at
from maekit.engine.trainer import LoopSettings, NonFiniteLossError, Trainer
from maekit.errors import MaekitError

CPU = torch.device("cpu")
ENV = DistEnv(0, 1, 0, CPU)


def tiny_loader(n_batches: int, batch: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * batch, 4, generator=g)
    y = torch.randn(n_batches * batch, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


class Recording:
    """loss_fn that records the lr each call sees and counts calls."""

    def __init__(self, optimizer, fn=None):
        self.optimizer = optimizer
        self.lrs: list[float] = []
        self.fn = fn

    def __call__(self, model, x, y):
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        if self.fn is not None:
            return self.fn(model, x, y)
        return (model(x) - y).pow(2).mean()


def count_steps(optimizer) -> list[int]:
    calls: list[int] = []
    optimizer.register_step_post_hook(lambda *_: calls.append(1))
    return calls


def run_epoch(model, loader, optimizer, loss_fn, settings, epoch=0, tmp_path=None, amp="none"):
    precision = resolve_precision(amp, CPU)
    recorder = RunRecorder(str(tmp_path or "."), None, enabled=False)
    trainer = Trainer(plain(model), optimizer, loss_fn, settings, precision, ENV, recorder)
    return trainer.train_epoch(loader, epoch)


SCHED = dict(lr=0.1, min_lr=0.001, warmup_epochs=2.0, epochs=5)


@pytest.mark.parametrize("epoch", [1, 3])  # in warm-up and in the cosine part
def test_lr_moves_every_step(tmp_path, epoch):
    model, loader = tiny_model(), tiny_loader(8)
    opt = torch.optim.SGD(model.parameters(), lr=123.0)
    loss_fn = Recording(opt)
    stats = run_epoch(model, loader, opt, loss_fn, LoopSettings(**SCHED), epoch, tmp_path)
    n = len(loader)
    expected = [lr_at(epoch + s / n, **SCHED) for s in range(n)]
    assert loss_fn.lrs == pytest.approx(expected)
    assert len(set(loss_fn.lrs)) == n  # really changes per iteration
    assert opt.param_groups[0]["lr"] == pytest.approx(expected[-1])
    # train_lr is the epoch's mean per-iteration lr (the official log's meter), not the last
    assert stats["lr"] == pytest.approx(sum(expected) / n)
    assert stats["lr"] != pytest.approx(expected[-1])
    assert stats["last_lr"] == pytest.approx(expected[-1])


def test_lr_changes_on_accumulation_boundaries_only(tmp_path):
    model, loader = tiny_model(), tiny_loader(8)
    opt = torch.optim.SGD(model.parameters(), lr=123.0)
    loss_fn = Recording(opt)
    epoch, accum, n = 1, 2, 8
    stats = run_epoch(
        model, loader, opt, loss_fn, LoopSettings(**SCHED, accum_iter=accum), epoch, tmp_path
    )
    expected = [lr_at(epoch + (s - s % accum) / n, **SCHED) for s in range(n)]
    assert loss_fn.lrs == pytest.approx(expected)
    assert stats["lr"] == pytest.approx(
        sum(expected) / n
    )  # every iteration counts, as the official
    assert loss_fn.lrs[0] == loss_fn.lrs[1] != loss_fn.lrs[2]
    last_update_start = (n - 1) - (n - 1) % accum  # step 6
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(epoch + last_update_start / n, **SCHED))


def test_lr_scale_groups_follow_the_schedule(tmp_path):
    model, loader = tiny_model(), tiny_loader(4)
    opt = torch.optim.SGD(
        [{"params": [model.weight], "lr_scale": 0.25}, {"params": [model.bias]}], lr=1.0
    )
    run_epoch(model, loader, opt, Recording(opt), LoopSettings(**SCHED), 3, tmp_path)
    last = lr_at(3 + 3 / 4, **SCHED)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25 * last, last])


@pytest.mark.parametrize(("accum", "steps"), [(1, 8), (2, 4), (4, 2), (3, 2)])
def test_accumulation_divides_optimizer_steps(tmp_path, accum, steps):
    model, loader = tiny_model(), tiny_loader(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = count_steps(opt)
    loss_fn = Recording(opt)
    run_epoch(model, loader, opt, loss_fn, LoopSettings(**SCHED, accum_iter=accum), 3, tmp_path)
    assert len(loss_fn.lrs) == 8  # every micro-batch is seen
    assert len(calls) == steps


def test_accumulated_update_equals_one_big_batch(tmp_path):
    """accum_iter=2 with batch 2 == accum_iter=1 with batch 4 (loss is divided by accum)."""
    settings = dict(lr=0.5, min_lr=0.5, warmup_epochs=0.0, epochs=1)
    a, b = tiny_model(), tiny_model()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randn(8, 1, generator=torch.Generator().manual_seed(2))
    small = DataLoader(TensorDataset(x, y), batch_size=2)
    big = DataLoader(TensorDataset(x, y), batch_size=4)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.5)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.5)
    run_epoch(
        a, small, opt_a, Recording(opt_a), LoopSettings(**settings, accum_iter=2), 0, tmp_path
    )
    run_epoch(b, big, opt_b, Recording(opt_b), LoopSettings(**settings, accum_iter=1), 0, tmp_path)
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)


def test_max_train_step_caps_the_epoch(tmp_path):
    model, loader = tiny_model(), tiny_loader(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = count_steps(opt)
    loss_fn = Recording(opt)
    stats = run_epoch(
        model, loader, opt, loss_fn, LoopSettings(**SCHED, max_train_step=3), 0, tmp_path
    )
    assert len(loss_fn.lrs) == 3
    assert len(calls) == 3
    assert stats["loss"] == stats["loss"]  # finite average over the 3 steps


def test_returned_loss_is_the_epoch_average(tmp_path):
    model, loader = tiny_model(), tiny_loader(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[float] = []

    def fn(m, x, y):
        loss = (m(x) - y).pow(2).mean()
        seen.append(loss.item())
        return loss

    stats = run_epoch(
        model, loader, opt, Recording(opt, fn), LoopSettings(**SCHED, print_freq=3), 0, tmp_path
    )
    assert stats["loss"] == pytest.approx(sum(seen) / len(seen))
    assert stats["img_per_s"] > 0 and stats["time_s"] > 0


def nan_loss(model, x, y):
    return (model(x) - y).pow(2).mean() * float("nan")


def test_nan_loss_raises_naming_the_epoch(tmp_path):
    model, loader = tiny_model(), tiny_loader(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = Recording(opt, nan_loss)
    with pytest.raises(NonFiniteLossError) as ei:
        run_epoch(model, loader, opt, loss_fn, LoopSettings(**SCHED, print_freq=1), 3, tmp_path)
    assert isinstance(ei.value, MaekitError)
    assert "epoch 3" in str(ei.value)
    assert len(loss_fn.lrs) == 1  # stopped at the first check, not at the end of the epoch


def test_nan_loss_is_caught_at_the_end_of_an_epoch(tmp_path):
    model, loader = tiny_model(), tiny_loader(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="epoch 0"):
        run_epoch(
            model,
            loader,
            opt,
            Recording(opt, nan_loss),
            LoopSettings(**SCHED, print_freq=100),
            0,
            tmp_path,
        )


def test_inf_loss_raises(tmp_path):
    model, loader = tiny_model(), tiny_loader(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def inf_loss(m, x, y):
        return (m(x) - y).pow(2).mean() + float("inf")

    with pytest.raises(NonFiniteLossError):
        run_epoch(
            model,
            loader,
            opt,
            Recording(opt, inf_loss),
            LoopSettings(**SCHED, print_freq=1),
            0,
            tmp_path,
        )


def _delta_norm(clip, tmp_path) -> float:
    model = tiny_model()
    loader = tiny_loader(1, batch=4)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)
    before = [p.detach().clone() for p in model.parameters()]

    def big_loss(m, x, y):
        return 1000.0 * (m(x) - y).pow(2).mean()

    settings = LoopSettings(lr=1.0, min_lr=1.0, warmup_epochs=0.0, epochs=1, clip_grad=clip)
    run_epoch(model, loader, opt, Recording(opt, big_loss), settings, 0, tmp_path)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    deltas = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(d) for d in deltas])
    ).item()


def test_clip_grad_limits_the_update(tmp_path):
    unclipped = _delta_norm(None, tmp_path)
    assert unclipped > 10.0  # the gradient really is large
    clipped = _delta_norm(0.5, tmp_path)
    assert clipped == pytest.approx(0.5, rel=1e-3)


class NanAt:
    """Finite squared error, except NaN at the given (0-based) calls."""

    def __init__(self, bad_calls: set[int]):
        self.bad, self.calls = bad_calls, 0

    def __call__(self, m, x, y):
        loss = (m(x) - y).pow(2).mean()
        i, self.calls = self.calls, self.calls + 1
        return loss * float("nan") if i in self.bad else loss


def test_nan_loss_names_the_exact_step_even_between_print_points(tmp_path):
    model, loader = tiny_model(), tiny_loader(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 5 \(of 8\)"):
        run_epoch(
            model, loader, opt, NanAt({5, 6}), LoopSettings(**SCHED, print_freq=100), 2, tmp_path
        )


def test_max_nonfinite_skips_bad_steps_without_touching_the_weights(tmp_path):
    model, loader = tiny_model(), tiny_loader(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = count_steps(opt)
    stats = run_epoch(
        model,
        loader,
        opt,
        NanAt({1, 4}),
        LoopSettings(**SCHED, print_freq=2, max_nonfinite=2),
        0,
        tmp_path,
    )
    assert len(steps) == 4  # 6 batches, 2 skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(stats["loss"])


def test_max_nonfinite_budget_exceeded_stops(tmp_path):
    model, loader = tiny_model(), tiny_loader(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="more than --max_nonfinite 1 .*epoch 0, step 4"):
        run_epoch(
            model,
            loader,
            opt,
            NanAt({1, 4}),
            LoopSettings(**SCHED, print_freq=2, max_nonfinite=1),
            0,
            tmp_path,
        )


def test_stop_request_ends_the_epoch_at_an_update_boundary(tmp_path):
    from maekit.engine.preemption import StopRequest
    from maekit.engine.trainer import EpochState

    model, loader = tiny_model(), tiny_loader(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stop = StopRequest()
    calls = []

    def loss_fn(m, x, y):
        calls.append(1)
        if len(calls) == 3:
            stop.requested = True  # as the signal handler would, during step 2
        return (m(x) - y).pow(2).mean()

    precision = resolve_precision("none", CPU)
    state = EpochState()
    trainer = Trainer(
        plain(model),
        opt,
        loss_fn,
        LoopSettings(**SCHED, accum_iter=2),
        precision,
        ENV,
        RunRecorder(str(tmp_path), None, False),
    )
    stats = trainer.train_epoch(loader, 0, state=state, stop=stop)
    assert stats["state"].stopped and stats["state"].step == 4  # finished the accumulation window
    assert len(calls) == 4


NONFINITE_WORKER = """
import gc, json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from maekit.engine.distributed import DistEnv, shutdown
from maekit.engine.precision import resolve_precision
from maekit.engine.progress import RunRecorder
from maekit.engine.parallelize import ParallelModel
from maekit.engine.trainer import LoopSettings, RunCounters, Trainer

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(4, 1))
g = torch.Generator().manual_seed(rank)
loader = DataLoader(TensorDataset(torch.randn(12, 4, generator=g), torch.randn(12, 1, generator=g)),
                    batch_size=2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
steps = []
opt.register_step_post_hook(lambda *_: steps.append(1))
calls = []

def loss_fn(m, x, y):  # NaN on rank 1 alone, at its second step
    calls.append(1)
    loss = (m(x) - y).pow(2).mean()
    return loss * float("nan") if rank == 1 and len(calls) == 2 else loss

precision = resolve_precision("none", torch.device("cpu"))
counters = RunCounters()
Trainer(ParallelModel(step=model, bare=model.module, ddp=model), opt, loss_fn,
        LoopSettings(lr=0.1, min_lr=0.1, warmup_epochs=0, epochs=1, print_freq=2, max_nonfinite=3),
        precision, DistEnv(rank, 2, rank, torch.device("cpu")), RunRecorder(".", None, enabled=False),
        counters=counters).train_epoch(loader, 0)
with open(sys.argv[1] + f".{rank}", "w") as f:
    json.dump({"steps": len(steps), "skipped": counters.nonfinite_skipped,
               "weight": model.module.weight.tolist()}, f)
shutdown()
# Free the DDP wrapper (it holds the gloo group) while the interpreter is alive, as the phases
# do by returning from run(): left to interpreter exit, a gloo thread may drop a finished
# all-reduce's tensors during finalization and abort the process (SIGABRT, "terminate called
# without an active exception"), which happened in ~30 % of runs of this script on a Xeon.
del model
gc.collect()
"""


@pytest.mark.slow
def test_a_nonfinite_loss_on_one_rank_is_skipped_by_all_ranks(tmp_path):
    """With --max_nonfinite under DDP/FSDP the ranks skip a step together: a backward skipped
    on one rank alone would leave the others waiting in its all-reduce."""
    import json
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(NONFINITE_WORKER)
    out = tmp_path / "out.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads((tmp_path / f"out.json.{rank}").read_text()) for rank in (0, 1)]
    for res in results:
        assert res["steps"] == 5 and res["skipped"] == 1, res  # 6 batches, one skipped by both
    assert results[0]["weight"] == results[1]["weight"]
