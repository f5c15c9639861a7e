"""Input-pipeline throughput: decode + the phase's training augmentation, through the phases'
own loader (per-sample seeding, bad-file skipping, persistent workers), no model.

The first batch is not timed (worker start-up); then batches are drawn until ``--images``
images have been loaded, wrapping around epochs on a small folder.
"""

from __future__ import annotations

import time

from ..config import BenchConfig, FinetuneConfig
from ..data import build_dataset, build_train_loader
from ..data.transforms import finetune_transform, linprobe_transform, pretrain_transform
from .hardware import cpu_count


def phase_transform(phase: str, input_size: int):
    """The phase's training transform with its default settings."""
    if phase == "pretrain":
        return pretrain_transform(input_size)
    if phase == "linprobe":
        return linprobe_transform(input_size)
    d = FinetuneConfig()
    return finetune_transform(input_size, d.aa, d.color_jitter, d.reprob, d.remode, d.recount,
                              d.crop_min)  # fmt: skip


def measure_pipeline(cfg: BenchConfig) -> dict:
    dataset = build_dataset(cfg.data_path, "train", phase_transform(cfg.phase, cfg.input_size))
    workers = min(cfg.num_workers, cpu_count())
    loader = build_train_loader(dataset, cfg.batch_size, 0, 1, cfg.seed, workers, pin_memory=False)
    epoch, loaded, start = 0, None, 0.0
    while loaded is None or loaded < cfg.images:
        loader.sampler.set_epoch(epoch)
        for samples, _targets, _bad in loader:
            if loaded is None:  # the first batch pays for worker start-up: not timed
                loaded, start = 0, time.perf_counter()
                continue
            loaded += samples.shape[0]
            if loaded >= cfg.images:
                break
        epoch += 1
    elapsed = time.perf_counter() - start
    rate = loaded / elapsed
    return {
        "data_path": cfg.data_path, "phase": cfg.phase, "input_size": cfg.input_size,
        "batch_size": cfg.batch_size, "num_workers": workers, "cpus": cpu_count(),
        "images": loaded, "img_per_s": rate, "img_per_s_per_worker": rate / max(1, workers),
    }  # fmt: skip
