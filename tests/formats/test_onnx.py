"""``maekit convert --to onnx``: 4-channel, non-square encoders and classifiers, run by
onnxruntime at batch sizes other than the exported one (the batch axis is dynamic)."""

from __future__ import annotations

import sys

import onnxruntime as ort
import pytest
import torch

from maekit.cli import main
from maekit.formats.convert import convert
from maekit.models import create_model
from maekit.models.mae import MaskedAutoencoderViT
from maekit.models.registry import register_model
from maekit.models.vit import VisionTransformerEncoder
from maekit.phases.linprobe import attach_probe_head
from tests.conftest import assert_one_error_line, run_cli_in_process
from tests.golden.models import register_golden_models

from .builders import WIDE_ARGS

TINY = dict(embed_dim=192, depth=2, num_heads=3, patch_size=8)


@pytest.fixture
def wide_models():
    """Two tiny registered models (the name fixes the architecture, as for a real run);
    tests/conftest.py removes them afterwards."""
    register_model(
        "mae_onnx_tiny",
        MaskedAutoencoderViT,
        kind="pretrain",
        decoder_embed_dim=128,
        decoder_depth=1,
        decoder_num_heads=4,
        **TINY,
    )
    register_model("vit_onnx_tiny", VisionTransformerEncoder, kind="encoder", **TINY)


def save(tmp_path, model, name: str, patch_size: int = 8) -> object:
    path = tmp_path / "ck.pth"
    args = {"model": name, **WIDE_ARGS, "patch_size": patch_size}
    torch.save({"model": model.state_dict(), "args": args}, path)
    return path


def run_onnx(path, x: torch.Tensor, output: str) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "pixel_values" and inp.shape[1:] == [4, 32, 48]
    assert isinstance(inp.shape[0], str)  # a named, dynamic batch axis
    assert [o.name for o in session.get_outputs()] == [output]
    return torch.from_numpy(session.run(None, {"pixel_values": x.numpy()})[0])


def batches():
    g = torch.Generator().manual_seed(5)
    return [torch.randn(n, 4, 32, 48, generator=g) for n in (2, 3)]


def diff_line(lines: list[str]) -> float:
    (line,) = [x for x in lines if "max abs diff" in x]
    figure = float(line.split("max abs diff ")[1].split()[0])
    assert figure <= 1e-4
    return figure


def test_mae_encoder_features_are_the_cls_token(tmp_path, wide_models):
    torch.manual_seed(0)
    mae = create_model("mae_onnx_tiny", img_size=(32, 48), in_chans=4).eval()
    lines = convert(save(tmp_path, mae, "mae_onnx_tiny"), tmp_path / "enc.onnx", "onnx")
    diff_line(lines)
    assert any("cls token" in x for x in lines)
    for x in batches():
        got = run_onnx(tmp_path / "enc.onnx", x, "features")
        with torch.no_grad():
            torch.testing.assert_close(got, mae.forward_features(x)[:, 0], rtol=0, atol=1e-4)


def test_global_pool_encoder_without_head_gives_pooled_features(tmp_path, wide_models):
    torch.manual_seed(1)
    enc = create_model(
        "vit_onnx_tiny", img_size=(32, 48), in_chans=4, num_classes=0, global_pool=True
    ).eval()
    with torch.no_grad():  # a trained fc_norm, so skipping it would show
        enc.fc_norm.weight.uniform_(0.5, 2)
        enc.fc_norm.bias.normal_()
    convert(save(tmp_path, enc, "vit_onnx_tiny"), tmp_path / "enc.onnx", "onnx")
    for x in batches():
        got = run_onnx(tmp_path / "enc.onnx", x, "features")
        with torch.no_grad():
            torch.testing.assert_close(got, enc(x), rtol=0, atol=1e-4)  # timm's pooled output


@pytest.mark.parametrize("global_pool", [True, False])
def test_classifier_logits(tmp_path, capsys, wide_models, global_pool):
    torch.manual_seed(2)
    clf = create_model(
        "vit_onnx_tiny", img_size=(32, 48), in_chans=4, num_classes=5, global_pool=global_pool
    ).eval()
    src = save(tmp_path, clf, "vit_onnx_tiny")
    assert main(["convert", str(src), str(tmp_path / "clf.onnx"), "--to", "onnx"]) == 0
    diff_line(capsys.readouterr().out.splitlines())  # the figure is in what the command prints
    for x in batches():
        with torch.no_grad():
            torch.testing.assert_close(
                run_onnx(tmp_path / "clf.onnx", x, "logits"), clf(x), rtol=0, atol=1e-4
            )


def test_linear_probe_head_is_folded(tmp_path, wide_models):
    torch.manual_seed(3)
    clf = create_model(
        "vit_onnx_tiny", img_size=(32, 48), in_chans=4, num_classes=5, global_pool=False
    )
    probe = attach_probe_head(clf).eval()
    with torch.no_grad():
        probe.head[0].running_mean.uniform_(-1, 1)
        probe.head[0].running_var.uniform_(0.2, 3)
        probe.head[1].weight.normal_(0, 0.1)
    lines = convert(save(tmp_path, probe, "vit_onnx_tiny"), tmp_path / "lp.onnx", "onnx")
    assert any("folded" in x for x in lines)
    for x in batches():
        with torch.no_grad():
            torch.testing.assert_close(
                run_onnx(tmp_path / "lp.onnx", x, "logits"), probe(x), rtol=0, atol=1e-4
            )


def test_missing_onnxruntime_is_one_line_and_writes_nothing(tmp_path, monkeypatch, wide_models):
    torch.manual_seed(0)
    clf = create_model("vit_onnx_tiny", img_size=(32, 48), in_chans=4, num_classes=5)
    src = save(tmp_path, clf, "vit_onnx_tiny")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    r = run_cli_in_process(
        ["convert", str(src), str(tmp_path / "m.onnx"), "--to", "onnx"], tmp_path
    )
    assert_one_error_line(r, "convert", "pip install maekit[onnx]")
    assert not list(tmp_path.glob("*.onnx*")) and not list(tmp_path.glob(".m.onnx*"))


def test_unregistered_model_name_is_refused(tmp_path):
    clf = create_model("vit_tiny_patch16", depth=1, img_size=32, patch_size=8, num_classes=3)
    torch.save({"model": clf.state_dict()}, tmp_path / "ck.pth")  # no args: no model name
    r = run_cli_in_process(
        ["convert", str(tmp_path / "ck.pth"), str(tmp_path / "m.onnx"), "--to", "onnx"], tmp_path
    )
    assert_one_error_line(r, "convert", "builds the model by name")
    assert not (tmp_path / "m.onnx").exists()


def test_weights_that_do_not_fit_the_named_model_are_refused(tmp_path, wide_models):
    # saved as depth 1, named a depth-2 model: one line, nothing written
    clf = create_model("vit_onnx_tiny", img_size=(32, 48), in_chans=4, depth=1, num_classes=5)
    src = save(tmp_path, clf, "vit_onnx_tiny")
    r = run_cli_in_process(
        ["convert", str(src), str(tmp_path / "m.onnx"), "--to", "onnx"], tmp_path
    )
    assert_one_error_line(r, "convert", "do not fit vit_onnx_tiny")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name", ["convmae_golden", "convvit_golden"])
def test_convmae_family_exports_too(tmp_path, name):
    """No cls token: the feature is the mean of the tokens (a classifier: its logits); the
    ConvMAE stages keep the batch axis dynamic as well."""
    register_golden_models()
    torch.manual_seed(4)
    extra = {"num_classes": 3} if name.startswith("convvit") else {}
    model = create_model(name, img_size=(32, 48), in_chans=4, **extra).eval()
    lines = convert(save(tmp_path, model, name, 16), tmp_path / "c.onnx", "onnx")
    diff_line(lines)
    output = "logits" if extra else "features"
    for x in batches():
        with torch.no_grad():
            want = model(x) if extra else model.forward_features(x).mean(dim=1)
        torch.testing.assert_close(
            run_onnx(tmp_path / "c.onnx", x, output), want, rtol=0, atol=1e-4
        )
