"""ConvMAE layout: channels-last conv stages (maekit) vs the official NCHW + permute-pair layout.

Times forward + backward of a ConvMAE pre-training step, fp32, in both layouts on the same
parameters and masks, alternating the two so that machine load drifts hit both alike.

    PYTHONPATH=. python benchmarks/convmae_layout.py --model convmae_convvit_small_patch16 \
        --input_size 32 --patch_size 4 --batch_size 32 --steps 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maekit.models import create_model
from tests.models.convmae_reference import convmae_encoder_nchw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="convmae_convvit_small_patch16")
    ap.add_argument("--input_size", type=int, default=32)
    ap.add_argument("--patch_size", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, img_size=args.input_size, patch_size=args.patch_size)
    imgs = torch.randn(args.batch_size, 3, args.input_size, args.input_size)
    noise = torch.rand(args.batch_size, model.num_patches)

    def step_channels_last() -> torch.Tensor:
        return model(imgs, 0.75, noise)[0]

    def step_nchw() -> torch.Tensor:
        latent, mask, ids_restore = convmae_encoder_nchw(model, imgs, 0.75, noise)
        return model.forward_loss(imgs, model.forward_decoder(latent, ids_restore), mask)

    steps = {"channels-last (maekit)": step_channels_last, "NCHW + permute pairs": step_nchw}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(args.steps + 1):  # the first round warms up and is dropped
        for name, step in steps.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step().backward()
            if i:
                times[name].append(time.perf_counter() - t0)
    print(
        f"{args.model} {args.input_size}px patch {args.patch_size}, batch {args.batch_size}, fp32, "
        f"{torch.get_num_threads()} threads, median of {args.steps} steps (forward + backward):"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"  {name:24s} {med * 1000:8.1f} ms/step (min {min(ts) * 1000:.1f})  "
            f"{args.batch_size / med:7.1f} img/s"
        )


if __name__ == "__main__":
    main()
