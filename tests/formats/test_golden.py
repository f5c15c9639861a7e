"""Checkpoints written by the real tools load, and give the outputs those tools computed.

The files under tests/golden/ were made by ``paddle.save`` (PLSC's checkpoint layout) and by
``torch.save`` (the official MAE layout, ``args`` an argparse.Namespace); the scripts beside them
regenerate them and ``versions.json`` records the tool versions. Paddle is not needed here.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import maekit
from maekit.cli import main
from maekit.formats import load_state_dict, read_checkpoint
from maekit.formats.safe_pickle import load_pickle
from maekit.models import create_model
from tests.conftest import write_image_folder
from tests.golden.models import IMG_SIZE, register_golden_models

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
PLSC = GOLDEN / "plsc_mae"
OFFICIAL = GOLDEN / "official_mae"
# Paddle's kernels (attention, GELU, LayerNorm) against torch's: float32 rounding only.
PADDLE_TOL = dict(rtol=1e-4, atol=2e-5)
TORCH_TOL = dict(rtol=1e-5, atol=1e-6)  # same tool, maybe another thread count
SOURCES = [
    (PLSC / "checkpoint-1.pd", PLSC, PADDLE_TOL),
    (PLSC / "mae.pdparams", PLSC, PADDLE_TOL),
    (OFFICIAL / "checkpoint-1.pth", OFFICIAL, TORCH_TOL),
]


@pytest.fixture(autouse=True)
def _golden_models():
    register_golden_models()


def fresh_mae(seed: int = 123) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mae_vit_golden", img_size=IMG_SIZE).eval()


def assert_matches_reference(model: torch.nn.Module, ref_dir: Path, tol: dict) -> None:
    ref = np.load(ref_dir / "reference.npz")
    imgs, noise = torch.from_numpy(ref["imgs"]), torch.from_numpy(ref["noise"])
    with torch.no_grad():
        if hasattr(model, "decoder_pred"):
            loss, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
            np.testing.assert_array_equal(mask.numpy(), ref["mask"])
            np.testing.assert_allclose(pred.numpy(), ref["pred"], **tol)
            np.testing.assert_allclose(loss.numpy(), ref["loss"], **tol)
        features = model.forward_features(imgs)
    np.testing.assert_allclose(features.numpy(), ref["features"], **tol)


def test_the_golden_files_are_what_the_tools_wrote():
    """Guards against a regenerated file silently becoming a maekit-made one."""
    assert (PLSC / "checkpoint-1.pd").read_bytes()[:2] == b"\x80\x04"  # plain pickle, not torch
    assert b"builtins" in (PLSC / "checkpoint-1.pd").read_bytes()  # paddle's tuple tensors
    assert (OFFICIAL / "checkpoint-1.pth").read_bytes()[:2] == b"PK"  # torch.save's zip
    assert '"paddlepaddle"' in (PLSC / "versions.json").read_text()


@pytest.mark.parametrize("path, ref_dir, tol", SOURCES, ids=lambda x: getattr(x, "name", ""))
def test_load_checkpoint_gives_the_tools_outputs(path, ref_dir, tol):
    model = fresh_mae()
    before = model.state_dict()["blocks.0.attn.qkv.weight"].clone()
    maekit.load_checkpoint(path, model, strict=True, verbose=False)
    assert not torch.equal(before, model.state_dict()["blocks.0.attn.qkv.weight"])
    assert_matches_reference(model, ref_dir, tol)


def test_full_paddle_checkpoint_metadata():
    ckpt = read_checkpoint(PLSC / "checkpoint-1.pd")
    assert ckpt["epoch"] == 1 and ckpt["args"]["model"] == "mae_vit_golden"
    assert ckpt["optimizer"] is None and ckpt["scaler"] is None  # Paddle's own state: not ours
    _, report = load_state_dict(PLSC / "checkpoint-1.pd")
    assert "PLSC Paddle checkpoint (.pd, epoch 1)" in report.summary()


def test_every_paddle_dtype():
    state, _ = load_state_dict(PLSC / "dtypes.pdparams")
    ref = np.load(PLSC / "reference.npz")
    dtypes = {
        "f32": torch.float32,
        "f16": torch.float16,
        "bf16": torch.bfloat16,
        "i64": torch.int64,
        "i32": torch.int32,
        "u8": torch.uint8,
        "bool": torch.bool,
    }
    assert set(state) == set(dtypes)
    for name, dtype in dtypes.items():
        assert state[name].dtype == dtype, name
        np.testing.assert_array_equal(
            state[name].double().numpy(), ref[f"dtype_{name}"], err_msg=name
        )


@pytest.mark.parametrize("to", ["maekit", "safetensors"])
def test_maekit_convert(tmp_path, to):
    out = tmp_path / ("mae.pth" if to == "maekit" else "mae.safetensors")
    assert main(["convert", str(PLSC / "checkpoint-1.pd"), str(out), "--to", to]) == 0
    model = fresh_mae()
    maekit.load_checkpoint(out, model, strict=True, verbose=False)
    assert_matches_reference(model, PLSC, PADDLE_TOL)


# A learning rate so small that one AdamW step leaves every float32 weight bit-identical: the
# checkpoint a run writes then holds exactly the weights it started from.
FROZEN = [
    "--lr",
    "1e-30",
    "--min_lr",
    "0",
    "--epochs",
    "1",
    "--max_train_step",
    "1",
    "--batch_size",
    "2",
    "--num_workers",
    "0",
    "--input_size",
    str(IMG_SIZE),
    "--amp",
    "none",
    "--print_freq",
    "1",
]


def small_labeled_folder(root: Path) -> Path:
    write_image_folder(root / "t", classes=2, per_class=4, seed=0)
    write_image_folder(root / "v", classes=2, per_class=2, seed=1)
    (root / "t" / "train").rename(root / "train")
    (root / "v" / "train").rename(root / "val")
    return root


@pytest.mark.parametrize(
    "path", [PLSC / "checkpoint-1.pd", OFFICIAL / "checkpoint-1.pth"], ids=lambda p: p.name
)
def test_resume_from_the_golden_checkpoint(tmp_path, path, capsys):
    data = small_labeled_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--model",
        "mae_vit_golden",
        "--resume",
        str(path),
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        *FROZEN,
        "--epochs",
        "3",
    ]
    assert main(args) == 0
    assert f"resumed from {path}: continuing at epoch 2" in capsys.readouterr().out
    model = fresh_mae()
    maekit.load_checkpoint(out / "checkpoint-2.pth", model, strict=True, verbose=False)
    assert_matches_reference(model, path.parent, PADDLE_TOL if path.suffix == ".pd" else TORCH_TOL)


def test_finetune_from_the_paddle_checkpoint(tmp_path):
    data = small_labeled_folder(tmp_path / "data")
    out = tmp_path / "ft"
    args = [
        "finetune",
        "--model",
        "vit_golden",
        "--finetune",
        str(PLSC / "checkpoint-1.pd"),
        "--cls_token",
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        *FROZEN,
    ]
    assert main(args) == 0
    torch.manual_seed(0)
    encoder = create_model("vit_golden", img_size=IMG_SIZE, num_classes=2, global_pool=False)
    maekit.load_checkpoint(out / "checkpoint-0.pth", encoder.eval(), strict=True, verbose=False)
    assert_matches_reference(encoder, PLSC, PADDLE_TOL)  # the encoder's features: Paddle's


def test_numpy_1x_module_names(tmp_path):
    """A .pd written under numpy 1.x names numpy.core.multiarray (numpy 2: numpy._core)."""
    data = pickle.dumps(load_pickle(PLSC / "checkpoint-1.pd"), protocol=2)  # text GLOBAL opcodes
    assert b"cnumpy._core.multiarray\n" in data
    old = tmp_path / "checkpoint-1.pd"
    old.write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    assert b"numpy._core" not in old.read_bytes()
    model = fresh_mae()
    maekit.load_checkpoint(old, model, strict=True, verbose=False)
    assert_matches_reference(model, PLSC, PADDLE_TOL)
