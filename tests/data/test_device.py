"""uint8 batches from the workers, normalised on the device (data/device.py): the same float
batches as normalising in the workers, a quarter of the bytes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from maekit.config import BenchConfig, PretrainConfig
from maekit.data import build_dataset, build_train_loader
from maekit.data.device import NormalizeOnDevice
from maekit.data.transforms import as_float, device_normalize, pretrain_transform
from maekit.errors import MaekitError
from tests.conftest import write_image_folder

CPU = torch.device("cpu")


def batches(root, transform, workers: int, n: int = 3) -> list[torch.Tensor]:
    """The first ``n`` training batches of the folder (seed 0, batch 4)."""
    ds = build_dataset(str(root), "train", transform)
    loader = build_train_loader(ds, 4, 0, 1, 0, workers, pin_memory=False)
    loader.sampler.set_epoch(0)
    out = []
    for samples, _targets, _bad in loader:
        out.append(samples)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize(
    "in_chans, mean, std, workers",
    [(3, None, None, 0), (1, None, None, 0), (3, [0.3, 0.5, 0.7], [0.2, 0.25, 0.3], 1)],
)
def test_uint8_batches_normalised_on_the_device_equal_the_float_pipeline(
    tmp_path, in_chans, mean, std, workers
):
    """The same seed, the same crops; normalised in the main process instead of the worker:
    bit-identical float32 (ToTensor + Normalize's operations, in their order)."""
    root = write_image_folder(tmp_path / "data", classes=2, per_class=6, size=(40, 52))
    tf = pretrain_transform(24, in_chans, mean, std, uint8=True)
    assert device_normalize(tf) is not None
    small = batches(root, tf, workers)
    want = batches(root, as_float(tf), workers)
    finish = NormalizeOnDevice(None, CPU, *device_normalize(tf)).finish
    for u, f in zip(small, want, strict=True):
        assert u.dtype == torch.uint8 and u.shape == (4, in_chans, 24, 24)
        assert f.dtype == torch.float32 and f.element_size() == 4 * u.element_size()
        got = finish(u)
        assert got.dtype == torch.float32
        assert torch.equal(got, f)
    assert not torch.equal(small[0], small[1])  # different images: the comparison has content


def test_the_wrapper_yields_float_batches_and_passes_the_sampler_through(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=1, per_class=8)
    tf = pretrain_transform(16, uint8=True)
    ds = build_dataset(str(root), "train", tf)
    inner = build_train_loader(ds, 4, 0, 1, 0, 0, pin_memory=False)
    loader = NormalizeOnDevice(inner, CPU, *device_normalize(tf))
    assert loader.sampler is inner.sampler and len(loader) == len(inner) == 2
    loader.sampler.set_epoch(0)
    x, targets, skipped = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 16, 16)
    assert targets.shape == (4,) and skipped.shape == (4,)


def test_a_float_batch_where_uint8_was_expected_is_refused():
    finish = NormalizeOnDevice(None, CPU, (0.5,), (0.5,)).finish
    with pytest.raises(MaekitError, match="float32 images where uint8 was expected"):
        finish(torch.zeros(1, 1, 4, 4))


def test_the_pretrain_recipe_hands_uint8_and_trains_on_normalised_floats(tmp_path):
    """`maekit pretrain`'s loader: uint8 from the workers, float32 normalised by --mean/--std
    in the loop: the batch the float pipeline makes."""
    from maekit.engine.distributed import DistEnv
    from maekit.engine.recipe import RunContext
    from maekit.phases.pretrain import PretrainRecipe

    root = write_image_folder(tmp_path / "data", classes=1, per_class=8)
    cfg = PretrainConfig(
        data_path=str(root), input_size=16, batch_size=4, device="cpu", mean=[0.4, 0.5, 0.6],
        std=[0.2, 0.3, 0.25], val_freq=0, vis_freq=0,
    )  # fmt: skip
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    tf = recipe.train_transform()
    assert device_normalize(tf) == ((0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
    env = DistEnv(0, 1, 0, CPU)
    ctx = RunContext(env, None, None, tmp_path, 0, False, 1e-3, 4)
    loader = recipe.train_loader(ctx)
    assert isinstance(loader, NormalizeOnDevice)
    loader.sampler.set_epoch(0)
    x = next(iter(loader))[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, 16, 16)
    assert torch.equal(x, batches(root, as_float(tf), 0, n=1)[0])


def test_bench_pipeline_reports_a_quarter_of_the_bytes(tmp_path):
    """`maekit bench --pipeline`: uint8 batches in shared memory, 1 byte per value; with
    --float_batches (the transport before) 4 bytes."""
    from maekit.bench.pipeline import measure_pipeline

    root = write_image_folder(tmp_path / "data", classes=1, per_class=8)
    cfg = BenchConfig(
        pipeline=True, data_path=str(root), input_size=32, batch_size=4, num_workers=1, images=8
    )
    uint8 = measure_pipeline(cfg)
    before = measure_pipeline(replace(cfg, float_batches=True))
    assert uint8["sample_dtype"] == "uint8" and before["sample_dtype"] == "float32"
    assert uint8["batch_bytes"] == 4 * 3 * 32 * 32
    assert before["batch_bytes"] == 4 * uint8["batch_bytes"]
    assert uint8["batch_in_shared_memory"] and before["batch_in_shared_memory"]
