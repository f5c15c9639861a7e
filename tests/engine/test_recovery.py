"""--on_nonfinite rollback (issue 30): a non-finite update, a non-finite loss or a loss spike is
rolled back to the last good state, the batches since it skipped, and the run goes on; more
than --max_recoveries in the window stop with one line; a resumed run stays bit-identical."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from maekit.config import PretrainConfig
from maekit.engine.recovery import Recovery, RecoverySettings, TooManyRecoveries
from maekit.engine.trainer import LoopSettings
from maekit.errors import MaekitError
from maekit.formats import read_checkpoint
from tests.engine.test_fit import PoisonOnStep, fit, setup

ROLLBACK = dict(on_nonfinite="rollback", print_freq=2)  # a check point every 2 steps
STEPS = 4  # per epoch: 16 samples, batch 4


class Inject:
    """Squared error with faults at chosen (epoch, step): 'nan' (a NaN loss), 'spike' (x1000),
    'term' (SIGTERM to this process), 'kill' (the process dies here). ``calls`` starts at the
    global step a run begins at (a resumed run's)."""

    def __init__(self, faults: dict[tuple[int, int], str], start: int = 0) -> None:
        self.faults, self.calls = faults, start

    def __call__(self, m, x, y):
        where = divmod(self.calls, STEPS)
        self.calls += 1
        fault = self.faults.get(where)
        loss = (m(x) - y).pow(2).mean()
        if fault == "kill":
            raise KeyboardInterrupt("killed")
        if fault == "term":
            signal.raise_signal(signal.SIGTERM)
        if fault == "nan":
            return loss * float("nan")
        if fault == "spike":
            return loss * 1000.0
        return loss


def log_of(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "run" / "log.txt").read_text().splitlines()]


def test_a_non_finite_update_is_rolled_back_and_the_run_completes(tmp_path, capsys):
    cfg, ctx, model, _, loader = setup(tmp_path, **ROLLBACK)
    opt = PoisonOnStep(model.parameters(), n=5, lr=0.1)  # the update of epoch 1, step 1
    fit(cfg, ctx, model, opt, loader, Inject({}), 0.1)
    out = capsys.readouterr().out
    assert (
        "recovery 1: non-finite update (weights or optimizer state) at epoch 1, step 1; rolled "
        "back to the state before epoch 1, step 0 and skipped its 2 batches (steps 0-1)"
    ) in out
    assert "keeps the last good state in memory" in out
    assert all(torch.isfinite(p).all() for p in model.parameters())
    log = log_of(tmp_path)
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert [r.get("recoveries", 0) for r in log] == [0, 1, 1]
    assert log[1]["recovery_skipped_batches"] == 2
    saved = read_checkpoint(tmp_path / "run" / "checkpoint-last.pth")["resume"]["recovery"]
    assert saved["recoveries"] == [1 * STEPS + 1] and saved["total"] == 1


def test_the_rollback_restores_the_snapshot_exactly(tmp_path):
    """Epoch 1 rolled back in full (its one check point is its end) leaves epoch 0's weights and
    optimizer state (momentum), bit for bit: the state restored is the snapshot."""
    cfg, ctx, model, _, loader = setup(tmp_path, on_nonfinite="rollback", print_freq=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fit(cfg, ctx, model, opt, loader, Inject({(1, 2): "nan"}), 0.1)
    out = tmp_path / "run"
    e0, e1, e2 = (read_checkpoint(out / f"checkpoint-{i}.pth") for i in range(3))
    for k in e0["model"]:
        assert torch.equal(e0["model"][k], e1["model"][k]), k
        assert not torch.equal(e1["model"][k], e2["model"][k]), k  # epoch 2 trained on
    for st0, st1 in zip(
        e0["optimizer"]["state"].values(), e1["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(st0["momentum_buffer"], st1["momentum_buffer"])
    assert [r.get("recovery_skipped_batches", 0) for r in log_of(tmp_path)] == [0, 4, 4]


def test_a_nan_loss_is_rolled_back_and_its_epoch_mean_stays_finite(tmp_path, capsys):
    cfg, ctx, model, opt, loader = setup(tmp_path, **ROLLBACK)
    fit(cfg, ctx, model, opt, loader, Inject({(1, 2): "nan"}), 0.1)
    out = capsys.readouterr().out
    assert "recovery 1: non-finite loss at epoch 1, step 2; rolled back to the state before " in out
    assert "skipped its 2 batches (steps 2-3)" in out
    log = log_of(tmp_path)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in log)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_with_accumulation_the_check_waits_for_the_update(tmp_path, capsys):
    """--print_freq 1 with --accum_iter 2: the check points are the update steps (1, 3): a
    snapshot mid-accumulation would miss the gradients accumulated so far."""
    cfg, ctx, model, opt, loader = setup(
        tmp_path, on_nonfinite="rollback", print_freq=1, accum_iter=2
    )
    fit(cfg, ctx, model, opt, loader, Inject({(1, 2): "nan"}), 0.1)
    out = capsys.readouterr().out
    assert "non-finite loss at epoch 1, step 2; rolled back to the state before epoch 1, " in out
    assert "step 2 and skipped its 2 batches (steps 2-3)" in out
    assert "Epoch [1] [1/4]" not in out and "Epoch [1] [2/4]" in out  # prints at updates only


def test_a_loss_spike_is_rolled_back_with_spike_factor(tmp_path, capsys):
    cfg, ctx, model, opt, loader = setup(tmp_path, **ROLLBACK, spike_factor=5.0)
    fit(cfg, ctx, model, opt, loader, Inject({(1, 3): "spike"}), 0.1)
    out = capsys.readouterr().out
    assert "recovery 1: loss spike (" in out and "at epoch 1, step 3;" in out
    assert "skipped its 2 batches (steps 2-3)" in out
    assert [r.get("recoveries", 0) for r in log_of(tmp_path)] == [0, 1, 1]


def test_without_spike_factor_a_spike_is_trained_on(tmp_path, capsys):
    cfg, ctx, model, opt, loader = setup(tmp_path, **ROLLBACK)
    fit(cfg, ctx, model, opt, loader, Inject({(1, 3): "spike"}), 0.1)
    assert "recovery" not in capsys.readouterr().out
    assert "recoveries" not in log_of(tmp_path)[-1]


def test_more_than_max_recoveries_in_the_window_stop_with_one_line(tmp_path):
    cfg, ctx, model, opt, loader = setup(tmp_path, **ROLLBACK, max_recoveries=1)
    with pytest.raises(TooManyRecoveries) as e:
        fit(cfg, ctx, model, opt, loader, Inject({(0, 1): "nan", (1, 2): "nan"}), 0.1)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, MaekitError)  # the CLI's one line, exit 2
    assert "more than --max_recoveries 1 recoveries within --recovery_window 1000 steps" in msg
    assert "non-finite loss at epoch 1, step 2" in msg and "raise --max_recoveries" in msg
    # the last good checkpoint (epoch 0's) is untouched
    assert read_checkpoint(tmp_path / "run" / "checkpoint-last.pth")["epoch"] == 0


def test_recoveries_outside_the_window_do_not_count(tmp_path):
    cfg, ctx, model, opt, loader = setup(tmp_path, **ROLLBACK, max_recoveries=1, recovery_window=4)
    fit(cfg, ctx, model, opt, loader, Inject({(0, 1): "nan", (2, 1): "nan"}), 0.1)
    assert log_of(tmp_path)[-1]["recoveries"] == 2


def test_recovery_lr_scale_lowers_the_lr_for_the_window(tmp_path):
    cfg, ctx, model, opt, loader = setup(
        tmp_path, **ROLLBACK, recovery_lr_scale=0.5, recovery_window=4, epochs=1, min_lr=0.0
    )
    lrs: list[float] = []
    inject = Inject({(0, 1): "nan"})

    def loss_fn(m, x, y):
        lrs.append(opt.param_groups[0]["lr"])
        return inject(m, x, y)

    fit(cfg, ctx, model, opt, loader, loss_fn, 0.1)
    sched = LoopSettings.from_config(cfg, 0.1)
    from maekit.engine.schedule import lr_at

    plain = [lr_at(s / STEPS, 0.1, 0.0, sched.warmup_epochs, 1) for s in range(STEPS)]
    # the recovery was at step 1: steps 2-3 (within --recovery_window 4 of it) run at half lr
    assert lrs == pytest.approx([plain[0], plain[1], plain[2] * 0.5, plain[3] * 0.5])


@pytest.mark.parametrize("how", ["kill", "term"])
def test_a_run_killed_after_a_recovery_resumes_bit_identical(tmp_path, how):
    """A recovery in epoch 0 and one in epoch 2 (after the resume point); the lr is halved for
    a window that spans the kill, so the resumed run must know the earlier recovery; spikes
    are checked, so it must know the recent losses too."""
    flags = dict(**ROLLBACK, spike_factor=50.0, recovery_lr_scale=0.5, recovery_window=8)
    faults = {(0, 1): "nan", (2, 2): "nan"}
    cfg, ctx, model, opt, loader = setup(tmp_path / "ref", **flags)
    fit(cfg, ctx, model, opt, loader, Inject(faults), 0.1)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    assert log_of(tmp_path / "ref")[-1]["recoveries"] == 2

    cfg, ctx, model, opt, loader = setup(tmp_path / "cut", **flags)
    stop = (1, 0)  # a SIGTERM at epoch 1, step 0: the stop waits for the check point at step 1
    if how == "kill":
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, ctx, model, opt, loader, Inject({**faults, (1, 2): "kill"}), 0.1)
    else:
        fit(cfg, ctx, model, opt, loader, Inject({**faults, stop: "term"}), 0.1)
    resume = read_checkpoint(tmp_path / "cut" / "run" / "checkpoint-last.pth")["resume"]
    assert resume["recovery"]["recoveries"] == [1]
    at = resume["epoch"] * STEPS + resume["step"]
    assert at == (1 * STEPS if how == "kill" else 1 * STEPS + 2)  # term: at the check point

    cfg, ctx, model, opt, loader = setup(tmp_path / "cut", **flags)
    fit(cfg, ctx, model, opt, loader, Inject(faults, start=at), 0.1)
    assert log_of(tmp_path / "cut")[-1]["recoveries"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_off_by_default_and_the_flags_need_rollback():
    cfg = PretrainConfig()
    assert cfg.on_nonfinite == "stop" and LoopSettings.from_config(cfg, 0.1).recovery is None
    with pytest.raises(MaekitError, match="--spike_factor needs --on_nonfinite rollback"):
        PretrainConfig(spike_factor=3.0).validate()
    with pytest.raises(MaekitError, match="--spike_factor must be above 1"):
        PretrainConfig(on_nonfinite="rollback", spike_factor=0.5).validate()
    with pytest.raises(MaekitError, match="--recovery_lr_scale must be in"):
        PretrainConfig(on_nonfinite="rollback", recovery_lr_scale=2.0).validate()


def test_spike_verdict_needs_history_and_the_factor():
    rec = Recovery(RecoverySettings(spike_factor=4.0))
    assert rec.verdict([100.0], False) == ("", None)  # no history yet: nothing to compare to
    rec.state.history.extend([1.0, 1.0, 1.0])
    assert rec.verdict([3.9, 1.0], False) == ("", None)
    why, at = rec.verdict([1.0, 4.1], False)
    assert why.startswith("loss spike (4.1 > --spike_factor 4 x the recent mean 1)") and at == 1
    assert rec.verdict([1.0, float("inf")], False) == ("non-finite loss", 1)
    assert rec.verdict([1.0], True)[0].startswith("non-finite update")


ROLLBACK_WORKER = """
import gc, json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from maekit.engine.distributed import DistEnv, shutdown
from maekit.engine.precision import resolve_precision
from maekit.engine.progress import RunRecorder
from maekit.engine.parallelize import ParallelModel
from maekit.engine.recovery import RecoverySettings
from maekit.engine.trainer import LoopSettings, Trainer

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(4, 1))
g = torch.Generator().manual_seed(rank)
loader = DataLoader(TensorDataset(torch.randn(12, 4, generator=g), torch.randn(12, 1, generator=g)),
                    batch_size=2)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
calls = []

def loss_fn(m, x, y):  # NaN on rank 1 alone, at step 2
    calls.append(1)
    loss = (m(x) - y).pow(2).mean()
    return loss * float("nan") if rank == 1 and len(calls) == 3 else loss

trainer = Trainer(ParallelModel(step=model, bare=model.module, ddp=model), opt, loss_fn,
        LoopSettings(lr=0.1, min_lr=0.1, warmup_epochs=0, epochs=1, print_freq=2,
                     recovery=RecoverySettings()),
        resolve_precision("none", torch.device("cpu")), DistEnv(rank, 2, rank, torch.device("cpu")),
        RunRecorder(".", None, enabled=False))
stats = trainer.train_epoch(loader, 0)
with open(sys.argv[1] + f".{rank}", "w") as f:
    json.dump({"recovery": trainer.recovery.state.as_dict(), "loss": stats["loss"],
               "weight": model.module.weight.tolist()}, f)
shutdown()
del model, trainer  # the DDP wrapper holds the gloo group: freed while the interpreter lives
gc.collect()
"""


@pytest.mark.slow
def test_a_nan_on_one_rank_is_rolled_back_by_all_ranks(tmp_path):
    """The check all-reduces the losses: a NaN on rank 1 alone rolls both ranks back, and the
    replicas stay equal (and their recent-loss history too, so later decisions agree)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(ROLLBACK_WORKER)
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    r = subprocess.run(
        [*cmd, "2", str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "recovery 1: non-finite loss at epoch 0, step 2" in r.stdout, r.stdout
    res = [json.loads((tmp_path / f"out.json.{rank}").read_text()) for rank in (0, 1)]
    assert res[0] == res[1]
    assert res[0]["recovery"]["skipped_batches"] == 2 and res[0]["recovery"]["recoveries"] == [3]
    assert len(res[0]["recovery"]["history"]) == 4  # steps 0-1 and 4-5, the mean of the ranks
    assert torch.isfinite(torch.tensor(res[0]["loss"]))


def test_snapshot_copies_trained_params_buffers_and_optimizer_state_only():
    """Frozen weights (linear probing's encoder) are not copied; BatchNorm statistics and
    AdamW's moments are, and come back bit for bit; the optimizer state created after the
    capture (no step had been taken) is dropped again."""
    from maekit.engine.recovery import Snapshot

    torch.manual_seed(0)
    frozen, norm, head = torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    frozen.requires_grad_(False)
    model = torch.nn.Sequential(frozen, norm, head)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step():
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    snap = Snapshot()
    snap.capture(params, model, opt, scaler)  # before any step: no optimizer state yet
    first = {k: v.clone() for k, v in model.state_dict().items()}
    step()
    snap.restore(params, model, opt, scaler)
    assert all(torch.equal(v, first[k]) for k, v in model.state_dict().items())
    assert not opt.state  # AdamW starts afresh, as it had
    step()
    snap.capture(params, model, opt, scaler)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [opt.state[p]["exp_avg_sq"].clone() for p in params]
    step()
    step()
    snap.restore(params, model, opt, scaler)
    for k, v in model.state_dict().items():
        assert torch.equal(v, good[k]), k  # running_mean/var and num_batches_tracked too
    assert all(
        torch.equal(opt.state[p]["exp_avg_sq"], m) for p, m in zip(params, moments, strict=True)
    )
    n_trained = sum(p.numel() for p in params)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    steps = sum(opt.state[p]["step"].element_size() for p in params)
    assert snap.nbytes() == 12 * n_trained + buffers + steps  # frozen's 72 weights not held
