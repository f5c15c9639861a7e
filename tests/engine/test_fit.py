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
from maekit.engine.fit import fit as fit_epochs
from maekit.engine.parallelize import plain
from maekit.engine.run import prepare_run
from maekit.engine.trainer import LoopSettings, NonFiniteLossError, Trainer
from maekit.formats import read_checkpoint


def fit(cfg, ctx, model, opt, loader, loss_fn, lr):
    """The epochs of a run over a toy model, as engine.run.run drives them."""
    trainer = Trainer(
        plain(model),
        opt,
        loss_fn,
        LoopSettings.from_config(cfg, lr),
        ctx.precision,
        ctx.env,
        ctx.recorder,
    )
    return fit_epochs(cfg, ctx, trainer, loader)


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
    base = dict(
        output_dir=str(tmp_path / "run"),
        epochs=3,
        batch_size=4,
        warmup_epochs=0,
        blr=0.1,
        save_freq=1,
        print_freq=100,
        device="cpu",
        num_workers=0,
        model="toy",
    )
    cfg = PretrainConfig(**{**base, **overrides})
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
        fit(cfg, ctx, model, opt, loader, NanInEpoch({(1, 2)}, 4), 0.1)
    out = tmp_path / "run"
    last = read_checkpoint(out / "checkpoint-last.pth")
    assert last["epoch"] == 0 and sorted(p.name for p in out.glob("checkpoint-*.pth")) == [
        "checkpoint-0.pth",
        "checkpoint-last.pth",
    ]
    for k, v in last["model"].items():
        assert torch.isfinite(v).all(), k
        assert torch.equal(v, read_checkpoint(out / "checkpoint-0.pth")["model"][k])
    assert not torch.isfinite(model.weight).all()  # the live weights did go bad


def test_max_nonfinite_skips_and_logs_the_count(tmp_path):
    cfg, ctx, model, opt, loader = setup(tmp_path, max_nonfinite=2)
    fit(cfg, ctx, model, opt, loader, NanInEpoch({(0, 1), (2, 3)}, 4), 0.1)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert [rec.get("nonfinite_skipped", 0) for rec in log] == [1, 1, 2]
    assert torch.isfinite(model.weight).all()
    assert (
        read_checkpoint(tmp_path / "run" / "checkpoint-last.pth")["resume"]["nonfinite_skipped"]
        == 2
    )


def test_keep_last_prunes_during_training(tmp_path):
    cfg, ctx, model, opt, loader = setup(tmp_path, keep_last=1)
    fit(cfg, ctx, model, opt, loader, NanInEpoch(set(), 4), 0.1)
    names = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*.pth"))
    assert names == ["checkpoint-2.pth", "checkpoint-last.pth"]


# --------------------------------------------------------------------------- issue 18


class PoisonOnStep(torch.optim.SGD):
    """SGD whose ``n``-th step (0-based) writes NaN into the weights: a non-finite update with
    a finite loss (e.g. an overflow in the optimizer) on a chosen step."""

    def __init__(self, params, n: int, **kw) -> None:
        super().__init__(params, **kw)
        self.n, self.steps = n, 0

    @torch.no_grad()
    def step(self, closure=None):
        out = super().step(closure)
        if self.steps == self.n:
            for g in self.param_groups:
                for p in g["params"]:
                    p.fill_(float("nan"))
        self.steps += 1
        return out


def test_a_non_finite_update_on_an_epochs_last_step_is_never_saved(tmp_path):
    cfg, ctx, model, _, loader = setup(tmp_path)
    opt = PoisonOnStep(model.parameters(), n=7, lr=0.1)  # epoch 1, step 3: its last (4 per epoch)
    with pytest.raises(
        NonFiniteLossError, match=r"not finite after epoch 1, step 3 \(weight, bias\)"
    ):
        fit(cfg, ctx, model, opt, loader, NanInEpoch(set(), 4), 0.1)
    out = tmp_path / "run"
    last = read_checkpoint(out / "checkpoint-last.pth")
    assert last["epoch"] == 0  # the last good checkpoint stays the newest
    assert sorted(p.name for p in out.glob("checkpoint-*.pth")) == [
        "checkpoint-0.pth",
        "checkpoint-last.pth",
    ]
    assert [json.loads(x)["epoch"] for x in (out / "log.txt").read_text().splitlines()] == [0]

    # Auto-resume (same run, healthy optimizer now) continues from the last good checkpoint.
    cfg, ctx, model, opt, loader = setup(tmp_path)
    fit(cfg, ctx, model, opt, loader, NanInEpoch(set(), 4), 0.1)
    log = [json.loads(x)["epoch"] for x in (out / "log.txt").read_text().splitlines()]
    assert log == [0, 1, 2]
    assert read_checkpoint(out / "checkpoint-last.pth")["epoch"] == 2
    assert torch.isfinite(model.weight).all()


def test_fallback_resume_cuts_the_log_back_and_logs_each_epoch_once(tmp_path):
    cfg, ctx, model, opt, loader = setup(tmp_path)
    fit(cfg, ctx, model, opt, loader, NanInEpoch(set(), 4), 0.1)
    out = tmp_path / "run"
    for name in ("checkpoint-last.pth", "checkpoint-2.pth", "checkpoint-1.pth"):
        p = out / name  # damaged newest files: the resume falls back to checkpoint-0
        p.write_bytes(p.read_bytes()[:100])
    with open(out / "log.txt", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a line torn by a kill
    cfg, ctx, model, opt, loader = setup(tmp_path, epochs=4)
    fit(cfg, ctx, model, opt, loader, NanInEpoch(set(), 4), 0.1)
    log = [json.loads(x)["epoch"] for x in (out / "log.txt").read_text().splitlines()]
    assert log == [0, 1, 2, 3]


def test_periodic_checkpoint_is_a_copy_so_damage_to_last_leaves_it_intact(tmp_path):
    cfg, ctx, model, opt, loader = setup(tmp_path, epochs=1)
    fit(cfg, ctx, model, opt, loader, NanInEpoch(set(), 4), 0.1)
    out = tmp_path / "run"
    assert (out / "checkpoint-0.pth").stat().st_ino != (out / "checkpoint-last.pth").stat().st_ino
    (out / "checkpoint-last.pth").write_bytes(b"PK damaged")
    assert read_checkpoint(out / "checkpoint-0.pth")["epoch"] == 0


def test_rerun_with_conflicting_flags_is_refused_and_config_json_untouched(tmp_path):
    from maekit.errors import MaekitError

    cfg, ctx, model, opt, loader = setup(tmp_path, epochs=1)
    fit(cfg, ctx, model, opt, loader, NanInEpoch(set(), 4), 0.1)
    config = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(MaekitError, match=r"--blr 0.1 -> 0.2.*--mask_ratio 0.75 -> 0.5") as e:
        setup(tmp_path, epochs=2, blr=0.2, mask_ratio=0.5)
    assert "--no_auto_resume" in str(e.value)
    assert (tmp_path / "run" / "config.json").read_text() == config
    # An intended change (more epochs, another print frequency) continues the run.
    cfg, ctx, model, opt, loader = setup(tmp_path, epochs=2, print_freq=3)
    fit(cfg, ctx, model, opt, loader, NanInEpoch(set(), 4), 0.1)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 2
    assert read_checkpoint(tmp_path / "run" / "checkpoint-last.pth")["epoch"] == 1


def test_min_lr_above_the_scaled_lr_is_refused_before_anything_is_written(tmp_path):
    from maekit.errors import MaekitError

    cfg = PretrainConfig(
        output_dir=str(tmp_path / "run"),
        batch_size=4,
        blr=1e-3,
        min_lr=1e-3,
        device="cpu",
        num_workers=0,
    )
    with pytest.raises(MaekitError, match="--min_lr 0.001 is above the learning rate"):
        prepare_run(cfg)
    assert not (tmp_path / "run").exists()
