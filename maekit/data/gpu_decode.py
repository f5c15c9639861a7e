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
that fails too it is replaced by another image of the batch and counted as skipped. These
CPU fallbacks are counted (:attr:`GpuDecodeLoader.stats`, reported per epoch and in the bench
JSON); a batch none of whose JPEGs nvJPEG decodes, while the CPU can, stops the run: the GPU
decoder is broken there, and silently decoding everything in the main process would not be
``--gpu_decode`` any more.

A batch crosses from a worker to the main process as one :class:`PackedBatch`: every image's
bytes in one uint8 buffer (one shared-memory file) plus small lists (offsets, crop boxes,
flips), instead of a tensor (one open file, one round trip) per image.

Streams: torchvision's CUDA ``decode_jpeg`` allocates its outputs on the caller's current
stream but the nvJPEG hardware engine (H100/H200) writes them without waiting for the work
queued on that stream, so memory that a queued backward is still reading can be handed to the
decoder and overwritten (pytorch/vision#9606). The decode therefore runs with a side stream
current: its outputs come from that stream's own allocator pool, which the compute stream's
freed blocks never enter. The side stream waits for the compute stream, the compute stream
waits for it, and the outputs are ``record_stream``-ed on the compute stream so that their
memory is not handed to the next decode before the compute stream is done with them.

Numerics: the same crop boxes and flips as the CPU pipeline draws for the same seed (same
random calls in the same order); the resize is torchvision's tensor bicubic (antialiased)
instead of PIL's, which agreed to 0.004 grey levels on average in the tests (CPU decode).
nvJPEG's IDCT may differ from libjpeg's by a level or so.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from ..errors import MaekitError
from .folder import UnreadableImage, load_rgb, open_regular
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8

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
        # Read outside the try: a resource error (EMFILE, ENOMEM) is not an unreadable image and
        # must not be counted (and skipped) as one. open_regular refuses FIFOs, sockets and
        # dangling links (UnreadableImage) without blocking on them.
        with open_regular(path) as f:
            raw = f.read()
        try:
            with Image.open(io.BytesIO(raw)) as img:  # header only: size, format, mode
                jpeg = img.format == "JPEG" and img.mode in ("RGB", "L")
                box = T.RandomResizedCrop.get_params(img, list(self.scale), list(RATIO))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise UnreadableImage(f"{path}: {e}") from e  # in-memory parsing: the file is bad
        if jpeg:
            data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
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


@dataclass
class PackedBatch:
    """A batch of :class:`EncodedImages` items in one buffer: image ``i`` is
    ``data[offsets[i]:offsets[i + 1]]``, JPEG bytes when ``shapes[i]`` is None, else uint8
    pixels of that (C, H, W) shape. Only ``data`` is a tensor, so the batch costs one
    shared-memory file and one transfer between processes, whatever its size."""

    data: torch.Tensor  # (total bytes,) uint8
    offsets: list[int]  # N + 1
    shapes: list[tuple[int, int, int] | None]
    boxes: list[list[int]]  # top, left, height, width
    flips: list[bool]
    targets: list[int]
    skipped: list[int]  # unreadable files stood in for, per sample
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i``: 1-D JPEG bytes, or (C, H, W) uint8 pixels (views of ``data``)."""
        view = self.data[self.offsets[i] : self.offsets[i + 1]]
        shape = self.shapes[i]
        return view if shape is None else view.view(shape)

    def pin_memory(self) -> PackedBatch:  # called by the DataLoader's pin_memory thread
        self.data = self.data.pin_memory()
        return self


def collate_encoded(batch: list) -> PackedBatch:
    """``(item, target, skipped)`` samples -> one :class:`PackedBatch` (runs in the worker)."""
    items, targets, skipped = zip(*batch, strict=True)
    flat = [it["data"].reshape(-1) for it in items]
    offsets = [0]
    for d in flat:
        offsets.append(offsets[-1] + d.numel())
    return PackedBatch(
        data=torch.cat(flat) if flat else torch.empty(0, dtype=torch.uint8),
        offsets=offsets,
        shapes=[None if it["encoded"] else tuple(it["data"].shape) for it in items],
        boxes=[[int(v) for v in it["box"]] for it in items],
        flips=[bool(it["flip"]) for it in items],
        targets=[int(t) for t in targets],
        skipped=[int(s) for s in skipped],
        paths=[it["path"] for it in items],
    )


def crop_resize_flip(
    images: list[torch.Tensor],
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    mean: tuple[float, ...] | torch.Tensor = IMAGENET_MEAN,
    std: tuple[float, ...] | torch.Tensor = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (C, H_i, W_i) images -> normalised float (N, C, size, size) on their device.

    ``boxes``: (N, 4) top, left, height, width, on the host; ``flips``: (N,) bool, horizontal
    flip. Each crop is resized (bicubic, antialiased, rounded to uint8 like PIL) then flipped.
    ``flips``, ``mean`` and ``std`` already on the images' device cost no copy here (what
    :class:`GpuDecodeLoader` passes); given on the host, they are copied.
    """
    crops = [
        TF.resized_crop(
            img,
            *(int(v) for v in box),
            [size, size],
            interpolation=T.InterpolationMode.BICUBIC,
            antialias=True,
        )
        for img, box in zip(images, boxes.tolist(), strict=True)
    ]
    x = torch.stack(crops)  # (N, C, S, S) uint8
    flips = flips.to(x.device).view(-1, 1, 1, 1)
    x = torch.where(flips, x.flip(-1), x)
    m, s = (torch.as_tensor(v, dtype=torch.float32, device=x.device) for v in (mean, std))
    return normalize_uint8(x, m.view(1, -1, 1, 1), s.view(1, -1, 1, 1))


def nvjpeg_decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes -> uint8 (3, H, W) images on ``device`` (nvJPEG on CUDA), one call a batch."""
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class CudaStreams:
    """The stream calls of :meth:`GpuDecodeLoader.decode` on one CUDA device (tests pass fakes
    with the same methods): a side stream for the decoder, the current (compute) stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.side = torch.cuda.Stream(device)

    def compute(self):
        return torch.cuda.current_stream(self.device)

    def use(self, stream) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(stream)

    @staticmethod
    def record(tensor: torch.Tensor, stream) -> None:
        tensor.record_stream(stream)


STAT_KEYS = ("batches", "jpegs", "gpu_decoded", "cpu_fallback", "cpu_decoded", "stood_in")


class GpuDecodeLoader:
    """Wraps a DataLoader of :class:`PackedBatch` batches: yields (images on ``device``,
    targets, skipped counts) like the CPU pipeline; ``sampler`` and ``len`` pass through.

    ``stats`` counts, over the run: batches, JPEGs, JPEGs decoded by nvJPEG, JPEGs decoded on
    the CPU after nvJPEG failed on them (``cpu_fallback``), non-JPEG files decoded in the
    workers (``cpu_decoded``) and unreadable files stood in for (``stood_in``).

    No blocking host-to-device copy per batch (one would make the host wait for the steps
    queued on the GPU, so that it never runs ahead): the statistics go to the device once,
    here; the flips and non-JPEG pixels are copied non-blocking from pinned memory.
    """

    def __init__(
        self,
        loader,
        device: torch.device,
        size: int,
        decode_fn: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]] | None = None,
        streams=None,
    ) -> None:
        self.loader = loader
        self.device = device
        self.size = size
        self.decode_fn = decode_fn or nvjpeg_decode
        if streams is None and device.type == "cuda":
            streams = CudaStreams(device)
        self.streams = streams
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self._warned = False
        # on the device once (a blocking copy here, none per batch)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1).to(device)
        self.std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1).to(device)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the device without blocking the host: pinned (CUDA; the
        pinned block is not reused before the copy is done), then copied asynchronously."""
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        before = dict(self.stats)
        try:
            for batch in self.loader:
                images, skipped = self.decode(batch)
                boxes = torch.tensor(batch.boxes).view(-1, 4)  # read on the host
                flips = self.to_device(torch.tensor(batch.flips, dtype=torch.bool))
                x = crop_resize_flip(images, boxes, flips, self.size, self.mean, self.std)
                yield x, torch.tensor(batch.targets), skipped
        finally:
            fell_back = self.stats["cpu_fallback"] - before["cpu_fallback"]
            if fell_back:
                jpegs = self.stats["jpegs"] - before["jpegs"]
                print(
                    f"maekit: --gpu_decode: {fell_back} of {jpegs} JPEGs this epoch were decoded "
                    "on the CPU because nvJPEG failed on them",
                    file=sys.stderr,
                    flush=True,
                )

    def _on_device(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        """``decode_fn`` with the side-stream discipline (see the module docstring)."""
        s = self.streams
        if s is None:  # CPU: no streams
            return list(self.decode_fn(data, self.device))
        compute = s.compute()
        s.side.wait_stream(compute)  # the decode comes after everything queued so far
        with s.use(s.side):  # outputs allocated from the side stream's pool
            out = list(self.decode_fn(data, self.device))
        compute.wait_stream(s.side)  # the compute stream reads them only once they are written
        for img in out:  # their memory is not reused before the compute stream is done
            s.record(img, compute)
        return out

    def decode(self, batch: PackedBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The batch's uint8 (3, H, W) images on the device, and its skipped counts (with the
        files that could not be decoded at all, stood in for by another image, added)."""
        dev, st = self.device, self.stats
        n = len(batch)
        skipped = torch.tensor(batch.skipped, dtype=torch.long)
        images: list[torch.Tensor | None] = [None] * n
        jpegs = [i for i in range(n) if batch.shapes[i] is None]
        st["batches"] += 1
        st["jpegs"] += len(jpegs)
        st["cpu_decoded"] += n - len(jpegs)
        on_gpu, on_cpu, first_error = 0, 0, None
        if jpegs:
            try:
                decoded = self._on_device([batch.image(i) for i in jpegs])
                for i, img in zip(jpegs, decoded, strict=True):
                    images[i] = img
                on_gpu = len(jpegs)
            except RuntimeError as e:  # one bad file fails the whole call: one by one
                first_error = e
                for i in jpegs:
                    try:
                        images[i] = self._on_device([batch.image(i)])[0]
                        on_gpu += 1
                        continue
                    except RuntimeError:
                        pass
                    try:  # nvJPEG cannot: libjpeg on the CPU
                        images[i] = decode_image(batch.image(i), mode=ImageReadMode.RGB).to(dev)
                        on_cpu += 1
                    except RuntimeError:
                        pass
        st["gpu_decoded"] += on_gpu
        st["cpu_fallback"] += on_cpu
        if jpegs and on_gpu == 0 and on_cpu > 0:
            raise MaekitError(
                f"nvJPEG decoded none of the {len(jpegs)} JPEGs of a batch the CPU can decode "
                f"({str(first_error).strip().splitlines()[0][:200]}); the GPU decoder does not "
                "work on this machine: drop --gpu_decode"
            )
        if on_cpu and not self._warned:
            self._warned = True
            print(
                f"maekit: --gpu_decode: nvJPEG failed on {on_cpu} of {len(jpegs)} JPEGs of a batch "
                f"({str(first_error).strip().splitlines()[0][:200]}); decoded them on the CPU "
                "(counted, reported per epoch)",
                file=sys.stderr,
                flush=True,
            )
        for i in range(n):
            if batch.shapes[i] is not None:
                images[i] = batch.image(i).to(dev, non_blocking=True)
        good = next((img for img in images if img is not None), None)
        if good is None:
            raise MaekitError(
                f"no image of a batch could be decoded (e.g. {batch.paths[0]}); "
                "check --data_path or drop --gpu_decode"
            )
        for i, img in enumerate(images):
            if img is None:  # stand in with a readable image, counted like a skipped file
                images[i] = good
                skipped[i] += 1
                st["stood_in"] += 1
        return images, skipped
