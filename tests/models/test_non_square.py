"""Non-square inputs: ``--input_size H W`` through models, tables, transforms and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maekit.analysis.visualize import render_grid
from maekit.checkpoint.pretrained import load_pretrained_encoder
from maekit.cli import main
from maekit.config import PretrainConfig
from maekit.data.transforms import eval_transform, pretrain_transform
from maekit.errors import MaekitError
from maekit.models import create_model
from maekit.models.pos_embed import sincos_2d

HW = (24, 40)  # 3 x 5 patches of 8


def test_mae_on_a_non_square_grid():
    torch.manual_seed(0)
    m = create_model(
        "mae_vit_tiny_patch16", depth=1, decoder_depth=1, img_size=list(HW), patch_size=8
    )
    assert m.grid_size == (3, 5)
    torch.testing.assert_close(m.pos_embed[0, 1:], sincos_2d(192, (3, 5)), rtol=0, atol=0)
    torch.testing.assert_close(m.decoder_pos_embed[0, 1:], sincos_2d(128, (3, 5)), rtol=0, atol=0)
    x = torch.randn(2, 3, *HW)
    assert torch.equal(m.unpatchify(m.patchify(x)), x)
    loss, pred, mask = m(x, mask_ratio=0.6)
    assert pred.shape == (2, 15, 192) and mask.shape == (2, 15) and torch.isfinite(loss)
    assert (mask.sum(1) == 15 - int(15 * 0.4)).all()
    # the grid is row-major: patch (r, c) of the image is token r * 5 + c
    marked = torch.zeros(1, 3, *HW)
    marked[..., 8:16, 32:40] = 1.0  # row 1, column 4
    assert m.patchify(marked)[0].sum(-1).nonzero().flatten().tolist() == [1 * 5 + 4]


def test_convmae_stages_on_a_non_square_grid():
    torch.manual_seed(0)
    m = create_model(
        "convmae_convvit_small_patch16", depth=(1, 1, 1), decoder_depth=1, img_size=HW, patch_size=8
    )
    loss, pred, mask = m(torch.randn(2, 3, *HW), mask_ratio=0.75)
    assert m.grid_size == (3, 5) and pred.shape == (2, 15, 192) and torch.isfinite(loss)


def test_finetune_resizes_a_non_square_table(tmp_path):
    torch.manual_seed(0)
    mae = create_model("mae_vit_tiny_patch16", depth=1, decoder_depth=1, img_size=HW, patch_size=8)
    torch.save(
        {"model": mae.state_dict(), "args": {"input_size": list(HW), "patch_size": 8}},
        tmp_path / "m.pth",
    )
    vit = create_model("vit_tiny_patch16", depth=1, img_size=(48, 80), patch_size=8, num_classes=3)
    (line,) = load_pretrained_encoder(vit, tmp_path / "m.pth", global_pool=True)
    assert "interpolated pos_embed (1, 16, 192) -> (1, 61, 192)" in line
    # the resized table is the 3x5 table upsampled: its corners are the old corners' values
    grid = vit.pos_embed[0, 1:].reshape(6, 10, 192)
    old = mae.pos_embed[0, 1:].reshape(3, 5, 192)
    assert torch.allclose(grid[0, 0], old[0, 0], atol=0.25) and not torch.allclose(
        grid[0, 0], old[2, 4], atol=0.25
    )


def test_transforms_and_grid_picture():
    img = Image.fromarray((np.random.default_rng(0).random((50, 90, 3)) * 255).astype("uint8"))
    assert tuple(eval_transform([24, 40])(img).shape) == (3, 24, 40)
    assert tuple(pretrain_transform([40, 24])(img).shape) == (3, 40, 24)
    cols = [np.zeros((2, 24, 40, 3), np.uint8)] * 4
    picture, layout = render_grid(cols, "title", scale=2)
    box = layout.cell_box(1, 3)
    assert (box[2] - box[0], box[3] - box[1]) == (80, 48)
    assert picture.size == layout.size


def test_input_size_flag_takes_one_or_two_numbers(capsys):
    assert PretrainConfig(input_size=[224]).input_size == 224
    assert PretrainConfig(input_size=[192, 320]).input_size == [192, 320]
    assert PretrainConfig(input_size=[64, 64]).input_size == 64
    assert main(["pretrain", "--input_size", "160", "256", "256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "--input_size takes one number (square) or two (height width), got 3" in err[0]
    )
    with pytest.raises(MaekitError, match="not divisible by the patch size 16"):
        create_model("mae_vit_tiny_patch16", img_size=(224, 200))


def test_init_and_resume_exclude_each_other(capsys, tmp_path):
    assert (
        main(["pretrain", "--init", "a.pth", "--resume", "b.pth", "--output_dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "--init" in err[0]
        and "--resume" in err[0]
        and "give one of them" in err[0]
    )
