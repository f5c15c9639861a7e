"""Exports of non-square, N-channel checkpoints (issue 27): the printed timm call, the HF folder
(loaded by transformers, or refused in one line where transformers cannot build it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

from maekit.cli import main
from maekit.errors import MaekitError
from maekit.formats.convert import convert
from maekit.models import create_model
from tests.conftest import assert_one_error_line, run_cli_in_process

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


# --------------------------------------------------------------------------- Hugging Face


def loaded(cls, folder):
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model.eval()


def encoder_state(mae) -> dict:
    """The encoder's weights alone (no decoder, no mask token)."""
    return {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder_", "mask_"))}


STATS = {"mean": [0.1, 0.2, 0.3, 0.4], "std": [0.5, 0.25, 0.2, 0.1]}


def test_wide_mae_for_pretraining_is_refused_in_one_line_and_writes_nothing(tmp_path):
    """transformers' ViTMAEForPreTraining cannot be built for H != W (its decoder table is
    square): shown here with transformers itself, then the export refuses before writing."""
    import transformers

    cfg = transformers.ViTMAEConfig(image_size=[32, 48], patch_size=8, num_channels=4)
    with pytest.raises(RuntimeError, match="size of tensor"):
        transformers.ViTMAEForPreTraining(cfg)
    args = {"model": "mae_vit_tiny_patch16", **WIDE_ARGS, **STATS}
    torch.save({"model": wide_mae().state_dict(), "args": args}, tmp_path / "mae.pth")
    r = run_cli_in_process(
        ["convert", str(tmp_path / "mae.pth"), str(tmp_path / "hf"), "--to", "hf"], tmp_path
    )
    assert_one_error_line(r, "convert", "--encoder_only")
    assert "square-only" in r.stderr
    assert not (tmp_path / "hf").exists()


def test_wide_mae_encoder_only_loads_as_vitmae_model(tmp_path, capsys):
    import transformers

    mae = wide_mae()
    args = {"model": "mae_vit_tiny_patch16", **WIDE_ARGS, **STATS, "max_value": 65535}
    torch.save({"model": mae.state_dict(), "args": args}, tmp_path / "mae.pth")
    src, out = str(tmp_path / "mae.pth"), str(tmp_path / "hf")
    assert main(["convert", src, out, "--to", "hf", "--encoder_only"]) == 0
    assert "ViTMAEModel.from_pretrained" in capsys.readouterr().out
    hf = loaded(transformers.ViTMAEModel, tmp_path / "hf")
    assert list(hf.config.image_size) == [32, 48] and hf.config.num_channels == 4
    noise = torch.rand(3, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        latent, _, _ = mae.forward_encoder(X, 0.75, noise=noise)
        got = hf(pixel_values=X, noise=noise).last_hidden_state
    torch.testing.assert_close(got, latent, rtol=0, atol=1e-5)
    # the image processor feeds what training fed: /65535 (16-bit), the run's 4-channel stats
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 32, "width": 48}
    assert pre["rescale_factor"] == pytest.approx(1 / 65535)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    img = np.random.default_rng(0).integers(0, 65536, (32, 48, 4)).astype(np.float32)
    pixels = processor(images=img, input_data_format="channels_last", return_tensors="pt")
    mean, std = torch.tensor(STATS["mean"]), torch.tensor(STATS["std"])
    expected = (torch.from_numpy(img).permute(2, 0, 1) / 65535 - mean[:, None, None]) / std[
        :, None, None
    ]
    torch.testing.assert_close(pixels["pixel_values"][0], expected, rtol=0, atol=1e-4)
    # and --encoder_only where there is no decoder is a mistake said in one line
    torch.save({"model": encoder_state(mae), "args": args}, tmp_path / "enc.pth")
    with pytest.raises(MaekitError, match="has none"):
        convert(tmp_path / "enc.pth", tmp_path / "again", "hf", encoder_only=True)


@pytest.mark.parametrize("max_value, factor", [(None, 1 / 255), (255, 1 / 255), (1.0, 1.0)])
def test_rescale_factor_is_the_runs_pixel_divisor(tmp_path, max_value, factor):
    ours = wide_encoder(global_pool=False)
    args = {"model": "vit_tiny_patch16", **WIDE_ARGS, **STATS}
    if max_value is not None:  # absent: a checkpoint from before max_value was saved
        args["max_value"] = max_value
    torch.save({"model": ours.state_dict(), "args": args}, tmp_path / "ft.pth")
    convert(tmp_path / "ft.pth", tmp_path / "hf", "hf")
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pre["rescale_factor"] == pytest.approx(factor)
    assert (pre["image_mean"], pre["image_std"]) == (STATS["mean"], STATS["std"])


def test_wide_classifier_loads_with_the_runs_class_names(tmp_path):
    import transformers

    ours = wide_encoder(global_pool=False, num_classes=3)
    args = {"model": "vit_tiny_patch16", **WIDE_ARGS, **STATS}
    names = ["cat", "dog", "eel"]
    torch.save({"model": ours.state_dict(), "args": args, "classes": names}, tmp_path / "ft.pth")
    lines = convert(tmp_path / "ft.pth", tmp_path / "hf", "hf")
    assert not any("LABEL_" in x for x in lines)
    hf = loaded(transformers.ViTForImageClassification, tmp_path / "hf")
    assert hf.config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    assert hf.config.label2id == {"cat": 0, "dog": 1, "eel": 2}
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=X).logits, ours(X), rtol=0, atol=1e-5)


def test_classifier_without_class_names_says_label_i(tmp_path):
    import transformers

    ours = wide_encoder(global_pool=False, num_classes=3)
    args = {"model": "vit_tiny_patch16", **WIDE_ARGS}
    torch.save({"model": ours.state_dict(), "args": args}, tmp_path / "ft.pth")
    lines = convert(tmp_path / "ft.pth", tmp_path / "hf", "hf")
    assert sum("LABEL_0..LABEL_2" in x and "no class names" in x for x in lines) == 1
    assert loaded(transformers.ViTForImageClassification, tmp_path / "hf").config.id2label == {
        0: "LABEL_0",
        1: "LABEL_1",
        2: "LABEL_2",
    }


def test_square_four_channel_mae_for_pretraining_gives_the_same_loss(tmp_path):
    """N channels alone are no problem for ViTMAEForPreTraining (its patchify is channel-last,
    as ours): loss, prediction and mask equal."""
    import transformers

    torch.manual_seed(6)
    mae = create_model(
        "mae_vit_tiny_patch16", depth=2, decoder_depth=1, img_size=32, patch_size=8, in_chans=4
    ).eval()
    args = {"model": "mae_vit_tiny_patch16", "input_size": 32, "patch_size": 8, "in_chans": 4}
    torch.save({"model": mae.state_dict(), "args": args}, tmp_path / "mae.pth")
    convert(tmp_path / "mae.pth", tmp_path / "hf", "hf")
    hf = loaded(transformers.ViTMAEForPreTraining, tmp_path / "hf")
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(pixel_values=x, noise=noise)
        loss, pred, mask = mae(x, mask_ratio=0.75, noise=noise)
    torch.testing.assert_close(mask, ref.mask, rtol=0, atol=0)
    torch.testing.assert_close(pred, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, ref.loss, rtol=0, atol=1e-5)


def test_stats_that_do_not_match_the_channels_are_refused(tmp_path):
    ours = wide_encoder(global_pool=False)
    args = {"model": "vit_tiny_patch16", **WIDE_ARGS, "mean": [0.5] * 3, "std": [0.2] * 3}
    torch.save({"model": ours.state_dict(), "args": args}, tmp_path / "ft.pth")
    r = run_cli_in_process(
        ["convert", str(tmp_path / "ft.pth"), str(tmp_path / "hf"), "--to", "hf"], tmp_path
    )
    assert_one_error_line(r, "convert", "3/3 values for a 4-channel model")
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow  # trains two steps in process
def test_finetune_checkpoint_saves_class_names_that_hf_export_uses(tmp_path):
    import transformers

    from tests.conftest import write_image_folder

    data = tmp_path / "data"
    write_image_folder(data, classes=3, per_class=2, seed=0)
    (data / "val").symlink_to(data / "train", target_is_directory=True)
    for i, name in enumerate(("zebra", "apple", "mango")):  # sorted: apple, mango, zebra
        (data / "train" / f"class_{i}").rename(data / "train" / name)
    out = tmp_path / "ft"
    flags = ["--model", "vit_tiny_patch16", "--input_size", "32", "48", "--patch_size", "8"]
    flags += ["--batch_size", "2", "--num_workers", "0", "--epochs", "1", "--warmup_epochs", "0"]
    flags += ["--max_train_step", "1", "--cls_token", "--output_dir", str(out)]
    r = run_cli_in_process(["finetune", "--data_path", str(data), *flags], tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(out / "checkpoint-0.pth", weights_only=True)
    assert ckpt["classes"] == ["apple", "mango", "zebra"]
    assert convert(out / "checkpoint-0.pth", tmp_path / "hf", "hf")
    hf = loaded(transformers.ViTForImageClassification, tmp_path / "hf")
    assert hf.config.id2label == {0: "apple", 1: "mango", 2: "zebra"}
    assert list(hf.config.image_size) == [32, 48]


@pytest.mark.parametrize("to", ["timm", "onnx", "maekit"])
def test_encoder_only_is_for_hf(tmp_path, to):
    torch.save({"model": wide_mae().state_dict()}, tmp_path / "mae.pth")
    r = run_cli_in_process(
        ["convert", str(tmp_path / "mae.pth"), str(tmp_path / "out"), "--to", to, "--encoder_only"],
        tmp_path,
    )
    assert_one_error_line(r, "convert", "use it with --to hf")
    assert not (tmp_path / "out").exists()
