"""Write tests/golden/rgb_pipeline/reference.npz: the official 8-bit RGB pipelines' output
tensors (pre-training uint8 crops, fine-tuning with RandAugment + RandomErasing, linear
probing, evaluation; RGB and --in_chans 1) for fixed images and seeds, as maekit computed them
BEFORE the full-precision path existed (commit 24a47e7). tests/data/test_rgb_pipeline_unchanged.py
checks that today's 8-bit path gives the same tensors, bit for bit.

    git worktree add /tmp/old 24a47e7 && cd /tmp/old
    PYTHONPATH=. python3 /path/to/maekit/tests/golden/make_rgb_pipeline_golden.py OUT_DIR
"""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import PIL
import timm
import torch
import torchvision
from PIL import Image


def images() -> dict[str, bytes]:
    """Fixed JPEG and PNG files (a smooth colour field with texture), encoded by Pillow."""
    rng = np.random.default_rng(5)
    out = {}
    for i, (h, w) in enumerate([(60, 80), (100, 75)]):
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w) + 60], -1)
        arr = np.clip(arr + rng.normal(0, 12, arr.shape), 0, 255).astype(np.uint8)
        for fmt in ("JPEG", "PNG"):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            out[f"img{i}.{fmt.lower()}"] = buf.getvalue()
    return out


def seed_all(seed: int) -> None:
    """timm's RandAugment and RandomErasing draw from Python's ``random``, the crops from torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pipelines():
    from maekit.data import transforms as mt

    yield "pretrain_rgb", mt.pretrain_transform(32, 3, uint8=True)
    yield "pretrain_gray", mt.pretrain_transform(32, 1, uint8=True)
    yield "finetune_rgb", mt.finetune_transform(32)
    yield "finetune_gray", mt.finetune_transform(32, in_chans=1)
    yield "linprobe_rgb", mt.linprobe_transform(32)
    yield "eval_rgb", mt.eval_transform(32)
    yield "eval_rect", mt.eval_transform([24, 40])


def main(out: Path) -> None:
    from maekit.data.folder import decode_rgb

    files = images()
    tensors = {}
    for name, tf in pipelines():
        for fname, data in files.items():
            for seed in (0, 1):
                seed_all(seed)
                img = decode_rgb(io.BytesIO(data), fname)
                tensors[f"{name}/{fname}/{seed}"] = tf(img).numpy()
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "reference.npz", **tensors)
    versions = {
        "maekit_commit": "24a47e7",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }
    (out / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
