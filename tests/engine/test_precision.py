"""--amp resolution on CPU."""

from __future__ import annotations

import torch

from maekit.engine.precision import cpu_has_fast_bf16, resolve_precision

CPU = torch.device("cpu")


def test_fast_bf16_means_amx_not_avx512_bf16_alone(monkeypatch):
    """AVX-512 BF16 without AMX trains slower in bf16 than in fp32 (BENCHMARKS.md)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not cpu_has_fast_bf16()
    assert resolve_precision("auto", CPU).dtype is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_has_fast_bf16()
    assert resolve_precision("auto", CPU).dtype is torch.bfloat16


def test_auto_on_cpu_depends_on_native_bf16():
    p = resolve_precision("auto", CPU)
    if cpu_has_fast_bf16():
        assert p.dtype is torch.bfloat16 and p.name == "bf16"
    else:
        assert p.dtype is None and p.name == "fp32"
    assert p.device_type == "cpu"


def test_auto_falls_back_to_fp32_without_native_bf16(monkeypatch):
    import maekit.engine.precision as prec

    monkeypatch.setattr(prec, "cpu_has_fast_bf16", lambda: False)
    p = prec.resolve_precision("auto", CPU)
    assert p.dtype is None and p.name == "fp32"
    monkeypatch.setattr(prec, "cpu_has_fast_bf16", lambda: True)
    assert prec.resolve_precision("auto", CPU).dtype is torch.bfloat16


def test_none_is_full_fp32_without_scaling():
    p = resolve_precision("none", CPU)
    assert p.dtype is None
    assert p.name == "fp32"
    assert not p.grad_scaler().is_enabled()
    with p.autocast():
        assert not torch.is_autocast_enabled("cpu")
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype is torch.float32


def test_fp16_enables_the_grad_scaler():
    p = resolve_precision("fp16", CPU)
    assert p.dtype is torch.float16 and p.name == "fp16"
    assert p.grad_scaler().is_enabled()


def test_bf16_disables_the_grad_scaler_and_autocasts():
    p = resolve_precision("bf16", CPU)
    assert p.dtype is torch.bfloat16 and p.name == "bf16"
    assert not p.grad_scaler().is_enabled()
    with p.autocast():
        y = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    assert y.dtype is torch.bfloat16
