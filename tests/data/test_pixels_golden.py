"""Full-precision reading against files written by the real tools (tests/golden/pixels/, made by
tests/golden/make_pixel_golden.py with tifffile, GDAL's gdal_translate and Pillow): the model's
input before augmentation equals numpy's ``(x / scale - mean) / std`` of the values numpy put
into the writing tool, to 1e-6."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from maekit.config import PretrainConfig
from maekit.data import build_dataset
from maekit.data.pixels import reader_for
from maekit.phases.pretrain import PretrainRecipe

GOLDEN = Path(__file__).parents[1] / "golden" / "pixels"
# file -> (bands, the scale maekit must resolve: the type's maximum, floats as they are)
FILES = {
    "gray12_tifffile.tif": (1, 65535.0),
    "gray12_pillow.png": (1, 65535.0),
    "bands4_gdal.tif": (4, 65535.0),
    "bands13_float.tif": (13, 1.0),
    "gray_negative_float.tif": (1, 1.0),
}


def folder_of(tmp_path: Path, name: str, copies: int = 2) -> Path:
    root = tmp_path / "data" / "c"
    root.mkdir(parents=True)
    for i in range(copies):
        shutil.copy(GOLDEN / name, root / f"{i}{Path(name).suffix}")
    return tmp_path / "data"


def model_inputs(data: Path, bands: int, **flags) -> tuple[torch.Tensor, PretrainConfig]:
    """The first image as the model sees it before augmentation, through the resolved config
    (``--pixels auto``) and the run's reader; and that config."""
    mean = [0.05 * (c + 1) for c in range(bands)]
    std = [0.2 + 0.01 * c for c in range(bands)]
    cfg = PretrainConfig(data_path=str(data), in_chans=bands, mean=mean, std=std, **flags)
    cfg, _ = PretrainRecipe(cfg).resolve(cfg)
    ds = build_dataset(cfg.data_path, "train", v2.Normalize(mean, std), reader=reader_for(cfg))
    return ds[0][0], cfg


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_model_input_is_numpys_scaled_and_normalised_file(tmp_path, name):
    bands, scale = FILES[name]
    expected = np.load(GOLDEN / f"{name}.expected.npy")  # (H, W, C), what the tool was given
    x, cfg = model_inputs(folder_of(tmp_path, name), bands)
    assert cfg.pixels == "full" and cfg.max_value == scale
    mean = np.array(cfg.mean).reshape(-1, 1, 1)
    std = np.array(cfg.std).reshape(-1, 1, 1)
    want = (expected.transpose(2, 0, 1).astype(np.float64) / scale - mean) / std
    assert x.dtype == torch.float32 and tuple(x.shape) == want.shape
    # float32 against float64: 1e-6 absolute, and relative for the large values of a float file
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["gray12_tifffile.tif", "gray12_pillow.png"])
def test_12_bit_data_keeps_its_levels_and_max_value_rescales_it(tmp_path, name):
    expected = np.load(GOLDEN / f"{name}.expected.npy")
    levels = len(np.unique(expected))
    assert levels > 256  # the file has more levels than 8 bits hold
    x, cfg = model_inputs(folder_of(tmp_path, name), 1, max_value=4095.0)
    assert cfg.max_value == 4095.0
    assert len(torch.unique(x)) == levels  # every level kept (the 8-bit path once kept 16)
    want = (expected[..., 0] / 4095.0 - cfg.mean[0]) / cfg.std[0]
    np.testing.assert_allclose(x[0].numpy(), want, rtol=0, atol=1e-6)


def test_versions_of_the_writing_tools_are_recorded():
    import json

    versions = json.loads((GOLDEN / "versions.json").read_text())
    assert {"tifffile", "pillow", "gdal_translate", "numpy"} <= set(versions)
    assert set(versions["files"]) == set(FILES)
