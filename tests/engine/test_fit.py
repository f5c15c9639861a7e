"""The epoch loop of every phase (fit): a non-finite loss stops training with the last good
checkpoint intact; --max_nonfinite skips instead; --keep_last prunes while training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from maekit.config import PretrainConfig
from maekit.data import build_train_loader
from maekit.engine.checkpoint import read_checkpoint
from maekit.engine.fit import fit, prepare_run
from maekit.engine.trainer import NonFiniteLossError


class NanInEpoch:
    """Squared error; NaN on the given (epoch, step) pairs. Steps per epoch: ``per_epoch``."""

    def __init__(self, bad: set[tuple[int, int]], per_epoch: int) -> None:
        self.bad, self.per_epoch, self.calls = bad, per_epoch, 0

    def __call__(self, m, x, y):
        epoch, step = divmod(self.calls, self.per_epoch)
        self.calls += 1
        loss = (m(x) - y).pow(2).mean()
        return loss * float("nan") if (epoch, step) in self.bad else loss


def setup(tmp_path, **overrides):
    cfg = PretrainConfig(output_dir=str(tmp_path / "run"), epochs=3, batch_size=4, warmup_epochs=0,
                         blr=0.1, save_freq=1, print_freq=100, device="cpu", num_workers=0,
                         model="toy", **overrides)  # fmt: skip
    ctx = prepare_run(cfg)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    data = TensorDataset(torch.randn(16, 3), torch.randn(16, 1))
    loader = build_train_loader(data, 4, 0, 1, 0, 0, False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return cfg, ctx, model, opt, loader


def test_nan_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg, ctx, model, opt, loader = setup(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2 \(of 4\)"):
        fit(cfg, ctx, model, model, opt, loader, NanInEpoch({(1, 2)}, 4), 0.1)
    out = tmp_path / "run"
    last = read_checkpoint(out / "checkpoint-last.pth")
    assert last["epoch"] == 0 and sorted(p.name for p in out.glob("checkpoint-*.pth")) == [
        "checkpoint-0.pth", "checkpoint-last.pth"]  # fmt: skip
    for k, v in last["model"].items():
        assert torch.isfinite(v).all(), k
        assert torch.equal(v, read_checkpoint(out / "checkpoint-0.pth")["model"][k])
    assert not torch.isfinite(model.weight).all()  # the live weights did go bad


def test_max_nonfinite_skips_and_logs_the_count(tmp_path):
    cfg, ctx, model, opt, loader = setup(tmp_path, max_nonfinite=2)
    fit(cfg, ctx, model, model, opt, loader, NanInEpoch({(0, 1), (2, 3)}, 4), 0.1)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert [rec.get("nonfinite_skipped", 0) for rec in log] == [1, 1, 2]
    assert torch.isfinite(model.weight).all()
    assert (
        read_checkpoint(tmp_path / "run" / "checkpoint-last.pth")["resume"]["nonfinite_skipped"]
        == 2
    )


def test_keep_last_prunes_during_training(tmp_path):
    cfg, ctx, model, opt, loader = setup(tmp_path, keep_last=1)
    fit(cfg, ctx, model, model, opt, loader, NanInEpoch(set(), 4), 0.1)
    names = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*.pth"))
    assert names == ["checkpoint-2.pth", "checkpoint-last.pth"]
