"""The full-precision reader (maekit/data/pixels.py): layouts, scales, refusals, and the
tensor pipelines; bad input through the CLI: exit 2 and one line naming the file or flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from maekit.data.pixels import BandMismatch, probe_file, read_image, resolve_pixels, to_tensor
from maekit.data.transforms import (
    eval_transform,
    finetune_transform,
    linprobe_transform,
    pretrain_transform,
)
from maekit.errors import MaekitError
from tests.conftest import assert_one_error_line, run_cli_in_process

RNG = np.random.default_rng(0)
TINY = ["--model", "mae_vit_tiny_patch16", "--input_size", "16", "--patch_size", "4"]
QUICK = ["--epochs", "1", "--warmup_epochs", "0", "--num_workers", "0", "--batch_size", "2"]


def stats(n: int) -> list[str]:
    return ["--mean", *["0.1"] * n, "--std", *["0.2"] * n]


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    "shape, in_chans", [((9, 11), 1), ((9, 11, 4), 4), ((4, 9, 11), 4), ((3, 9, 3), 3)]
)
def test_npy_layouts(tmp_path, shape, in_chans):
    """(H, W), (H, W, C); (C, H, W) when its first axis, not its last, is --in_chans; an
    array whose first and last axes both equal it is taken channels-last (documented)."""
    arr = RNG.integers(0, 65535, shape, dtype=np.uint16)
    np.save(tmp_path / "a.npy", arr)
    x = read_image(tmp_path / "a.npy", in_chans)
    hwc = arr[..., None] if arr.ndim == 2 else arr
    if arr.ndim == 3 and arr.shape[-1] != in_chans:
        hwc = arr.transpose(1, 2, 0)
    np.testing.assert_allclose(x.numpy(), hwc.transpose(2, 0, 1) / 65535, atol=1e-7)


def test_npy_of_objects_is_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MaekitError, match="o.npy: .*objects"):
        read_image(tmp_path / "o.npy", 1)


def test_tiff_interleaves_imagej_channels_and_compression_read_as_bands(tmp_path):
    arr = RNG.integers(0, 65535, (5, 9, 11), dtype=np.uint16)  # (C, Y, X)
    want = arr / 65535
    tifffile.imwrite(tmp_path / "sep.tif", arr, planarconfig="separate", photometric="minisblack")
    tifffile.imwrite(
        tmp_path / "contig.tif",
        arr.transpose(1, 2, 0),
        photometric="minisblack",
        planarconfig="contig",
    )
    tifffile.imwrite(tmp_path / "ij.tif", arr, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "lzw.tif", arr, planarconfig="separate", compression="lzw")
    for name in ("sep.tif", "contig.tif", "ij.tif", "lzw.tif"):
        x = read_image(tmp_path / name, 5)
        np.testing.assert_allclose(x.numpy(), want, atol=1e-7, err_msg=name)
        assert probe_file(tmp_path / name, 5).bands == 5, name


def test_a_tiff_stack_of_several_images_is_refused_in_one_line(tmp_path):
    stack = RNG.integers(0, 255, (3, 9, 11), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "z.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(MaekitError, match=r"z.tif: .*more than one image.*its own file") as e:
        read_image(tmp_path / "z.tif", 1)
    assert "\n" not in str(e.value)


def test_pillow_modes_keep_their_precision(tmp_path):
    gray16 = RNG.integers(0, 65535, (9, 11), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g.png")
    Image.fromarray(gray16.astype(np.int32) // 16, mode="I").save(tmp_path / "g.pgm")
    flt = RNG.random((9, 11)).astype(np.float32) * 7 - 3
    Image.fromarray(flt, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(read_image(tmp_path / "g.png", 1)[0], gray16 / 65535, atol=1e-7)
    pgm = np.asarray(Image.open(tmp_path / "g.pgm")).astype(np.float64)
    np.testing.assert_allclose(read_image(tmp_path / "g.pgm", 1)[0], pgm / 65535, atol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "f.tif", 1)[0], flt, atol=0)  # as it is


def test_16_bit_rgb_png_keeps_16_bits(tmp_path):
    import imagecodecs

    rgb16 = RNG.integers(0, 65535, (9, 11, 3), dtype=np.uint16)
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(rgb16))
    assert Image.open(tmp_path / "rgb16.png").mode == "RGB"  # Pillow would give 8 bits
    x = read_image(tmp_path / "rgb16.png", 3)
    np.testing.assert_allclose(x.numpy(), rgb16.transpose(2, 0, 1) / 65535, atol=1e-7)


# --------------------------------------------------------------------------- checks


def test_band_count_and_gray_to_rgb():
    arr = np.zeros((4, 5, 1), np.uint16)
    with pytest.raises(BandMismatch, match=r"f.tif: 1 band, but --in_chans is 3.*--gray_to_rgb"):
        to_tensor(arr, "f.tif", 3, 65535.0)
    assert to_tensor(arr, "f.tif", 3, 65535.0, gray_to_rgb=True).shape == (3, 4, 5)
    with pytest.raises(BandMismatch, match=r"f.tif: 4 bands, but --in_chans is 3"):
        to_tensor(np.zeros((4, 5, 4), np.uint16), "f.tif", 3, 65535.0)


def test_non_finite_pixels_name_the_file():
    arr = np.ones((4, 5, 1), np.float32)
    arr[1, 2] = np.nan
    arr[0, 0] = np.inf
    with pytest.raises(MaekitError, match=r"x.tif: 2 non-finite pixels"):
        to_tensor(arr, "x.tif", 1, 1.0)


def _folder(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if name.endswith(".npy"):
            np.save(root / name, arr)
        else:
            tifffile.imwrite(root / name, arr)
    return root


def test_auto_chooses_the_path_and_the_scale_from_the_files(tmp_path):
    u16 = _folder(tmp_path / "u16", {"a.tif": np.zeros((8, 8), np.uint16)})
    assert resolve_pixels(str(u16), "auto", 1, None)[:2] == ("full", 65535.0)
    flt = _folder(tmp_path / "f", {"a.npy": np.zeros((8, 8, 2), np.float32)})
    assert resolve_pixels(str(flt), "auto", 2, None)[:2] == ("full", 1.0)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    Image.new("RGB", (8, 8)).save(rgb / "a.png")
    assert resolve_pixels(str(rgb), "auto", 3, None)[:2] == ("8bit", 255.0)
    assert resolve_pixels(str(rgb), "auto", 3, 200.0)[:2] == ("full", 200.0)  # asked for
    assert resolve_pixels(str(u16), "auto", 1, 4095.0)[:2] == ("full", 4095.0)


def test_mixed_types_and_8bit_over_16bit_are_refused(tmp_path):
    mixed = _folder(
        tmp_path / "m", {"a.tif": np.zeros((8, 8), np.uint16), "b.tif": np.zeros((8, 8), np.uint8)}
    )
    with pytest.raises(MaekitError, match="mix pixel types .*--max_value"):
        resolve_pixels(str(mixed), "auto", 1, None)
    assert resolve_pixels(str(mixed), "auto", 1, 65535.0)[:2] == ("full", 65535.0)
    u16 = _folder(tmp_path / "u", {"a.tif": np.zeros((8, 8), np.uint16)})
    with pytest.raises(MaekitError, match="a.tif: uint16 .*round them to 8 bits"):
        resolve_pixels(str(u16), "8bit", 1, None)
    with pytest.raises(MaekitError, match="fashion-mnist holds 8-bit"):
        resolve_pixels("fashion-mnist", "full", 1, None, eight_bit_only="--data_path fashion-mnist")


# --------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("bands", [1, 4, 13])
def test_full_pipelines_run_on_any_band_count(bands):
    x = torch.rand(bands, 30, 40)
    mean, std = [0.5] * bands, [0.25] * bands
    size = [16, 24]
    for tf in (
        pretrain_transform(size, bands, mean, std, uint8=True, full=True, vflip=True),
        finetune_transform(size, None, None, 0.25, "pixel", 1, 0.08, bands, mean, std, full=True),
        linprobe_transform(size, 0.08, bands, mean, std, full=True, vflip=True),
        eval_transform(size, bands, mean, std, full=True),
    ):
        y = tf(x)
        assert y.shape == (bands, 16, 24) and y.dtype == torch.float32, tf
        assert torch.isfinite(y).all()


def test_full_eval_without_resizing_is_exactly_the_normalised_image():
    """At crop_pct 1 (inputs above 224 px) and the image's own size, eval is Normalize only."""
    x = torch.rand(4, 240, 240)
    y = eval_transform(240, 4, [0.1] * 4, [0.3] * 4, full=True)(x)
    torch.testing.assert_close(y, (x - 0.1) / 0.3, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tensors", [True, False])
def test_vflip_and_rot90_give_the_eight_symmetries_and_keep_the_pixels(tensors):
    from torchvision.transforms import v2

    from maekit.data.transforms import symmetry_steps

    x = torch.arange(16, dtype=torch.uint8).view(1, 4, 4)
    img = x if tensors else v2.functional.to_pil_image(x)
    tf = v2.Compose(symmetry_steps(vflip=True, rot90=True, tensors=tensors))
    seen = set()
    for seed in range(80):
        torch.manual_seed(seed)
        y = tf(img)
        y = y if tensors else v2.functional.pil_to_tensor(y)
        assert sorted(y.flatten().tolist()) == list(range(16))  # a symmetry, no resampling
        seen.add(tuple(y.flatten().tolist()))
    assert len(seen) == 8  # 4 quarter turns x flipped or not


def test_randaugment_is_refused_on_full_precision():
    with pytest.raises(MaekitError, match="--aa none"):
        finetune_transform(
            16, "rand-m9-mstd0.5-inc1", in_chans=4, mean=[0] * 4, std=[1] * 4, full=True
        )


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def four_band(tmp_path: Path) -> Path:
    root = tmp_path / "b4"
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("a", "b"):
            _folder(
                root / split / cls,
                {f"{i}.tif": RNG.integers(0, 4000, (16, 16, 4), dtype=np.uint16) for i in range(n)},
            )
    return root


def test_band_count_differing_from_in_chans_names_the_file(tmp_path, four_band):
    r = run_cli_in_process(
        ["pretrain", "--data_path", str(four_band), "--in_chans", "3", *TINY, *QUICK], tmp_path
    )
    assert_one_error_line(r, "pretrain", "4 bands, but --in_chans is 3")
    assert "b4/train/a/0.tif" in r.stderr


def test_n_channels_without_statistics_ask_for_them(tmp_path, four_band):
    r = run_cli_in_process(
        ["pretrain", "--data_path", str(four_band), "--in_chans", "4", *TINY, *QUICK], tmp_path
    )
    assert_one_error_line(r, "pretrain", "maekit stats --in_chans 4")


def test_randaugment_on_n_channel_data_names_aa_none(tmp_path, four_band):
    r = run_cli_in_process(
        [
            "finetune",
            "--data_path",
            str(four_band),
            "--in_chans",
            "4",
            *stats(4),
            "--model",
            "vit_tiny_patch16",
            "--input_size",
            "16",
            "--patch_size",
            "4",
            *QUICK,
        ],
        tmp_path,
    )
    assert_one_error_line(r, "finetune", "pass --aa none")


def test_a_non_finite_pixel_stops_the_run_naming_the_file(tmp_path):
    root = tmp_path / "f"
    arrays = {f"{i}.tif": RNG.random((16, 16), dtype=np.float32) for i in range(4)}
    arrays["2.tif"][3, 3] = np.nan
    _folder(root, arrays)
    r = run_cli_in_process(
        [
            "pretrain",
            "--data_path",
            str(root),
            "--in_chans",
            "1",
            *stats(1),
            *TINY,
            *QUICK,
            "--output_dir",
            str(tmp_path / "out"),
        ],
        tmp_path,
    )
    assert_one_error_line(r, "pretrain", "2.tif: 1 non-finite pixels")


def test_rot90_on_a_non_square_input_is_refused(tmp_path, four_band):
    r = run_cli_in_process(
        [
            "pretrain",
            "--data_path",
            str(four_band),
            "--in_chans",
            "4",
            *stats(4),
            "--rot90",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "16",
            "24",
            "--patch_size",
            "4",
            *QUICK,
        ],
        tmp_path,
    )
    assert_one_error_line(r, "pretrain", "--rot90")


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixup_and_cutmix_mix_every_band_of_n_channel_batches(mode):
    """The fine-tuning recipe's batch mixing (timm's Mixup through maekit's build_mixup) on
    13-band float batches: every band of a sample is mixed with the same partner."""
    from maekit.config import FinetuneConfig
    from maekit.phases.finetune import build_mixup

    alphas = {"mixup": 0.8, "cutmix": 0.0} if mode == "mixup" else {"mixup": 0.0, "cutmix": 1.0}
    cfg = FinetuneConfig(in_chans=13, mean=[0.0] * 13, std=[1.0] * 13, **alphas)
    mix = build_mixup(cfg, nb_classes=3)
    torch.manual_seed(0)
    np.random.seed(0)
    # sample i holds the value i in every band: a mixed sample holds values of two samples
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 13, 8, 8).clone()
    y = torch.tensor([0, 1, 2, 0])
    original = x.clone()  # timm mixes in place
    mixed, soft = mix(x, y)
    assert mixed.shape == original.shape and soft.shape == (4, 3)
    assert not torch.equal(mixed, original)
    for i in range(4):
        bands = mixed[i].flatten(1)  # (13, 64)
        assert torch.equal(bands, bands[:1].expand_as(bands))  # the same mix in every band


@pytest.mark.parametrize("full", [False, True])
def test_a_sliver_image_is_skipped_before_the_evaluation_resize_allocates(tmp_path, full):
    """Issue 29 case 27: a 5 x 100000 image (under --max_pixels) once took 6.3 GB and 38 s in
    the evaluation resize; now it is an unreadable image, skipped and counted by the loaders,
    before any allocation. A usual image passes the same transform."""
    import tracemalloc

    from maekit.data.folder import UnreadableImage

    tf = eval_transform(224, 1, [0.5], [0.25], full=full)
    strip = torch.rand(1, 5, 100_000) if full else Image.new("L", (100_000, 5))
    tracemalloc.start()
    with pytest.raises(UnreadableImage, match="100000x5 image would be resized to 5120000x256"):
        tf(strip)
    assert tracemalloc.get_traced_memory()[1] < 50_000_000
    tracemalloc.stop()
    usual = torch.rand(1, 300, 400) if full else Image.new("L", (400, 300))
    assert tuple(tf(usual).shape) == (1, 224, 224)
