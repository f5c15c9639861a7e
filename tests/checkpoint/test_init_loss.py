"""``pretrain --init`` from RGB weights into 4 channels helps: the step-0 loss on a fixed batch
of 4-band images is well below a random initialisation's.

The RGB weights are learned here (a tiny MAE, 200 steps on images of near-constant colour,
whose masked patches follow from the visible ones), saved as an official-style ``{model}``
.pth, and loaded into a 4-channel model by the path ``--init`` takes (timm's
adapt_input_conv for patch_embed, decoder_pred repeated per channel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maekit.checkpoint.pretrained import init_from_checkpoint
from maekit.models import create_model
from tests.golden.models import IMG_SIZE, register_golden_models


def images(n: int, chans: int, g: torch.Generator) -> torch.Tensor:
    """Near-constant colour per image plus a smooth variation, normalised ((x - 0.5) / 0.25)."""
    low = (
        torch.rand(n, chans, 1, 1, generator=g) * 0.8
        + torch.rand(n, chans, 4, 4, generator=g) * 0.2
    )
    x = F.interpolate(low, size=IMG_SIZE, mode="bicubic", align_corners=False).clamp(0, 1)
    return (x - 0.5) / 0.25


def test_init_from_rgb_weights_into_4_channels_starts_well_below_random(tmp_path):
    register_golden_models()
    torch.manual_seed(0)
    rgb = create_model("mae_vit_golden", img_size=IMG_SIZE, in_chans=3)
    opt = torch.optim.AdamW(rgb.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        loss = rgb(images(32, 3, g), mask_ratio=0.75)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"model": rgb.state_dict()}, tmp_path / "rgb.pth")

    batch = images(16, 4, torch.Generator().manual_seed(2))  # fixed batch, fixed masks
    noise = torch.rand(16, (IMG_SIZE // 8) ** 2, generator=torch.Generator().manual_seed(3))

    def step0_loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return model.eval()(batch, mask_ratio=0.75, noise=noise)[0].item()

    torch.manual_seed(5)
    random_init = create_model("mae_vit_golden", img_size=IMG_SIZE, in_chans=4)
    torch.manual_seed(5)
    adapted = create_model("mae_vit_golden", img_size=IMG_SIZE, in_chans=4)
    line = init_from_checkpoint(adapted, tmp_path / "rgb.pth")
    assert "patch_embed.proj 3 -> 4 input channels" in line and "decoder_pred 192 -> 256" in line
    random_loss, init_loss = step0_loss(random_init), step0_loss(adapted)
    print(f"step-0 loss, 4 bands: random init {random_loss:.4f}, --init from RGB {init_loss:.4f}")
    assert init_loss < 0.7 * random_loss, (init_loss, random_loss)  # measured: 0.44 vs 0.80
