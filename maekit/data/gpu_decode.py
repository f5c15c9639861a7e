"""JPEG decoding and the pre-training augmentation on the GPU (``--gpu_decode``).

A fast GPU trains MAE ViT-B at several thousand images per second; decoding and resizing
that many JPEGs takes more CPU cores than a GPU machine has per GPU. Here the loader workers
only read the file's bytes and draw the random crop and flip (from the JPEG header's size,
no decoding, seeded per sample as in :mod:`maekit.data.robust`, so runs stay reproducible
and resumable); the main process decodes the batch with nvJPEG
(``torchvision.io.decode_jpeg(device='cuda')``) and crops, resizes (bicubic, antialiased),
flips and normalises on the GPU.

Files that are not plain RGB/grayscale JPEGs (PNG, CMYK...) are decoded on the CPU in the
worker and only cropped on the GPU. A JPEG nvJPEG cannot decode is retried on the CPU; if
that fails too it is replaced by another image of the batch and counted as skipped.

Numerics: the same crop boxes and flips as the CPU pipeline draws for the same seed (same
random calls in the same order); the resize is torchvision's tensor bicubic (antialiased)
instead of PIL's, which agreed to 0.004 grey levels on average in the tests (CPU decode).
nvJPEG's IDCT may differ from libjpeg's by a level or so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from ..errors import MaekitError
from .folder import UnreadableImage, load_rgb
from .transforms import IMAGENET_MEAN, IMAGENET_STD

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range


class EncodedImages(torch.utils.data.Dataset):
    """``(item, target)`` where ``item`` holds the file's bytes (or, for non-JPEG files, the
    decoded uint8 (3, H, W) image), the crop box (top, left, height, width) and the flip."""

    def __init__(self, samples: list[tuple[str, int]], classes, scale: tuple[float, float]) -> None:
        self.samples = samples
        self.classes = classes
        self.scale = scale

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        try:
            with Image.open(path) as img:  # header only: size, format, mode
                jpeg = img.format == "JPEG" and img.mode in ("RGB", "L")
                box = T.RandomResizedCrop.get_params(img, list(self.scale), list(RATIO))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise UnreadableImage(f"{path}: {e}") from e
        if jpeg:
            data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
        else:
            data = TF.pil_to_tensor(load_rgb(path))  # (3, H, W) uint8
        flip = bool(torch.rand(()) < 0.5)
        item = {"data": data, "encoded": jpeg, "box": torch.tensor(box), "flip": flip, "path": path}
        return item, target


def encoded_folder(dataset, scale: tuple[float, float]) -> EncodedImages:
    """The files of an image folder dataset (ImageFolder or FlatImageFolder), read as bytes."""
    if getattr(dataset, "streamed", False):
        raise MaekitError("--gpu_decode reads image folders, not tar shards; drop --gpu_decode")
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise MaekitError(
            "--gpu_decode reads image folders; --data_path fashion-mnist has no JPEGs"
        )
    if samples and isinstance(samples[0], str):  # flat folder: paths only, label 0
        samples = [(p, 0) for p in samples]
    return EncodedImages(list(samples), getattr(dataset, "classes", None), scale)


def collate_encoded(batch: list) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """(items, targets, skipped counts): the items stay a list (their sizes differ)."""
    items, targets, skipped = zip(*batch, strict=True)
    return list(items), torch.as_tensor(targets), torch.as_tensor(skipped)


def crop_resize_flip(
    images: list[torch.Tensor],
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (C, H_i, W_i) images -> normalised float (N, C, size, size) on their device.

    ``boxes``: (N, 4) top, left, height, width; ``flips``: (N,) bool, horizontal flip.
    Each crop is resized (bicubic, antialiased, rounded to uint8 like PIL) then flipped.
    """
    crops = [
        TF.resized_crop(img, *(int(v) for v in box), [size, size],
                        interpolation=T.InterpolationMode.BICUBIC, antialias=True)
        for img, box in zip(images, boxes.tolist(), strict=True)
    ]  # fmt: skip
    x = torch.stack(crops)  # (N, C, S, S) uint8
    flips = flips.to(x.device).view(-1, 1, 1, 1)
    x = torch.where(flips, x.flip(-1), x).float().div_(255)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class GpuDecodeLoader:
    """Wraps a DataLoader of :class:`EncodedImages` batches: yields (images on ``device``,
    targets, skipped counts) like the CPU pipeline; ``sampler`` and ``len`` pass through."""

    def __init__(
        self, loader: torch.utils.data.DataLoader, device: torch.device, size: int
    ) -> None:
        self.loader = loader
        self.device = device
        self.size = size

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for items, targets, skipped in self.loader:
            images, skipped = self.decode(items, skipped.clone())
            boxes = torch.stack([it["box"] for it in items])
            flips = torch.tensor([it["flip"] for it in items])
            yield crop_resize_flip(images, boxes, flips, self.size), targets, skipped

    def decode(
        self, items: list[dict], skipped: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        dev = self.device
        images: list[torch.Tensor | None] = [None] * len(items)
        jpegs = [i for i, it in enumerate(items) if it["encoded"]]
        if jpegs:
            try:
                decoded = decode_jpeg(
                    [items[i]["data"] for i in jpegs], mode=ImageReadMode.RGB, device=dev
                )
                for i, img in zip(jpegs, decoded, strict=True):
                    images[i] = img
            except RuntimeError:  # one bad file fails the batch: decode one by one on the CPU
                for i in jpegs:
                    try:
                        images[i] = decode_image(items[i]["data"], mode=ImageReadMode.RGB).to(dev)
                    except RuntimeError:
                        pass
        for i, it in enumerate(items):
            if not it["encoded"]:
                images[i] = it["data"].to(dev, non_blocking=True)
        good = next((img for img in images if img is not None), None)
        if good is None:
            raise MaekitError(f"no image of a batch could be decoded (e.g. {items[0]['path']}); "
                              "check --data_path or drop --gpu_decode")  # fmt: skip
        for i, img in enumerate(images):
            if img is None:  # stand in with a readable image, counted like a skipped file
                images[i] = good
                skipped[i] += 1
        return images, skipped
