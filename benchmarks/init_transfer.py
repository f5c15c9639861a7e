"""The ``pretrain --init`` transfer figure: RGB weights made at 224 px into a one-channel 160x256 run.

1. Pre-train ``mae_vit_tiny_patch16`` at 224 px for ``--steps`` steps on Fashion-MNIST train
   images (as RGB, ImageNet statistics; resized once, random flips), and save it in the
   official layout: {'model', 'epoch', 'args': argparse.Namespace}.
2. Build the one-channel 160x256 model, load the file with ``init_from_checkpoint`` (prints
   the summary line), and a random-init model of the same seed.
3. Print both models' loss on one fixed batch (Fashion-MNIST val images as one channel,
   160x256, the grayscale statistics; fixed masking noise): the step-0 loss of each run.

    PYTHONPATH=. python3 benchmarks/init_transfer.py --steps 60 --out /tmp/mae224.pth
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from maekit.checkpoint.pretrained import init_from_checkpoint
from maekit.data.fashion_mnist import FashionMNIST
from maekit.data.transforms import normalization
from maekit.models import create_model

MODEL = "mae_vit_tiny_patch16"


def images(split: str, n: int, size: tuple[int, int], chans: int, seed: int) -> torch.Tensor:
    """``n`` random images of ``split``, bicubic-resized to ``size``, normalised for ``chans``."""
    ds = FashionMNIST(split)
    idx = torch.randperm(len(ds.images), generator=torch.Generator().manual_seed(seed))[:n]
    x = torch.tensor(ds.images[idx.numpy()]).float().div(255)[:, None]  # (n, 1, 28, 28)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in normalization(chans))
    return (x.expand(-1, chans, -1, -1) - mean) / std


def pretrain_224(steps: int, batch: int, out: str) -> None:
    torch.manual_seed(0)
    model = create_model(MODEL, img_size=224)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    pool = images("train", 256, (224, 224), 3, seed=0)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        x = pool[torch.randint(0, len(pool), (batch,), generator=gen)]
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = model(x, mask_ratio=0.75)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step + 1 == steps:
            print(
                f"224 px pre-training step {step}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    args = argparse.Namespace(model=MODEL, input_size=224, norm_pix_loss=False, blr=1e-3)
    torch.save({"model": model.state_dict(), "epoch": 0, "args": args}, out)
    print(f"wrote {out} (official layout)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--out", default="mae224_official.pth")
    p.add_argument("--skip_pretrain", action="store_true", help="reuse --out")
    a = p.parse_args()
    if not a.skip_pretrain:
        pretrain_224(a.steps, a.batch_size, a.out)
    batch = images("val", 16, (160, 256), 1, seed=1)
    noise = torch.rand(16, 10 * 16, generator=torch.Generator().manual_seed(2))
    losses = {}
    for name in ("init", "random"):
        torch.manual_seed(7)
        model = create_model(MODEL, img_size=(160, 256), in_chans=1).eval()
        if name == "init":
            print(init_from_checkpoint(model, a.out))
        with torch.no_grad():
            losses[name] = model(batch, mask_ratio=0.75, noise=noise)[0].item()
    print(
        f"step-0 loss on the fixed batch (16 val images, 1 x 160 x 256): --init {losses['init']:.4f}, "
        f"random init {losses['random']:.4f} (ratio {losses['init'] / losses['random']:.2f})"
    )


if __name__ == "__main__":
    main()
