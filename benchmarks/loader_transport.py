"""img/s and open files of the --gpu_decode loader (decoding on the CPU) or of the CPU pipeline,
for any maekit tree, so that a tree from before a change can be measured beside one after it.

    python3 benchmarks/loader_transport.py REPO {encoded,cpu} WORKERS [--data DIR] [--images N]

Uses only calls both trees have (build_dataset, build_train_loader, encoded_folder,
collate_encoded, GpuDecodeLoader); the open files are the most any worker (a child process)
and the main process held at once, read from /proc (Linux). One JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def children() -> list[int]:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        pids += [int(p) for p in task.read_text().split()]
    return pids


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("mode", choices=["encoded", "cpu"])
    ap.add_argument("workers", type=int)
    ap.add_argument("--data", required=True, help="image folder (JPEGs)")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch_size", type=int, default=256)
    a = ap.parse_args()
    sys.path.insert(0, a.repo)
    import torch

    import maekit.data.gpu_decode as gd
    from maekit.data import build_dataset, build_train_loader
    from maekit.data.transforms import PRETRAIN_SCALE, pretrain_transform

    torch.set_num_threads(1)
    if a.mode == "encoded":
        ds = gd.encoded_folder(build_dataset(a.data, "train", None), PRETRAIN_SCALE)
        inner = build_train_loader(
            ds, a.batch_size, 0, 1, 0, a.workers, False, collate_fn=gd.collate_encoded
        )
        loader = gd.GpuDecodeLoader(inner, torch.device("cpu"), 224)
    else:
        ds = build_dataset(a.data, "train", pretrain_transform(224))
        loader = build_train_loader(ds, a.batch_size, 0, 1, 0, a.workers, False)
    epoch, loaded, start, worker_max, main_max = 0, None, 0.0, 0, 0
    while loaded is None or loaded < a.images:
        loader.sampler.set_epoch(epoch)
        for x, _, _ in loader:
            worker_max = max([worker_max] + [open_files(p) for p in children()])
            main_max = max(main_max, open_files(os.getpid()))
            if loaded is None:  # worker start-up: not timed
                loaded, start = 0, time.perf_counter()
                continue
            loaded += x.shape[0]
            if loaded >= a.images:
                break
        epoch += 1
    rate = loaded / (time.perf_counter() - start)
    print(
        json.dumps(
            {
                "repo": a.repo,
                "mode": a.mode,
                "workers": a.workers,
                "images": loaded,
                "img_per_s": round(rate, 1),
                "open_files_per_worker": worker_max,
                "open_files_main": main_max,
            }
        )
    )


if __name__ == "__main__":
    main()
