"""Linear lr scaling, warm-up + half-cycle cosine, per-group lr_scale."""

from __future__ import annotations

import math

import pytest
import torch

from maekit.engine.schedule import apply_lr, lr_at, scaled_lr

LR, MIN_LR, WARMUP, EPOCHS = 0.4, 0.01, 10.0, 30.0


def at(e: float) -> float:
    return lr_at(e, LR, MIN_LR, WARMUP, EPOCHS)


def test_lr_is_zero_at_epoch_zero():
    assert at(0.0) == 0.0


def test_lr_is_half_in_the_middle_of_warmup():
    assert at(WARMUP / 2) == pytest.approx(LR / 2)
    assert at(2.5) == pytest.approx(LR * 2.5 / WARMUP)


def test_lr_is_peak_at_end_of_warmup():
    assert at(WARMUP) == pytest.approx(LR)


def test_lr_is_midpoint_in_the_middle_of_cosine():
    mid = WARMUP + (EPOCHS - WARMUP) / 2
    assert at(mid) == pytest.approx(MIN_LR + (LR - MIN_LR) / 2)


def test_lr_reaches_min_lr_at_the_end():
    assert at(EPOCHS) == pytest.approx(MIN_LR)
    assert at(EPOCHS - 1e-6) == pytest.approx(MIN_LR, abs=1e-9)


def test_cosine_formula_at_an_arbitrary_point():
    e = 17.3
    expected = MIN_LR + (LR - MIN_LR) * 0.5 * (
        1 + math.cos(math.pi * (e - WARMUP) / (EPOCHS - WARMUP))
    )
    assert at(e) == pytest.approx(expected)


def test_lr_is_monotonic_up_then_down():
    values = [at(e / 10) for e in range(0, int(EPOCHS * 10) + 1)]
    peak = values.index(max(values))
    assert peak == int(WARMUP * 10)
    assert all(a <= b for a, b in zip(values[:peak], values[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :], strict=False))
    assert min(values[peak:]) >= MIN_LR - 1e-12


def test_no_warmup_starts_at_peak():
    assert lr_at(0.0, LR, MIN_LR, 0.0, EPOCHS) == pytest.approx(LR)


@pytest.mark.parametrize(
    ("blr", "eff", "expected"),
    [(1e-3, 256, 1e-3), (1.5e-4, 4096, 2.4e-3), (1e-3, 64, 2.5e-4), (0.1, 16384, 6.4)],
)
def test_scaled_lr_is_linear_in_effective_batch(blr, eff, expected):
    assert scaled_lr(blr, eff) == pytest.approx(expected)
    assert scaled_lr(blr, eff) == pytest.approx(blr * eff / 256)


def test_apply_lr_honours_lr_scale():
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = torch.optim.SGD(
        [
            {"params": [a]},
            {"params": [b], "lr_scale": 0.5},
            {"params": [c], "lr_scale": 0.0},
        ],
        lr=123.0,
    )
    apply_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.1, 0.0])
    # lr_scale is kept, so a later call scales again from the new base lr
    apply_lr(opt, 0.4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.4, 0.2, 0.0])
