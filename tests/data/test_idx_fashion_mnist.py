"""idx parsing and the Fashion-MNIST dataset from the Debian package."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maekit.data import FashionMNIST, build_dataset
from maekit.data.fashion_mnist import DEFAULT_ROOT, read_idx
from maekit.data.transforms import pretrain_transform
from maekit.errors import MaekitError


def idx_bytes(arr: np.ndarray) -> bytes:
    assert arr.dtype == np.uint8
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return (np.arange(2 * 3 * 5) * 7 % 256).astype(np.uint8).reshape(2, 3, 5)


def test_read_plain_idx(tmp_path, images):
    p = tmp_path / "imgs-idx3-ubyte"
    p.write_bytes(idx_bytes(images))
    out = read_idx(p)
    assert out.shape == (2, 3, 5) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)


def test_read_gzipped_idx(tmp_path, images):
    p = tmp_path / "imgs-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(read_idx(p), images)


def test_read_labels_idx1(tmp_path):
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    p = tmp_path / "labels-idx1-ubyte"
    p.write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(p), labels)


def test_dims_are_big_endian(tmp_path):
    arr = np.zeros((300, 2), dtype=np.uint8)  # 300 needs two bytes: 0x00 0x00 0x01 0x2c
    p = tmp_path / "x"
    p.write_bytes(idx_bytes(arr))
    assert read_idx(p).shape == (300, 2)


@pytest.mark.parametrize(
    "magic", [b"\x00\x00\x0d\x03", b"\x01\x00\x08\x03", b"\x00\x00\x0b\x01", b"PK\x03\x04"]
)
def test_wrong_magic(tmp_path, images, magic):
    p = tmp_path / "x"
    p.write_bytes(magic + idx_bytes(images)[4:])
    with pytest.raises(MaekitError, match="idx"):
        read_idx(p)


def test_truncated_payload(tmp_path, images):
    p = tmp_path / "x"
    p.write_bytes(idx_bytes(images)[:-5])
    with pytest.raises(MaekitError, match="truncated"):
        read_idx(p)


def test_truncated_header(tmp_path, images):
    """A file cut inside its dimension table is an idx error too, not a numpy ValueError."""
    p = tmp_path / "x"
    p.write_bytes(idx_bytes(images)[:9])
    with pytest.raises(MaekitError):
        read_idx(p)


def test_empty_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"")
    with pytest.raises(MaekitError):
        read_idx(p)


def test_truncated_gzip(tmp_path):
    """An interrupted download of a .gz file is a MaekitError, not a raw EOFError."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    data = gzip.compress(idx_bytes(arr))
    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaekitError):
        read_idx(p)


def test_fashion_mnist_from_own_plain_files(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(imgs))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    ds = FashionMNIST("val", root=tmp_path)
    assert len(ds) == 5
    img, label = ds[1]
    assert label == 9 and isinstance(label, int)
    assert img.mode == "RGB" and img.size == (28, 28)
    rgb = np.asarray(img)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], imgs[1])


def test_fashion_mnist_label_count_mismatch(tmp_path):
    imgs = np.zeros((5, 28, 28), dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(imgs))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(MaekitError, match="labels"):
        FashionMNIST("val", root=tmp_path)


def test_fashion_mnist_missing_files_name_the_package(tmp_path):
    with pytest.raises(MaekitError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST("train", root=tmp_path)


# --------------------------------------------------------------------------- the real files

needs_real = pytest.mark.skipif(
    not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file()
    and not (DEFAULT_ROOT / "t10k-images-idx3-ubyte").is_file(),
    reason="Fashion-MNIST package not installed",
)


@pytest.fixture(scope="module")
def fmnist_train():
    return FashionMNIST("train")


@needs_real
def test_real_train_split(fmnist_train):
    ds = fmnist_train
    assert len(ds) == 60000
    assert ds.images.shape == (60000, 28, 28)
    assert sorted(np.unique(ds.targets).tolist()) == list(range(10))
    assert np.bincount(ds.targets).tolist() == [6000] * 10
    assert len(ds.classes) == 10
    img, label = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (28, 28)
    assert label == 9  # the first training image is an ankle boot


@needs_real
def test_real_val_split():
    ds = FashionMNIST("val")
    assert len(ds) == 10000
    assert ds.targets.min() == 0 and ds.targets.max() == 9
    assert np.bincount(ds.targets).tolist() == [1000] * 10


@needs_real
def test_build_dataset_fashion_mnist_with_transform():
    ds = build_dataset("fashion-mnist", "val", pretrain_transform(32))
    x, y = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32)
    assert 0 <= y <= 9


def test_invalid_split():
    with pytest.raises(ValueError):
        FashionMNIST("test", root=Path("/nonexistent"))
