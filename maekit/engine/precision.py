"""Mixed precision: resolve ``--amp`` to a dtype, an autocast context and a grad scaler."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


def cpu_has_fast_bf16() -> bool:
    """True when bf16 matmuls beat fp32 on this CPU: only with AMX tiles.

    AVX-512 BF16 alone is not enough. On a 2-core Xeon with AVX-512 BF16 and no AMX
    (BENCHMARKS.md), oneDNN's bf16 matmul ran at 166 GFLOP/s against MKL's 320 in fp32,
    and a MAE ViT-B step under bf16 autocast took 1.8x as long as in fp32. Without
    either, PyTorch emulates bf16, far slower still.
    """
    return bool(torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # None = full fp32
    device_type: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A real scaler only for fp16; a disabled one (no-op) otherwise."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """auto -> bf16 on GPUs that support it and on CPUs with AMX, else fp32."""
    kind = device.type
    if amp == "auto":
        if kind == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "none"
        else:
            amp = "bf16" if cpu_has_fast_bf16() else "none"
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return Precision(dtype, kind)
