"""LARS as in MAE linear probing, checked against updates computed by hand."""

from __future__ import annotations

import torch

from maekit.engine.lars import LARS

LR, WD, MOM, TRUST = 0.1, 0.01, 0.9, 0.001


def test_one_dim_param_is_plain_momentum_sgd():
    b = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = LARS([b], lr=LR, weight_decay=WD, momentum=MOM, trust_coefficient=TRUST)
    g1 = torch.tensor([0.5, 0.25, -1.0], dtype=torch.float64)
    g2 = torch.tensor([-0.5, 1.0, 2.0], dtype=torch.float64)
    w0 = b.detach().clone()
    b.grad = g1.clone()
    opt.step()
    # no weight decay, no trust ratio: mu = g1, w -= lr * mu
    torch.testing.assert_close(b.detach(), w0 - LR * g1)
    b.grad = g2.clone()
    opt.step()
    mu2 = MOM * g1 + g2
    torch.testing.assert_close(b.detach(), w0 - LR * g1 - LR * mu2)


def test_matrix_param_gets_weight_decay_and_trust_ratio_with_momentum():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    opt = LARS([w], lr=LR, weight_decay=WD, momentum=MOM, trust_coefficient=TRUST)
    g1 = torch.randn(4, 3, dtype=torch.float64)
    g2 = torch.randn(4, 3, dtype=torch.float64)

    w0 = w.detach().clone()
    d1 = g1 + WD * w0
    u1 = TRUST * w0.norm() / d1.norm() * d1
    w.grad = g1.clone()
    opt.step()
    w1 = w0 - LR * u1
    torch.testing.assert_close(w.detach(), w1)

    d2 = g2 + WD * w1
    u2 = TRUST * w1.norm() / d2.norm() * d2
    mu2 = MOM * u1 + u2
    w.grad = g2.clone()
    opt.step()
    torch.testing.assert_close(w.detach(), w1 - LR * mu2)
    torch.testing.assert_close(opt.state[w]["mu"], mu2)


def test_zero_norm_weight_uses_ratio_one():
    w = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    g = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    opt = LARS([w], lr=LR, weight_decay=WD, momentum=MOM, trust_coefficient=TRUST)
    w.grad = g.clone()
    opt.step()
    torch.testing.assert_close(w.detach(), -LR * g)  # ratio 1, not 0 (and no NaN)


def test_zero_update_norm_uses_ratio_one():
    w = torch.nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    opt = LARS([w], lr=LR, weight_decay=0.0, momentum=MOM)
    w.grad = torch.zeros(2, 2, dtype=torch.float64)
    opt.step()
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.detach(), torch.ones(2, 2, dtype=torch.float64))


def test_params_without_grad_are_skipped_and_groups_use_their_own_lr():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    c = torch.nn.Parameter(torch.ones(3))
    opt = LARS([{"params": [a, c]}, {"params": [b], "lr": 1.0}], lr=LR)
    a.grad = torch.ones(3)
    b.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((3,), 1 - LR))
    torch.testing.assert_close(b.detach(), torch.zeros(3))
    torch.testing.assert_close(c.detach(), torch.ones(3))
    assert c not in opt.state
