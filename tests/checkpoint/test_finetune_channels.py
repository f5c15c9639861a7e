"""``finetune``/``linprobe --finetune`` from RGB weights into N-channel encoders: the patch
embedding is adapted by timm's adapt_input_conv rule, said in the summary line. Weights: the
official-format golden checkpoint (tests/golden/official_mae, written by torch.save)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maekit.checkpoint.pretrained import load_pretrained_encoder
from maekit.formats import read_checkpoint
from maekit.models import create_model
from tests.golden.models import IMG_SIZE, register_golden_models

OFFICIAL = Path(__file__).resolve().parents[1] / "golden" / "official_mae" / "checkpoint-1.pth"


@pytest.fixture(autouse=True)
def _models():
    register_golden_models()


def encoder(in_chans: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vit_golden", img_size=IMG_SIZE, in_chans=in_chans, num_classes=5).eval()


def test_gray_encoder_from_rgb_weights_sees_a_gray_image_as_the_rgb_one_did():
    """One channel = the sum of the RGB kernels: a gray image gives exactly the features the
    RGB model gives for the same image with three equal channels."""
    rgb, gray = encoder(3), encoder(1)
    load_pretrained_encoder(rgb, OFFICIAL, global_pool=rgb.uses_global_pool)
    (line,) = load_pretrained_encoder(gray, OFFICIAL, global_pool=gray.uses_global_pool)
    assert "adapted patch_embed.proj 3 -> 1 input channels (sum of the 3 kernels" in line
    gray.head.load_state_dict(rgb.head.state_dict())  # both heads are fresh: compare features
    x = torch.rand(2, 1, IMG_SIZE, IMG_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)


def test_four_band_encoder_gets_the_repeated_scaled_kernels():
    model = encoder(4)
    (line,) = load_pretrained_encoder(model, OFFICIAL, global_pool=model.uses_global_pool)
    assert "adapted patch_embed.proj 3 -> 4 input channels (kernels repeated, scaled by 3/4" in line
    w = read_checkpoint(OFFICIAL)["model"]["patch_embed.proj.weight"]  # (D, 3, p, p)
    got = model.state_dict()["patch_embed.proj.weight"]
    assert got.shape[1] == 4
    torch.testing.assert_close(got, w[:, [0, 1, 2, 0]] * 3 / 4)
    # every other encoder weight is the checkpoint's own
    ref = read_checkpoint(OFFICIAL)["model"]
    assert torch.equal(
        model.state_dict()["blocks.0.attn.qkv.weight"], ref["blocks.0.attn.qkv.weight"]
    )
