"""--gpu_decode maths and plumbing, run on CPU tensors (decode_jpeg and the crop/flip work on any
device): same crop boxes and flips as the CPU pipeline, close pixels, bad files stood in for."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import maekit.data.gpu_decode as gd
from maekit.data import build_dataset, build_train_loader
from maekit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PRETRAIN_SCALE, pretrain_transform
from tests.conftest import write_image_folder

CPU = torch.device("cpu")


def _smooth_folder(root, n: int = 8):
    """JPEGs (and one PNG) with smooth content, so that resampling differences stay small."""
    d = root / "train" / "a"
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        small = (torch.rand(3, 6, 8, generator=g) * 255).to(torch.uint8)
        img = TF.to_pil_image(TF.resize(small, [45 + i, 60], antialias=True))
        img.save(d / (f"{i}.png" if i == 3 else f"{i}.jpg"), quality=95)
    return root


def test_crop_resize_flip_is_torchvisions_resized_crop_then_flip_then_normalise():
    g = torch.Generator().manual_seed(0)
    images = [
        (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8) for h, w in [(30, 40), (50, 20)]
    ]
    boxes = torch.tensor([[2, 5, 20, 30], [10, 0, 25, 18]])
    flips = torch.tensor([True, False])
    out = gd.crop_resize_flip(images, boxes, flips, 16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for img, box, flip, got in zip(images, boxes.tolist(), flips, out, strict=True):
        want = TF.resized_crop(img, *box, [16, 16], interpolation=InterpolationMode.BICUBIC,
                               antialias=True)  # fmt: skip
        want = want.flip(-1) if flip else want
        torch.testing.assert_close(got, (want.float() / 255 - mean) / std)
    # the flip mirrors: the unflipped crop of image 0, mirrored, is what came out
    unflipped = gd.crop_resize_flip(images[:1], boxes[:1], torch.tensor([False]), 16)
    torch.testing.assert_close(out[0], unflipped[0].flip(-1))


def test_encoded_items_carry_bytes_for_jpegs_and_pixels_for_others(tmp_path):
    root = _smooth_folder(tmp_path / "d")
    ds = gd.encoded_folder(build_dataset(str(root), "train", None), PRETRAIN_SCALE)
    assert len(ds) == 8 and ds.classes == ["a"]
    for i in range(len(ds)):
        item, target = ds[i]
        h, w = Image.open(ds.samples[i][0]).size[::-1]
        top, left, ch, cw = item["box"].tolist()
        assert target == 0 and 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        assert 0.2 * h * w * 0.999 <= ch * cw <= h * w  # the pre-training area range
        if ds.samples[i][0].endswith(".png"):
            assert not item["encoded"] and item["data"].shape == (3, h, w)
        else:
            assert item["encoded"] and item["data"].dtype == torch.uint8 and item["data"].ndim == 1


def test_gpu_path_draws_the_cpu_pipelines_crops_and_flips_and_gives_close_pixels(tmp_path):
    """Same seed: the GPU path's batch (run on the CPU here) matches the CPU pipeline's, up to
    PIL-vs-tensor bicubic resampling."""
    root = _smooth_folder(tmp_path / "d")
    cpu_ds = build_dataset(str(root), "train", pretrain_transform(24))
    cpu_loader = build_train_loader(cpu_ds, 4, 0, 1, 7, 0, False)
    enc = gd.encoded_folder(build_dataset(str(root), "train", None), PRETRAIN_SCALE)
    loader = gd.GpuDecodeLoader(
        build_train_loader(enc, 4, 0, 1, 7, 0, False, collate_fn=gd.collate_encoded), CPU, 24
    )
    assert len(loader) == len(cpu_loader) == 2 and loader.sampler is not None
    for (x, y, bad), (x_cpu, y_cpu, bad_cpu) in zip(loader, cpu_loader, strict=True):
        assert x.shape == x_cpu.shape == (4, 3, 24, 24)
        assert torch.equal(y, y_cpu) and torch.equal(bad, bad_cpu)
        diff = (x - x_cpu).abs() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255  # levels
        assert diff.mean() < 1.0, diff.mean()  # measured 0.004; a wrong box or flip: ~50 levels


def test_an_undecodable_jpeg_is_stood_in_for_and_counted(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "d", classes=1, per_class=4, size=(20, 24))
    enc = gd.encoded_folder(build_dataset(str(root), "train", None), PRETRAIN_SCALE)
    items = [enc[i][0] for i in range(4)]
    bad_path = next(it["path"] for it in items if it["encoded"])

    def batch_fails(*a, **k):
        raise RuntimeError("nvjpeg: bad data")

    real = gd.decode_image

    def one_fails(data, mode):
        if torch.equal(data, next(it["data"] for it in items if it["path"] == bad_path)):
            raise RuntimeError("corrupt")
        return real(data, mode=mode)

    monkeypatch.setattr(gd, "decode_jpeg", batch_fails)
    monkeypatch.setattr(gd, "decode_image", one_fails)
    loader = gd.GpuDecodeLoader([], CPU, 16)
    images, skipped = loader.decode(items, torch.zeros(4, dtype=torch.long))
    i_bad = next(i for i, it in enumerate(items) if it["path"] == bad_path)
    assert skipped.tolist() == [int(i == i_bad) for i in range(4)]
    assert all(img.dtype == torch.uint8 and img.shape[0] == 3 for img in images)


def test_gpu_decode_refuses_fashion_mnist_and_cpu(tmp_path):
    from maekit.config import BenchConfig, PretrainConfig
    from maekit.errors import MaekitError

    with pytest.raises(MaekitError, match="--gpu_decode"):
        PretrainConfig(gpu_decode=True).validate()
    from maekit.bench.pipeline import measure_pipeline

    root = write_image_folder(tmp_path / "d", classes=1, per_class=4)
    with pytest.raises(MaekitError, match="CUDA"):
        measure_pipeline(BenchConfig(pipeline=True, gpu_decode=True, data_path=str(root),
                                     device="cpu", batch_size=2))  # fmt: skip
