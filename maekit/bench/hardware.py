"""What the benchmark knows about the machine: device names, peak FLOP/s, peak memory.

Peak memory is measured the same way for every configuration: the high-water mark while the
timed steps run, minus what was in use before the model was built. So it covers weights,
gradients, optimizer state and activations, not the compiler's or the allocator's start-up.
On CUDA that is ``max_memory_allocated``; on a CPU it is the process's peak resident set
(Linux ``VmHWM``, which writing ``5`` to ``/proc/self/clear_refs`` resets), after handing
freed heap memory back to the system so that a previous run's cache is not counted as free.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import re
import resource

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
# First match wins, so the specific names come before the family name.
PEAK_TFLOPS_BF16: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        name = m.group(1).strip() if m else platform.processor()
    except OSError:
        name = platform.processor()
    return f"{name or 'CPU'} ({torch.get_num_threads()} threads)"


def peak_tflops(name: str, precision: str, given: float | None = None) -> float | None:
    """``given`` if set; else the table's bf16/fp16 peak for a known GPU; else None (no MFU)."""
    if given is not None:
        return given
    if precision not in ("bf16", "fp16"):
        return None
    for key, value in PEAK_TFLOPS_BF16:
        if key in name:
            return value
    return None


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _trim_heap() -> None:
    """Return freed malloc memory to the OS (glibc), so RSS reflects live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryMeter:
    """``start()`` before the model is built, ``reset_peak()`` after warm-up, ``peak_mb()`` at
    the end: the peak above the starting level, in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0
        self.exact = True  # False when the CPU peak could not be reset (ru_maxrss fallback)

    def start(self) -> None:
        _trim_heap()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = (_status_kb("VmRSS") or 0) * 1024
        self.reset_peak()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _trim_heap()  # freed warm-up memory still held by malloc is not a peak of the steps
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.exact = False

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _status_kb("VmHWM")
            if hwm is None or not self.exact:  # the process-lifetime peak: an upper bound
                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = hwm * 1024
        return max(0, peak - self.base) / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
