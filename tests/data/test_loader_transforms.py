"""The pre-training transform and the distributed training loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler, TensorDataset

from maekit.data import build_train_loader
from maekit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pretrain_transform
from maekit.errors import MaekitError

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_imagenet_constants():
    assert IMAGENET_MEAN == pytest.approx((0.485, 0.456, 0.406))
    assert IMAGENET_STD == pytest.approx((0.229, 0.224, 0.225))


@pytest.mark.parametrize("size", [28, 32])
def test_pretrain_transform_shape(size):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8))
    x = pretrain_transform(size)(img)
    assert x.shape == (3, size, size) and x.dtype == torch.float32


def test_pretrain_transform_normalises():
    torch.manual_seed(0)
    t = pretrain_transform(16)
    mean_color = tuple(round(m * 255) for m in IMAGENET_MEAN)
    x = t(Image.new("RGB", (40, 30), mean_color))
    assert x.abs().max() < 0.02  # the ImageNet mean maps to ~0
    white = t(Image.new("RGB", (40, 30), (255, 255, 255)))
    torch.testing.assert_close(white, ((1 - MEAN) / STD).expand(3, 16, 16), atol=1e-3, rtol=0)
    black = t(Image.new("RGB", (40, 30), (0, 0, 0)))
    torch.testing.assert_close(black, (-MEAN / STD).expand(3, 16, 16), atol=1e-3, rtol=0)


def test_pretrain_transform_is_random():
    t = pretrain_transform(16)
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    torch.manual_seed(0)
    a = t(img)
    b = t(img)
    assert not torch.equal(a, b)  # random crop / flip
    torch.manual_seed(0)
    assert torch.equal(a, t(img))  # but seeded


def dataset(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n).float().view(n, 1), torch.zeros(n, dtype=torch.long))


def test_dataset_smaller_than_one_batch():
    with pytest.raises(MaekitError, match="batch"):
        build_train_loader(dataset(3), 4, 0, 1, 0, 0, False)


def test_dataset_smaller_than_one_global_batch():
    with pytest.raises(MaekitError):
        build_train_loader(dataset(6), 4, 0, 2, 0, 0, False)


def test_single_process_loader_is_shuffled_with_drop_last():
    loader = build_train_loader(dataset(10), 4, 0, 1, 0, 0, False)
    assert isinstance(loader.sampler, DistributedSampler)
    assert loader.drop_last and len(loader) == 2
    loader.sampler.set_epoch(0)
    e0 = [int(v) for x, _, _ in loader for v in x.view(-1)]
    loader.sampler.set_epoch(1)
    e1 = [int(v) for x, _, _ in loader for v in x.view(-1)]
    assert len(e0) == 8 and len(set(e0)) == 8
    assert e0 != sorted(e0) or e1 != sorted(e1)
    assert e0 != e1  # reshuffled per epoch


def test_two_ranks_cover_disjoint_indices():
    ds = dataset(20)
    seen = []
    for rank in (0, 1):
        loader = build_train_loader(ds, 2, rank, 2, 123, 0, False)
        loader.sampler.set_epoch(3)
        seen.append([i for _epoch, i in loader.sampler])
        assert len(loader) == 5
    assert len(seen[0]) == len(seen[1]) == 10
    assert set(seen[0]).isdisjoint(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(20))


def test_same_seed_same_order_across_ranks_setup():
    a = build_train_loader(dataset(20), 2, 0, 2, 5, 0, False)
    b = build_train_loader(dataset(20), 2, 0, 2, 5, 0, False)
    assert list(a.sampler) == list(b.sampler)
    assert {epoch for epoch, _ in a.sampler} == {0}
