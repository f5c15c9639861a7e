"""Device peaks for MFU and the peak-memory meter."""

from __future__ import annotations

import pytest
import torch

from maekit.bench.hardware import MemoryMeter, device_name, peak_tflops


@pytest.mark.parametrize(
    "name,expected",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_bf16_peak_table(name, expected):
    assert peak_tflops(name, "bf16") == expected


def test_no_fp32_peak_unless_given():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") is None
    assert peak_tflops("AMD EPYC", "fp32", given=1.5) == 1.5


def test_cpu_meter_sees_a_large_allocation_and_resets():
    meter = MemoryMeter(torch.device("cpu"))
    meter.start()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del big
    assert meter.peak_mb() >= 60
    meter.reset_peak()  # the high-water mark drops back to what is live now
    small = torch.ones(2**20 // 4)
    assert meter.peak_mb() < 30
    del small


def test_device_name_of_the_cpu():
    assert "threads" in device_name(torch.device("cpu"))
