"""Exports of non-square, N-channel checkpoints (issue 27): the printed timm call, the HF folder
(loaded by transformers, or refused in one line where transformers cannot build it)."""

from __future__ import annotations

import pytest
import timm
import torch

from maekit.cli import main
from maekit.errors import MaekitError
from maekit.formats.convert import convert

from .builders import WIDE_ARGS, wide_encoder, wide_mae

X = torch.randn(3, 4, 32, 48, generator=torch.Generator().manual_seed(0))


def printed_call(lines: list[str]) -> str:
    (line,) = [x for x in lines if x.startswith("load it with: ")]
    return line.removeprefix("load it with: ")


@pytest.mark.parametrize("pool_flag", [[], ["--global_pool"]])
def test_wide_mae_to_timm_call_loads_strictly_and_matches(tmp_path, capsys, pool_flag):
    mae = wide_mae()
    args = {"model": "mae_vit_tiny_patch16", **WIDE_ARGS}
    torch.save({"model": mae.state_dict(), "args": args}, tmp_path / "mae.pth")
    out = tmp_path / "timm.safetensors"
    assert main(["convert", str(tmp_path / "mae.pth"), str(out), "--to", "timm", *pool_flag]) == 0
    call = printed_call(capsys.readouterr().out.splitlines())
    assert "img_size=(32, 48)" in call and "in_chans=4" in call
    model = eval(call, {"timm": timm}).eval()
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out)), strict=True)
    with torch.no_grad():
        tokens = mae.forward_features(X)  # (N, 1 + 24, D) after the norm
        if pool_flag:  # avg: the norm moved to fc_norm, applied to the mean of the block outputs
            blocks = model.forward_features(X)
            pooled = torch.nn.functional.layer_norm(
                blocks[:, 1:].mean(1), (192,), mae.norm.weight, mae.norm.bias, eps=1e-6
            )
            torch.testing.assert_close(model(X), pooled, rtol=0, atol=1e-5)
            torch.testing.assert_close(mae.norm(blocks), tokens, rtol=0, atol=1e-5)
        else:
            torch.testing.assert_close(model.forward_features(X), tokens, rtol=0, atol=1e-5)
            torch.testing.assert_close(model(X), tokens[:, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("global_pool", [True, False])
def test_wide_classifier_to_timm_gives_equal_logits(tmp_path, global_pool):
    ours = wide_encoder(global_pool=global_pool, num_classes=5)
    args = {"model": "vit_tiny_patch16", **WIDE_ARGS}
    torch.save({"model": ours.state_dict(), "args": args}, tmp_path / "ft.pth")
    lines = convert(tmp_path / "ft.pth", tmp_path / "t.pth", "timm")
    call = printed_call(lines)
    assert "img_size=(32, 48)" in call and "num_classes=5" in call
    model = eval(call, {"timm": timm}).eval()
    model.load_state_dict(torch.load(tmp_path / "t.pth", weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(X), ours(X), rtol=0, atol=1e-5)


def test_non_square_grid_without_input_size_is_refused_before_writing(tmp_path):
    torch.save({"model": wide_encoder().state_dict()}, tmp_path / "ft.pth")  # no args
    with pytest.raises(MaekitError, match="not square and it records no --input_size"):
        convert(tmp_path / "ft.pth", tmp_path / "t.pth", "timm")
    assert not (tmp_path / "t.pth").exists()


def test_args_that_do_not_fit_the_position_table_are_refused(tmp_path):
    args = {"model": "vit_tiny_patch16", **WIDE_ARGS, "input_size": [48, 48]}
    torch.save({"model": wide_encoder().state_dict(), "args": args}, tmp_path / "ft.pth")
    with pytest.raises(MaekitError, match="do not belong to its weights"):
        convert(tmp_path / "ft.pth", tmp_path / "t.pth", "timm")
