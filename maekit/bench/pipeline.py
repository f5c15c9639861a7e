"""Input-pipeline throughput: decode + the phase's training augmentation, through the phases'
own loader (per-sample seeding, bad-file skipping, persistent workers), no model.

The first batch is not timed (worker start-up); then batches are drawn until ``--images``
images have been loaded, wrapping around epochs on a small folder (the workers prefetch
across epochs, as in training). The most files any worker held open at once is recorded
(Linux): shared-memory batches in flight count, so a transport that costs one file per
image shows here before it hits ``ulimit -n``.

Pre-training's workers hand uint8 crops; each batch is then converted and normalised on
``--device`` as in training (:class:`~maekit.data.device.NormalizeOnDevice`), inside the timed
loop. ``batch_bytes`` is one batch's samples as the workers hand them (in shared memory);
``--float_batches`` normalises in the workers instead, the transport before uint8 batches.

``--gpu_decode`` runs the pre-training loader of ``maekit pretrain --gpu_decode``: workers
read bytes and draw crops, the main process decodes (nvJPEG on CUDA). With ``--device cpu``
the same loader decodes with torchvision's CPU decoder: a measure of its transport (packed
batches between processes), not of nvJPEG.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from ..config import BenchConfig
from ..data import build_dataset, build_train_loader
from ..data.device import NormalizeOnDevice
from ..data.gpu_decode import GpuDecodeLoader, collate_encoded, encoded_folder
from ..data.pixels import reader_for, resolve_for
from ..data.transforms import PRETRAIN_SCALE, as_float, device_normalize
from ..data.workers import loader_workers, usable_cpus
from ..engine.distributed import resolve_device
from ..errors import MaekitError
from ..phases import PHASES
from .hardware import synchronize


def phase_recipe(phase: str, input_size: int, data_path: str = "fashion-mnist", in_chans: int = 3):
    """The phase's recipe with its default settings, resolved for ``data_path`` (its pixel
    path: 8-bit, or full precision for 16-bit/float/N-band files)."""
    entry = PHASES[phase]
    recipe_cls = entry.recipe_class()
    stats = {} if in_chans in (1, 3) else {"mean": [0.5] * in_chans, "std": [0.25] * in_chans}
    cfg = entry.config(input_size=input_size, in_chans=in_chans, data_path=data_path, **stats)
    if phase == "finetune" and resolve_for(cfg)[0].pixels == "full":
        cfg = replace(cfg, aa="none")  # RandAugment is 8-bit only: the tensor recipe's default
    recipe = recipe_cls(cfg, recipe_cls.bench_data(1))
    recipe.cfg, _ = recipe.resolve(cfg)
    return recipe


def phase_transform(phase: str, input_size: int):
    """The phase's training transform with its default settings (its recipe's own)."""
    return phase_recipe(phase, input_size).train_transform()


def child_pids() -> list[int]:
    """This process's children (the loader's workers), from /proc; [] where there is none."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return pids


def open_files(pid: int) -> int | None:
    """How many files ``pid`` has open (Linux /proc), None if unknown."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def measure_pipeline(cfg: BenchConfig) -> dict:
    """img/s of the phase's training loader; with ``--gpu_decode`` (pre-training transform) the
    batches are decoded and augmented on the GPU, and the figure is end to end to GPU memory
    (so is a uint8 pipeline's on CUDA: its batches are normalised there)."""
    recipe = phase_recipe(cfg.phase, cfg.input_size, cfg.data_path, cfg.in_chans)
    transform = recipe.train_transform()
    if cfg.float_batches and device_normalize(transform):
        transform = as_float(transform)  # normalised in the workers, as before uint8 batches
    dataset = build_dataset(cfg.data_path, "train", transform, reader=reader_for(recipe.cfg))
    workers = loader_workers(cfg.num_workers)
    uint8 = device_normalize(transform)  # (mean, std) the loop normalises with, or None
    device = resolve_device(cfg.device) if cfg.gpu_decode or uint8 else None
    if cfg.gpu_decode:
        if cfg.phase != "pretrain" or (device.type != "cuda" and cfg.device != "cpu"):
            raise MaekitError(
                "--gpu_decode needs a CUDA device (or --device cpu to measure its "
                "loader with CPU decoding) and --phase pretrain"
            )
        dataset = encoded_folder(dataset, PRETRAIN_SCALE)
    loader = build_train_loader(
        dataset,
        cfg.batch_size,
        0,
        1,
        cfg.seed,
        workers,
        pin_memory=device is not None and device.type == "cuda",
        collate_fn=collate_encoded if cfg.gpu_decode else None,
    )
    finish = None  # uint8 batches: converted and normalised on the device, as in training
    if cfg.gpu_decode:
        loader = GpuDecodeLoader(loader, device, cfg.input_size)
    elif uint8:
        finish = NormalizeOnDevice(loader, device, *uint8).finish
    epoch, loaded, start = 0, None, 0.0
    worker_files: int | None = None
    batch_bytes: int | None = None  # what one batch of samples costs between processes
    shared = False
    while loaded is None or loaded < cfg.images:
        loader.sampler.set_epoch(epoch)
        for samples, _targets, _bad in loader:
            if not cfg.gpu_decode:
                batch_bytes = samples.untyped_storage().nbytes()
                shared = samples.is_shared()
            if finish is not None:
                samples = finish(samples)
            counts = [n for n in map(open_files, child_pids()) if n is not None]
            if counts:
                worker_files = max(worker_files or 0, *counts)
            if loaded is None:  # the first batch pays for worker start-up: not timed
                loaded, start = 0, time.perf_counter()
                continue
            loaded += samples.shape[0]
            if loaded >= cfg.images:
                break
        epoch += 1
    if device is not None:
        synchronize(device)
    elapsed = time.perf_counter() - start
    rate = loaded / elapsed
    out = {
        "data_path": cfg.data_path,
        "phase": cfg.phase,
        "input_size": cfg.input_size,
        "batch_size": cfg.batch_size,
        "num_workers": workers,
        "cpus": usable_cpus(),
        "gpu_decode": cfg.gpu_decode,
        "pixels": recipe.cfg.pixels,
        "in_chans": cfg.in_chans,
        "images": loaded,
        "img_per_s": rate,
        "img_per_s_per_worker": rate / max(1, workers),
        "open_files_per_worker": worker_files if workers else None,
        # one batch's samples as the workers hand them (in shared memory when there are
        # workers); --gpu_decode hands packed JPEG bytes instead
        "sample_dtype": None if cfg.gpu_decode else ("uint8" if uint8 else "float32"),
        "batch_bytes": batch_bytes,
        "batch_in_shared_memory": shared,
    }
    if isinstance(loader, GpuDecodeLoader):  # where the JPEGs were decoded, fallbacks counted
        out["decode_device"] = device.type
        out["decode"] = dict(loader.stats)
    return out
