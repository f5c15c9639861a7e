"""Regenerate the official-style PyTorch golden file: ``python tests/golden/make_torch_golden.py``.

The official MAE's ``save_model`` writes ``torch.save({'model', 'optimizer', 'epoch', 'scaler',
'args'})`` with ``args`` an ``argparse.Namespace``. This script does the same with real
``torch.save`` for the tiny golden MAE (tests/golden/models.py) after one AdamW(0.9, 0.95) step
(the official two weight-decay groups)
under a GradScaler, runs the model on a fixed input, and writes (in tests/golden/official_mae/)
``checkpoint-1.pth``, ``reference.npz`` (input, noise, loss, pred, mask, encoder features as
computed at generation time) and ``versions.json``. Run with PYTHONPATH at the repository root.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from maekit.models import create_model  # noqa: E402
from tests.golden.models import IMG_SIZE, register_golden_models  # noqa: E402

OUT = Path(__file__).resolve().parent / "official_mae"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    register_golden_models()
    torch.manual_seed(0)
    model = create_model("mae_vit_golden", img_size=IMG_SIZE)
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(2, 3, IMG_SIZE, IMG_SIZE)).astype("float32")
    noise = rng.random((2, (IMG_SIZE // 8) ** 2)).astype("float32")
    # The official optimizer: two groups, no decay for biases and 1-D params (frozen pos-embeds out).
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in trainable if p.ndim <= 1 or n.endswith(".bias")]
    decay = [p for n, p in trainable if not (p.ndim <= 1 or n.endswith(".bias"))]
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.05}]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cpu")
    loss = model(torch.from_numpy(imgs), 0.75, torch.from_numpy(noise))[0]
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    model.eval()
    with torch.no_grad():
        loss, pred, mask = model(torch.from_numpy(imgs), 0.75, torch.from_numpy(noise))
        features = model.forward_features(torch.from_numpy(imgs))
    args = argparse.Namespace(
        model="mae_vit_golden",
        input_size=IMG_SIZE,
        batch_size=2,
        mask_ratio=0.75,
        norm_pix_loss=False,
        blr=1.5e-4,
        epochs=2,
    )
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": 1,
            "scaler": scaler.state_dict(),
            "args": args,
        },
        OUT / "checkpoint-1.pth",
    )
    np.savez(
        OUT / "reference.npz",
        imgs=imgs,
        noise=noise,
        loss=loss.numpy(),
        pred=pred.numpy(),
        mask=mask.numpy(),
        features=features.numpy(),
    )
    versions = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "script": "tests/golden/make_torch_golden.py",
    }
    (OUT / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    print(f"wrote {OUT}: {sorted(p.name for p in OUT.iterdir())}", file=sys.stderr)


if __name__ == "__main__":
    main()
