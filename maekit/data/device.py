"""uint8 batches finished on the training device.

A pre-training loader's workers hand uint8 crops (``pretrain_transform(..., uint8=True)``):
one byte per channel value through shared memory and the host-to-device copy instead of four
(256 images at 224 px: 38.5 MB instead of 154 MB). :class:`NormalizeOnDevice` copies each
batch to the device (non-blocking from pinned memory) and converts and normalises it there with
ToTensor + Normalize's own arithmetic (:func:`~maekit.data.transforms.normalize_uint8`), so the
float batch is the one the workers would have made.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..errors import MaekitError
from .transforms import normalize_uint8


class NormalizeOnDevice:
    """Wraps a loader of (uint8 samples, targets, skipped) batches: yields (float32 samples on
    ``device``, normalised by ``mean``/``std``, targets, skipped); ``sampler`` and ``len`` pass
    through. The statistics are put on the device once, here, not per batch."""

    def __init__(
        self, loader, device: torch.device, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.loader = loader
        self.device = device
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(shape).to(device)
        self.std = torch.tensor(std, dtype=torch.float32).view(shape).to(device)

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def finish(self, samples: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) on the host -> normalised float32 on the device."""
        if samples.dtype != torch.uint8:  # a transform that did not end in PILToTensor
            raise MaekitError(
                f"the loader handed {samples.dtype} images where uint8 was expected; "
                "please report it (a bug in maekit's pipeline, not in the data)"
            )
        return normalize_uint8(samples.to(self.device, non_blocking=True), self.mean, self.std)

    def __iter__(self) -> Iterator[tuple]:
        for samples, *rest in self.loader:
            yield (self.finish(samples), *rest)
