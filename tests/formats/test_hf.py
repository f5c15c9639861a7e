"""Hugging Face transformers both ways: ViTMAEForPreTraining, ViTMAEModel, ViTForImageClassification.

transformers is a test dependency only: it builds the reference models (random weights from a
small config, nothing downloaded) and loads what ``maekit convert --to hf`` writes.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from maekit.cli import main
from maekit.formats import load_state_dict, read_file
from maekit.formats.hf import hf_to_maekit
from maekit.models import create_model
from maekit.models.pos_embed import sincos_2d

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
NOISE = torch.rand(3, 16, generator=torch.Generator().manual_seed(1))
# Small but not trivial: 2 heads of 16, MLP ratio 4, one decoder block; official LayerNorm eps
SIZES = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    image_size=32,
    patch_size=8,
    layer_norm_eps=1e-6,
)
MAE_SIZES = dict(
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=64,
)


def hf_mae(tmp_path, norm_pix_loss: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.ViTMAEConfig(
        **SIZES, **MAE_SIZES, norm_pix_loss=norm_pix_loss, mask_ratio=0.75
    )
    model = transformers.ViTMAEForPreTraining(cfg).eval()
    with torch.no_grad():  # HF (5.x) initialises some tensors to zero: make every tensor count
        model.decoder.mask_token.normal_()
        model.vit.embeddings.cls_token.normal_()
        set_sincos_tables(model)
    model.save_pretrained(tmp_path / "hf_mae")
    return model, tmp_path / "hf_mae"


@torch.no_grad()
def set_sincos_tables(model) -> None:
    """The fixed tables released ViTMAE weights carry (a fresh HF 5.x model has zeros there)."""
    for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
        side = round((table.shape[1] - 1) ** 0.5)
        table.copy_(sincos_2d(table.shape[-1], side, cls_token=True)[None])


def maekit_mae(norm_pix_loss: bool = True):
    return create_model(
        "mae_vit_tiny_patch16",
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        img_size=32,
        patch_size=8,
        norm_pix_loss=norm_pix_loss,
    ).eval()


def loaded_from_pretrained(cls, folder):
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model.eval()


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_vitmae_pretraining_gives_the_same_loss_prediction_and_mask(tmp_path, norm_pix_loss):
    hf, folder = hf_mae(tmp_path, norm_pix_loss)
    state, report = load_state_dict(folder)
    assert "Hugging Face ViTMAEForPreTraining folder" in report.summary()
    model = maekit_mae(norm_pix_loss)
    model.load_state_dict(state, strict=True)  # every tensor, no extra one
    with torch.no_grad():
        ref = hf(pixel_values=X, noise=NOISE)
        loss, pred, mask = model(X, mask_ratio=0.75, noise=NOISE)
    torch.testing.assert_close(mask, ref.mask, rtol=0, atol=0)
    torch.testing.assert_close(pred, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, ref.loss, rtol=0, atol=1e-5)
    # the architecture comes from config.json
    args = read_file(folder).extras["args"]
    assert (args["input_size"], args["patch_size"], args["in_chans"]) == (32, 8, 3)
    assert (
        args["norm_pix_loss"] is norm_pix_loss and args["hf_architecture"] == "ViTMAEForPreTraining"
    )


def test_convert_to_maekit_and_back_round_trips(tmp_path, capsys):
    hf, folder = hf_mae(tmp_path)
    assert main(["convert", str(folder), str(tmp_path / "m.pth"), "--to", "maekit"]) == 0
    assert main(["convert", str(tmp_path / "m.pth"), str(tmp_path / "back"), "--to", "hf"]) == 0
    assert "ViTMAEForPreTraining.from_pretrained" in capsys.readouterr().out
    again = loaded_from_pretrained(transformers.ViTMAEForPreTraining, tmp_path / "back")
    ref = hf.state_dict()
    assert again.state_dict().keys() == ref.keys()
    for k, v in again.state_dict().items():
        assert torch.equal(v, ref[k]), k
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    orig = json.loads((folder / "config.json").read_text())
    assert {k: cfg[k] for k in orig if k != "transformers_version"} == {
        k: v for k, v in orig.items() if k != "transformers_version"
    }


def test_maekit_mae_exports_to_hf_with_equal_outputs(tmp_path):
    torch.manual_seed(3)
    model = maekit_mae(norm_pix_loss=False)
    args = {
        "model": "mae_vit_tiny_patch16",
        "input_size": 32,
        "patch_size": 8,
        "in_chans": 3,
        "norm_pix_loss": False,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.2, 0.25],
    }
    torch.save({"model": model.state_dict(), "epoch": 4, "args": args}, tmp_path / "ck.pth")
    # embed_dim 32 is no standard width: the heads come from... nowhere; refused in one line
    assert main(["convert", str(tmp_path / "ck.pth"), str(tmp_path / "hf"), "--to", "hf"]) == 2
    assert not (tmp_path / "hf").exists()
    # a model whose sizes are the size table's (tiny: 192 wide, 3 heads; decoder 128, 4 heads)
    torch.manual_seed(4)
    model = create_model(
        "mae_vit_tiny_patch16", depth=2, decoder_depth=1, img_size=32, patch_size=8
    ).eval()
    torch.save({"model": model.state_dict(), "epoch": 4, "args": args}, tmp_path / "ck.pth")
    assert main(["convert", str(tmp_path / "ck.pth"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf = loaded_from_pretrained(transformers.ViTMAEForPreTraining, tmp_path / "hf")
    assert hf.config.num_attention_heads == 3 and hf.config.decoder_num_attention_heads == 4
    with torch.no_grad():
        ref = hf(pixel_values=X, noise=NOISE)
        loss, pred, mask = model(X, mask_ratio=0.75, noise=NOISE)
    torch.testing.assert_close(mask, ref.mask, rtol=0, atol=0)
    torch.testing.assert_close(pred, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, ref.loss, rtol=0, atol=1e-5)
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert (pre["image_mean"], pre["image_std"]) == (args["mean"], args["std"])
    # and the encoder alone is a ViTMAEModel
    enc = {
        k: v for k, v in model.state_dict().items() if not k.startswith(("decoder_", "mask_token"))
    }
    torch.save({"model": enc}, tmp_path / "enc.pth")
    assert main(["convert", str(tmp_path / "enc.pth"), str(tmp_path / "hf_enc"), "--to", "hf"]) == 0
    hf_enc = loaded_from_pretrained(transformers.ViTMAEModel, tmp_path / "hf_enc")
    with torch.no_grad():
        latent, _, _ = model.forward_encoder(X, 0.75, noise=NOISE)
        out = hf_enc(pixel_values=X, noise=NOISE).last_hidden_state
    torch.testing.assert_close(out, latent, rtol=0, atol=1e-5)
    back, report = load_state_dict(tmp_path / "hf_enc")
    assert back.keys() == enc.keys() and all(torch.equal(back[k], v) for k, v in enc.items())


def hf_classifier(seed: int = 0, num_labels: int = 5):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(**SIZES, num_labels=num_labels)
    return transformers.ViTForImageClassification(cfg).eval()


def test_vit_classifier_both_ways_gives_equal_logits(tmp_path, capsys):
    hf = hf_classifier()
    hf.save_pretrained(tmp_path / "hf_vit")
    state, _ = load_state_dict(tmp_path / "hf_vit")
    model = create_model(
        "vit_tiny_patch16",
        embed_dim=32,
        depth=2,
        num_heads=2,
        img_size=32,
        patch_size=8,
        num_classes=5,
        global_pool=False,
    ).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        ref = hf(pixel_values=X).logits
        torch.testing.assert_close(model(X), ref, rtol=0, atol=1e-5)
    args = read_file(tmp_path / "hf_vit").extras["args"]
    assert args["nb_classes"] == 5 and args["cls_token"] is True
    assert (
        main(["convert", str(tmp_path / "hf_vit"), str(tmp_path / "ft.pth"), "--to", "maekit"]) == 0
    )
    assert main(["convert", str(tmp_path / "ft.pth"), str(tmp_path / "out"), "--to", "hf"]) == 0
    again = loaded_from_pretrained(transformers.ViTForImageClassification, tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values=X).logits, ref, rtol=0, atol=1e-5)
    for k, v in hf.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_global_pool_classifier_is_refused_for_hf(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model(
        "vit_tiny_patch16", depth=1, img_size=32, patch_size=8, num_classes=4, global_pool=True
    )
    torch.save({"model": model.state_dict()}, tmp_path / "gp.pth")
    assert main(["convert", str(tmp_path / "gp.pth"), str(tmp_path / "out"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "global pooling" in err and "--cls_token" in err and len(err.strip().splitlines()) == 1


def test_weights_file_alone_and_pytorch_model_bin(tmp_path):
    hf, folder = hf_mae(tmp_path)
    via_folder, _ = load_state_dict(folder)
    # the weights file on its own (config.json beside it is used)
    alone, report = load_state_dict(folder / "model.safetensors")
    assert "Hugging Face ViTMAEForPreTraining weights" in report.summary()
    # pytorch_model.bin (a torch zip file: read by the weights-only loader), no config beside it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(load_file(str(folder / "model.safetensors")), bin_dir / "pytorch_model.bin")
    from_bin, _ = load_state_dict(bin_dir / "pytorch_model.bin")
    (bin_dir / "config.json").write_text((folder / "config.json").read_text())
    from_bin_dir, _ = load_state_dict(bin_dir)
    for other in (alone, from_bin, from_bin_dir):
        assert other.keys() == via_folder.keys()
        assert all(torch.equal(other[k], v) for k, v in via_folder.items())


def test_transformers5_in_memory_names_are_read_too(tmp_path):
    """transformers >= 5 renames layers in memory (layers.N.attention.q_proj): a state dict
    saved from it with torch.save carries those names."""
    hf, folder = hf_mae(tmp_path)
    mem = {k: v for k, v in hf.state_dict().items()}
    assert any(".q_proj." in k for k in mem)
    ours, _, _, arch = hf_to_maekit(mem, None, "memory")
    via_folder, _ = load_state_dict(folder)
    assert arch == "ViTMAEForPreTraining" and ours.keys() == via_folder.keys()
    assert all(torch.equal(ours[k], v) for k, v in via_folder.items())


def test_unsupported_architecture_is_named_in_one_line(tmp_path):
    from tests.conftest import run_cli_in_process

    folder = tmp_path / "swin"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["SwinForImageClassification"], "model_type": "swin"})
    )
    save_file({"embeddings.norm.weight": torch.ones(4)}, str(folder / "model.safetensors"))
    r = run_cli_in_process(
        ["convert", str(folder), str(tmp_path / "out.pth"), "--to", "maekit"], tmp_path
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "SwinForImageClassification" in r.stderr and "ViTMAEForPreTraining" in r.stderr
    assert not (tmp_path / "out.pth").exists()
