"""build_dataset on image folders: layouts, image modes, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from maekit.data import FlatImageFolder, build_dataset, image_folder
from maekit.data.folder import load_rgb
from maekit.errors import MaekitError


def write_rgb(path: Path, color=(10, 20, 30), size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_class_folders_become_an_image_folder(tmp_path):
    write_rgb(tmp_path / "cat" / "a.png")
    write_rgb(tmp_path / "cat" / "b.JPG")
    write_rgb(tmp_path / "dog" / "c.jpeg")
    ds = build_dataset(str(tmp_path), "train", None)
    assert isinstance(ds, ImageFolder)
    assert ds.classes == ["cat", "dog"]
    assert sorted(ds.targets) == [0, 0, 1]
    img, label = ds[2]
    assert img.mode == "RGB" and label == 1


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        write_rgb(tmp_path / f"{i}.png", color=(i, 0, 0))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = build_dataset(str(tmp_path), "train", None)
    assert isinstance(ds, FlatImageFolder)
    assert len(ds) == 3
    assert [ds[i][1] for i in range(3)] == [0, 0, 0]
    assert [np.asarray(ds[i][0])[0, 0, 0] for i in range(3)] == [0, 1, 2]  # sorted order


def test_train_subfolder_is_preferred(tmp_path):
    write_rgb(tmp_path / "stray.png")  # would make the root a flat folder
    write_rgb(tmp_path / "train" / "a" / "1.png")
    write_rgb(tmp_path / "train" / "b" / "2.png")
    write_rgb(tmp_path / "val" / "a" / "3.png")
    train = build_dataset(str(tmp_path), "train", None)
    assert isinstance(train, ImageFolder) and len(train) == 2
    assert all(Path(p).parent.parent.name == "train" for p, _ in train.samples)
    val = build_dataset(str(tmp_path), "val", None)
    assert len(val) == 1 and val.classes == ["a"]


def test_val_split_needs_a_val_folder(tmp_path):
    write_rgb(tmp_path / "train" / "a" / "1.png")
    with pytest.raises(MaekitError, match="val"):
        build_dataset(str(tmp_path), "val", None)


def test_transform_is_applied(tmp_path):
    write_rgb(tmp_path / "x.png")
    ds = build_dataset(str(tmp_path), "train", lambda img: ("seen", img.size))
    assert ds[0][0] == ("seen", (12, 10))


# --------------------------------------------------------------------------- image modes


def _gradient(h=8, w=16) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))


def write_mode(path: Path, mode: str) -> Path:
    g = _gradient()
    if mode == "L":
        img = Image.fromarray(g)
    elif mode == "P":
        img = Image.fromarray(np.stack([g, g[::-1], g], -1)).convert(
            "P", palette=Image.Palette.ADAPTIVE
        )
    elif mode == "RGBA":
        img = Image.fromarray(np.stack([g, g, g, 255 - g], -1))
    elif mode == "I;16":
        img = Image.fromarray(g.astype(np.uint16) * 257)
    elif mode == "CMYK":
        img = Image.fromarray(np.stack([g, 255 - g, g // 2, np.zeros_like(g)], -1), mode="CMYK")
    else:
        raise ValueError(mode)
    img.save(path)
    return path


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("gray.png", "L"),
        ("pal.png", "P"),
        ("rgba.png", "RGBA"),
        ("cmyk.jpg", "CMYK"),
    ],
)
def test_any_mode_loads_as_rgb(tmp_path, name, mode):
    path = write_mode(tmp_path / name, mode)
    assert Image.open(path).mode.startswith(mode.split(";")[0])
    ds = build_dataset(str(tmp_path), "train", None)
    img, label = ds[0]
    assert img.mode == "RGB" and img.size == (16, 8) and label == 0


def test_grayscale_values_are_kept(tmp_path):
    rgb = np.asarray(load_rgb(str(write_mode(tmp_path / "g.png", "L"))))
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], _gradient())


def test_16_bit_png_is_read_at_full_precision_not_saturated(tmp_path):
    """A 16-bit grayscale PNG (0..65535) is read as its 16-bit values (x / 65535), neither
    clipped at 255 nor rounded to 8 bits."""
    from maekit.data.pixels import read_image

    path = write_mode(tmp_path / "deep.png", "I;16")
    x = read_image(path, in_chans=1)
    expected = np.asarray(Image.open(path)).astype(np.float64) / 65535
    assert x.shape == (1, *expected.shape) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-7)


def test_cmyk_jpeg_colours(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red
    r, g, b = np.asarray(load_rgb(str(path))).reshape(-1, 3).mean(0)
    assert r > 200 and g < 50 and b < 50


# --------------------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    with pytest.raises(MaekitError, match="not a folder"):
        build_dataset(str(tmp_path / "nope"), "train", None)


def test_data_path_is_a_file(tmp_path):
    f = write_rgb(tmp_path / "one.png")
    with pytest.raises(MaekitError):
        build_dataset(str(f), "train", None)


def test_empty_folder(tmp_path):
    with pytest.raises(MaekitError, match="no images"):
        build_dataset(str(tmp_path), "train", None)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "data.csv").write_text("1,2")
    with pytest.raises(MaekitError, match="no images"):
        build_dataset(str(tmp_path), "train", None)


def test_empty_train_subfolder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(MaekitError):
        build_dataset(str(tmp_path), "train", None)


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(MaekitError):
        image_folder(tmp_path / "nope")
