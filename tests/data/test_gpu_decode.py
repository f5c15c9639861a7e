"""--gpu_decode maths and plumbing, run on CPU tensors (decode_jpeg and the crop/flip work on any
device): same crop boxes and flips as the CPU pipeline, close pixels, bad files stood in for."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import maekit.data.gpu_decode as gd
from maekit.data import build_dataset, build_train_loader
from maekit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PRETRAIN_SCALE, pretrain_transform
from maekit.errors import MaekitError
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
        want = TF.resized_crop(
            img, *box, [16, 16], interpolation=InterpolationMode.BICUBIC, antialias=True
        )
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
        # the pre-training area range; get_params rounds each side to an integer (<= 0.5 off)
        assert (ch + 0.5) * (cw + 0.5) >= 0.2 * h * w and ch * cw <= h * w
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


def _packed(tmp_path, n: int = 4) -> gd.PackedBatch:
    """A packed batch of n JPEGs (the worker side of the loader, in this process)."""
    d = tmp_path / "jpegs" / "train" / "a"
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    for i in range(n):
        TF.to_pil_image((torch.rand(3, 20, 24 + i, generator=g) * 255).to(torch.uint8)).save(
            d / f"{i}.jpg"
        )
    enc = gd.encoded_folder(build_dataset(str(tmp_path / "jpegs"), "train", None), PRETRAIN_SCALE)
    return gd.collate_encoded([(*enc[i], 0) for i in range(n)])


def test_a_batch_is_one_buffer_and_unpacks_to_its_items(tmp_path):
    root = _smooth_folder(tmp_path / "d")
    enc = gd.encoded_folder(build_dataset(str(root), "train", None), PRETRAIN_SCALE)
    samples = [(*enc[i], i % 2) for i in range(len(enc))]
    batch = gd.collate_encoded(samples)
    tensors = [v for v in vars(batch).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) == 1 and batch.data.dtype == torch.uint8  # one shared-memory file
    assert len(batch) == 8 and batch.skipped == [0, 1] * 4 and batch.targets == [0] * 8
    for i, ((item, _target, _bad), path) in enumerate(zip(samples, batch.paths, strict=True)):
        assert path == item["path"] and batch.flips[i] == item["flip"]
        assert batch.boxes[i] == item["box"].tolist()
        assert torch.equal(batch.image(i), item["data"])  # bytes, or (3, H, W) pixels
        assert (batch.shapes[i] is None) == item["encoded"]


def test_an_undecodable_jpeg_is_stood_in_for_and_counted(tmp_path, monkeypatch):
    batch = _packed(tmp_path)
    i_bad = 2

    def batch_fails(data, device):
        if len(data) > 1 or torch.equal(data[0], batch.image(i_bad)):
            raise RuntimeError("nvjpeg: bad data")
        return gd.nvjpeg_decode(data, device)

    real = gd.decode_image

    def one_fails(data, mode):
        if torch.equal(data, batch.image(i_bad)):
            raise RuntimeError("corrupt")
        return real(data, mode=mode)

    monkeypatch.setattr(gd, "decode_image", one_fails)
    loader = gd.GpuDecodeLoader([], CPU, 16, decode_fn=batch_fails)
    images, skipped = loader.decode(batch)
    assert skipped.tolist() == [int(i == i_bad) for i in range(4)]
    assert all(img.dtype == torch.uint8 and img.shape[0] == 3 for img in images)
    # three decoded one by one by the "GPU" decoder, the bad one by nobody: not a fallback
    assert loader.stats == {
        "batches": 1,
        "jpegs": 4,
        "gpu_decoded": 3,
        "cpu_fallback": 0,
        "cpu_decoded": 0,
        "stood_in": 1,
    }


def test_jpegs_the_gpu_decoder_rejects_fall_back_to_the_cpu_counted_and_reported(tmp_path, capsys):
    batch = _packed(tmp_path)

    def rejects_image_1(data, device):
        if len(data) > 1 or torch.equal(data[0], batch.image(1)):
            raise RuntimeError("nvjpeg: unsupported")
        return gd.nvjpeg_decode(data, device)

    loader = gd.GpuDecodeLoader([batch], CPU, 16, decode_fn=rejects_image_1)
    x, y, bad = next(iter(loader))
    assert x.shape == (4, 3, 16, 16) and bad.tolist() == [0, 0, 0, 0]
    assert loader.stats["gpu_decoded"] == 3 and loader.stats["cpu_fallback"] == 1
    list(loader)  # a whole epoch: its fallbacks are reported
    err = capsys.readouterr().err
    assert "nvJPEG failed on 1 of 4 JPEGs" in err and "nvjpeg: unsupported" in err
    assert "1 of 4 JPEGs this epoch were decoded on the CPU" in err


def test_a_batch_the_gpu_decoder_cannot_decode_at_all_is_a_clear_error(tmp_path):
    batch = _packed(tmp_path)

    def broken(data, device):
        raise RuntimeError("nvjpegCreate failed: NVJPEG_STATUS_ARCH_MISMATCH")

    loader = gd.GpuDecodeLoader([batch], CPU, 16, decode_fn=broken)
    with pytest.raises(MaekitError, match="nvJPEG decoded none of the 4 JPEGs.*drop --gpu_decode"):
        next(iter(loader))


class _Log:
    """Records the decoder's stream calls (and the decode and the first use of its outputs)."""

    def __init__(self):
        self.calls = []

    def stream(self, name):
        log = self

        class Stream:
            def wait_stream(self, other):
                log.calls.append(f"{name}.wait({other.name})")

        s = Stream()
        s.name = name
        return s


class _FakeStreams:
    def __init__(self, log: _Log):
        self.log = log
        self.side = log.stream("side")
        self._compute = log.stream("compute")
        self.current = self._compute

    def compute(self):
        return self.current

    def use(self, stream):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            prev, self.current = self.current, stream
            self.log.calls.append(f"enter {stream.name}")
            yield
            self.log.calls.append(f"exit {stream.name}")
            self.current = prev

        return ctx()

    def record(self, tensor, stream):
        self.log.calls.append(f"record {id(tensor)} on {stream.name}")


def test_decode_runs_on_a_side_stream_ordered_both_ways_with_the_compute_stream(
    tmp_path, monkeypatch
):
    """The side stream waits for the compute stream before the decode; the compute stream
    waits for the side stream, and every output is record_stream-ed on it, before any use."""
    batch = _packed(tmp_path)
    log = _Log()
    streams = _FakeStreams(log)
    outputs = []

    def decode(data, device):
        assert streams.current is streams.side  # allocated from the side stream's pool
        log.calls.append("decode")
        out = gd.nvjpeg_decode(data, device)
        outputs.extend(out)
        return out

    real_crop = gd.crop_resize_flip

    def crop(images, *a, **k):
        assert all(any(img is o for o in outputs) for img in images)
        log.calls.append("use")
        return real_crop(images, *a, **k)

    monkeypatch.setattr(gd, "crop_resize_flip", crop)
    loader = gd.GpuDecodeLoader([batch], CPU, 16, decode_fn=decode, streams=streams)
    x, _, _ = next(iter(loader))
    assert x.shape == (4, 3, 16, 16)
    records = [f"record {id(o)} on compute" for o in outputs]
    assert log.calls == [
        "side.wait(compute)",
        "enter side",
        "decode",
        "exit side",
        "compute.wait(side)",
        *records,
        "use",
    ]


def test_a_resource_error_in_a_worker_is_a_clear_error_not_an_unreadable_image(
    tmp_path, monkeypatch
):
    import errno

    from maekit.data.robust import DataResourceError, SeededSamples

    root = write_image_folder(tmp_path / "d", classes=1, per_class=4, size=(20, 24))
    enc = gd.encoded_folder(build_dataset(str(root), "train", None), PRETRAIN_SCALE)

    def no_files(path):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(gd, "open_regular", no_files)
    with pytest.raises(DataResourceError, match="ran out of open files.*ulimit -n"):
        SeededSamples(enc, 0)[(0, 1)]


def test_gpu_decode_refuses_fashion_mnist_and_cpu(tmp_path):
    from maekit.config import BenchConfig, PretrainConfig

    with pytest.raises(MaekitError, match="--gpu_decode"):
        PretrainConfig(gpu_decode=True).validate()
    from maekit.bench.pipeline import measure_pipeline

    root = write_image_folder(tmp_path / "d", classes=1, per_class=4)
    with pytest.raises(MaekitError, match="CUDA"):
        measure_pipeline(
            BenchConfig(
                pipeline=True,
                gpu_decode=True,
                data_path=str(root),
                device="cpu",
                batch_size=2,
                phase="finetune",
            )
        )


def test_bench_pipeline_measures_the_gpu_decode_loader_on_the_cpu(tmp_path):
    """--device cpu: the packed-batch loader of --gpu_decode with CPU decoding, its decode counts
    and the files a worker holds open (a few, not one per image)."""
    from maekit.bench.pipeline import measure_pipeline
    from maekit.config import BenchConfig

    root = _smooth_folder(tmp_path / "d", n=8)
    out = measure_pipeline(
        BenchConfig(
            pipeline=True,
            gpu_decode=True,
            data_path=str(root),
            device="cpu",
            batch_size=4,
            num_workers=1,
            images=16,
            input_size=16,
        )
    )
    assert out["images"] == 16 and out["decode_device"] == "cpu"
    d = out["decode"]
    assert d["batches"] == 5 and d["jpegs"] + d["cpu_decoded"] == 20  # 1 untimed + 4 batches
    assert d["gpu_decoded"] == d["jpegs"] and d["cpu_fallback"] == 0 and d["stood_in"] == 0
    assert 0 < out["open_files_per_worker"] < 64


@pytest.mark.slow
def test_batch_256_under_ulimit_n_256_completes(tmp_path):
    """Two tensors per image used to mean ~2 open files per image in flight: with `ulimit -n 256`
    a worker died of EMFILE (counted as unreadable images) and the loader hung. A packed batch
    is one file, so the run completes (the timeout turns a hang into a failure)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    d = tmp_path / "jpegs" / "train" / "a"
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    img = TF.to_pil_image((torch.rand(3, 12, 16, generator=g) * 255).to(torch.uint8))
    for i in range(256):
        img.save(d / f"{i}.jpg")
    cmd = (
        f"ulimit -n 256 && exec {sys.executable} -m maekit bench --pipeline --gpu_decode "
        f"--device cpu --data_path {tmp_path / 'jpegs'} --batch_size 256 --num_workers 2 "
        "--images 256 --input_size 16 --json"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["images"] == 256 and out["decode"]["stood_in"] == 0
    assert out["open_files_per_worker"] < 64  # not one per image


class _Copies(TorchDispatchMode):
    """Every copy between the host and another device that the dispatcher sees, blocking or
    not, and every read of a device value on the host (``.item()``: a sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocking: list[str] = []
        self.non_blocking: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        aten = torch.ops.aten
        if func is aten._to_copy.default:
            src, dst = args[0].device, kwargs.get("device", args[0].device)
            if src != dst:
                nb = kwargs.get("non_blocking", False)
                (self.non_blocking if nb else self.blocking).append(f"to {src}->{dst}")
        elif func is aten.copy_.default and args[0].device != args[1].device:
            nb = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
            (self.non_blocking if nb else self.blocking).append("copy_")
        elif func is aten._local_scalar_dense.default and args[0].device.type != "cpu":
            self.blocking.append("item")
        return func(*args, **kwargs)


def test_the_decoder_makes_no_blocking_copy_per_batch(tmp_path, monkeypatch):
    """A batch through GpuDecodeLoader on a non-host device (meta stands in for CUDA: the same
    dispatch, no GPU): 0 blocking host-device copies, 0 host reads of device values; the flips
    and the non-JPEG file's pixels go non-blocking. torch.tensor(..., device=) copies outside
    the dispatcher, so it is counted by a wrapper."""
    root = _smooth_folder(tmp_path / "d")  # 7 JPEGs and a PNG
    enc = gd.encoded_folder(build_dataset(str(root), "train", None), PRETRAIN_SCALE)
    batches = [gd.collate_encoded([(*enc[i], 0) for i in range(j, j + 4)]) for j in (0, 4)]
    shapes = {  # each JPEG's decoded size by where its bytes sit, read before counting
        b.image(i).data_ptr(): gd.nvjpeg_decode([b.image(i)], CPU)[0].shape
        for b in batches
        for i in range(len(b))
        if b.shapes[i] is None
    }

    def decode(data, device):  # "nvJPEG": uint8 images of the files' sizes, on the device
        return [torch.empty(shapes[d.data_ptr()], dtype=torch.uint8, device=device) for d in data]

    meta = torch.device("meta")
    loader = gd.GpuDecodeLoader(batches, meta, 16, decode_fn=decode)  # statistics copied here
    made_on_device = []
    real_tensor = torch.tensor

    def tensor(data, *a, **k):
        if k.get("device") is not None and torch.device(k["device"]).type != "cpu":
            made_on_device.append(k["device"])
        return real_tensor(data, *a, **k)

    monkeypatch.setattr(torch, "tensor", tensor)
    copies = _Copies()
    with copies:
        out = [x for x, _y, _bad in loader]
    assert [x.shape for x in out] == [(4, 3, 16, 16)] * 2 and out[0].device == meta
    assert copies.blocking == [] and made_on_device == []
    # per batch: the flips; the PNG's pixels in the first batch
    assert len(copies.non_blocking) == 3, copies.non_blocking
