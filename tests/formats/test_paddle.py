"""PLSC Paddle checkpoints (.pd, .pdparams) read without Paddle, converted to our layout."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from maekit.checkpoint.pretrained import load_checkpoint
from maekit.errors import MaekitError
from maekit.formats import load_state_dict, read_checkpoint
from maekit.formats.paddle import paddle_to_torch
from maekit.phases.linprobe import attach_probe_head

from .builders import (
    paddle_layout,
    set_from_paddle,
    tiny_encoder,
    tiny_mae,
    write_pd,
    write_pdparams,
)


def mae_outputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        loss, pred, _ = model(imgs, mask_ratio=0.75, noise=noise)
    return loss, pred


def test_pd_checkpoint_gives_the_outputs_of_directly_set_weights(tmp_path):
    arrays = paddle_layout(tiny_mae(seed=0))  # what PLSC would have written
    path = write_pd(tmp_path / "checkpoint-7.pd", arrays)

    expected = set_from_paddle(tiny_mae(seed=1), arrays)
    loaded = tiny_mae(seed=2)
    state = load_checkpoint(path, loaded, strict=True, verbose=False)
    (loss_a, pred_a), (loss_b, pred_b) = mae_outputs(loaded), mae_outputs(expected)
    assert torch.equal(loss_a, loss_b) and torch.equal(pred_a, pred_b)
    assert mae_outputs(loaded)[0] != mae_outputs(tiny_mae(seed=2))[0]  # weights did change

    n_linear = sum(isinstance(m, nn.Linear) for m in loaded.modules())
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * 192, 192)
    _, report = load_state_dict(path)
    assert f"transposed {n_linear} Linear weights" in report.summary()
    assert "ignored Paddle optimizer and scaler state" in report.summary()
    assert "epoch 7" in report.summary() and "\n" not in report.summary()


def test_pd_pickled_with_protocol_2(tmp_path):
    """Older Paddle writes protocol 2, where numpy bytes go through _codecs.encode."""
    src = tiny_mae()
    path = write_pd(tmp_path / "checkpoint-1.pd", paddle_layout(src), epoch=1, protocol=2)
    assert b"_codecs" in path.read_bytes()
    state, _ = load_state_dict(path)
    assert all(torch.equal(state[k], v) for k, v in src.state_dict().items())


def test_pd_checkpoint_through_read_checkpoint(tmp_path):
    path = write_pd(tmp_path / "checkpoint-7.pd", paddle_layout(tiny_mae()))
    ckpt = read_checkpoint(path)
    assert ckpt["epoch"] == 7 and ckpt["optimizer"] is None and ckpt["scaler"] is None
    assert type(ckpt["args"]) is dict and ckpt["args"]["blr"] == 1.5e-4
    assert all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())


def test_linear_probe_batchnorm_statistics_are_mapped(tmp_path):
    src = attach_probe_head(tiny_encoder(global_pool=False))
    with torch.no_grad():  # statistics a BatchNorm would have learned
        src.head[0].running_mean.uniform_(-1, 1)
        src.head[0].running_var.uniform_(0.5, 2)
    arrays = paddle_layout(src)
    assert "head.0._mean" in arrays and "head.0.running_mean" not in arrays
    path = write_pd(tmp_path / "checkpoint-89.pd", arrays)

    expected = set_from_paddle(attach_probe_head(tiny_encoder(seed=3, global_pool=False)), arrays)
    loaded = attach_probe_head(tiny_encoder(seed=4, global_pool=False))
    load_checkpoint(path, loaded, strict=True, verbose=False)  # num_batches_tracked is added
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), expected.eval()(x))
    assert torch.equal(loaded.head[0].running_var, src.head[0].running_var)
    _, report = load_state_dict(path)
    assert "running_mean/running_var in head.0" in report.summary()


@pytest.mark.parametrize("protocol", [2, 4])
def test_flat_pdparams_with_the_name_table(tmp_path, protocol):
    src = tiny_encoder(global_pool=True)
    arrays = paddle_layout(src)
    path = write_pdparams(tmp_path / "vit.pdparams", arrays, protocol)
    loaded = tiny_encoder(seed=9, global_pool=True)
    state = load_checkpoint(path, loaded, strict=True, verbose=False)
    assert "StructuredToParameterName@@" not in state
    expected = set_from_paddle(tiny_encoder(seed=8, global_pool=True), arrays)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))
    _, report = load_state_dict(path)
    assert report.source == "Paddle parameters (.pdparams)" and report.tensors == len(arrays)


def test_pdparams_values_as_name_array_tuples(tmp_path):
    """Newer paddle.save writes (name, array) tuples in .pdparams too."""
    arrays = paddle_layout(tiny_encoder())
    path = tmp_path / "x.pdparams"
    path.write_bytes(pickle.dumps({k: (f"p{i}", a) for i, (k, a) in enumerate(arrays.items())}))
    state, _ = load_state_dict(path)
    assert torch.equal(state["head.weight"], torch.from_numpy(arrays["head.weight"]).T)


def test_bfloat16_stored_as_uint16():
    bf = torch.randn(4, 3).to(torch.bfloat16)
    raw = bf.view(torch.int16).numpy().view(np.uint16)  # how Paddle saves bf16
    state, _ = paddle_to_torch({"blocks.0.mlp.fc1.bias": raw})
    assert state["blocks.0.mlp.fc1.bias"].dtype == torch.bfloat16
    assert torch.equal(state["blocks.0.mlp.fc1.bias"], bf)


def test_a_pickle_that_is_not_paddle(tmp_path):
    path = tmp_path / "x.pd"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(MaekitError, match="not a Paddle checkpoint"):
        load_state_dict(path)
