"""Resumable sampler and per-sample seeded, bad-file-tolerant fetching."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from maekit.data import build_train_loader, image_folder
from maekit.data.folder import UnreadableImage, load_rgb
from maekit.data.robust import SeededSamples, TooManyBadImages
from maekit.data.sampling import ResumableSampler
from maekit.data.seeding import sample_seed


class RandomDraws(Dataset):
    """Each item is a draw from all three global RNGs: shows what seeding a fetch gets."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i):
        x = torch.tensor([torch.rand(()).item(), random.random(), float(np.random.rand())])
        return x, i


def test_sampler_matches_the_official_distributed_order_and_carries_the_epoch():
    ds = list(range(23))
    for rank in (0, 1):
        ours, theirs = (
            ResumableSampler(ds, 2, rank, seed=7),
            DistributedSampler(ds, 2, rank, seed=7),
        )
        ours.set_epoch(3)
        theirs.set_epoch(3)
        assert [i for _, i in ours] == list(theirs)
        assert {e for e, _ in ours} == {3}


def test_start_at_skips_once_then_the_next_epoch_is_whole():
    s = ResumableSampler(list(range(20)), 1, 0, seed=0)
    s.set_epoch(1)
    full = list(s)
    s.start_at(8)
    assert list(s) == full[8:] and len(s) == 12
    s.set_epoch(2)
    assert len(list(s)) == 20


def test_sample_seed_differs_by_seed_epoch_and_index():
    seeds = {sample_seed(s, e, i) for s in (0, 1) for e in (0, 1, 2) for i in range(50)}
    assert len(seeds) == 2 * 3 * 50
    assert sample_seed(3, 4, 5) == sample_seed(3, 4, 5)


def test_augmentation_depends_only_on_the_key_not_the_worker_count():
    ds = SeededSamples(RandomDraws(), seed=5)
    keys = [(2, i) for i in range(16)]

    def fetch(workers: int) -> torch.Tensor:
        loader = DataLoader(ds, batch_size=4, sampler=keys, num_workers=workers)
        return torch.cat([x for x, _, _ in loader])

    single = fetch(0)
    assert torch.equal(single, fetch(2))
    assert torch.equal(single[5], ds[(2, 5)][0])  # and on its own, out of order
    assert not torch.equal(ds[(2, 5)][0], ds[(3, 5)][0])  # a new epoch, new augmentations


def test_fetching_in_the_main_process_leaves_the_global_rng_streams_alone():
    ds = SeededSamples(RandomDraws(), seed=0)
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    expected = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    ds[(0, 3)]
    ds[(1, 4)]
    got = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


class Flaky(Dataset):
    def __init__(self, bad: set[int], n: int = 10) -> None:
        self.bad, self.n = bad, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise UnreadableImage(f"file{i}.jpg: broken")
        return torch.tensor([float(i)]), i


def test_a_bad_file_is_replaced_by_the_next_readable_one_and_counted_once(capsys):
    ds = SeededSamples(Flaky({3, 4, 9}), seed=0)
    got = {i: ds[(0, i)] for i in range(10)}
    assert got[3][1] == 5 and got[4][1] == 5 and got[9][1] == 0  # wraps around
    assert sum(v[2] for v in got.values()) == 3  # three bad files, each counted once
    assert "file3.jpg: broken" in capsys.readouterr().err


def test_nothing_readable_is_a_clear_error():
    with pytest.raises(TooManyBadImages, match="could not be read"):
        SeededSamples(Flaky(set(range(10))), seed=0)[(0, 0)]


def test_loader_batches_carry_skip_counts(tmp_path: Path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(8):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(root / f"{i}.png")
    (root / "3.png").write_bytes(b"")
    loader = build_train_loader(image_folder(root, lambda im: torch.zeros(1)), 4, 0, 1, 0, 0, False)
    loader.sampler.set_epoch(0)
    assert sum(int(b[2].sum()) for b in loader) == 1


# ----------------------------------------------------------------------- image decoding


def _save_bad_and_odd_files(root: Path) -> tuple[list[str], list[str]]:
    """Unreadable files and odd-but-convertible ones, in ``root``; returns their names."""
    rng = np.random.default_rng(0)
    rgb = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(root / "ok.jpg")
    data = (root / "ok.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(rgb).save(root / "ok.png")
    png = bytearray((root / "ok.png").read_bytes())
    png[60:200] = bytes(140)  # zero out IDAT data: corrupt stream, CRC mismatch
    (root / "corrupt.png").write_bytes(bytes(png))
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is not an image\n")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, np.full((24, 24), 128, np.uint8)]), "RGBA").save(
        root / "rgba.png"
    )
    Image.fromarray(rgb).convert("P").save(root / "palette.png")
    Image.fromarray(rgb[:3, :2]).save(root / "tiny.png")  # smaller than any crop
    bad = ["truncated.jpg", "corrupt.png", "empty.jpg", "notes.png"]
    odd = ["ok.jpg", "ok.png", "cmyk.jpg", "rgba.png", "palette.png", "tiny.png"]
    return bad, odd


def test_unreadable_files_raise_unreadable_image_and_odd_modes_convert(tmp_path: Path):
    bad, odd = _save_bad_and_odd_files(tmp_path)
    for name in bad:
        with pytest.raises(UnreadableImage, match=name):
            load_rgb(str(tmp_path / name))
    for name in odd:
        img = load_rgb(str(tmp_path / name))
        assert img.mode == "RGB" and img.size[0] >= 2, name


def test_the_8bit_path_refuses_16bit_and_float_files_instead_of_rounding_them(tmp_path: Path):
    """The 8-bit path once divided 16-bit pixels by 257 (913 levels of a 12-bit file became
    16) and turned float files black: both are refused in one line naming --pixels full."""
    from maekit.data.folder import EightBitOnly

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((24, 24)) * 4095).astype(np.uint16)).save(tmp_path / "d16.png")
    Image.fromarray(rng.random((24, 24)).astype(np.float32)).save(tmp_path / "f.tif")
    for name in ("d16.png", "f.tif"):
        with pytest.raises(EightBitOnly, match=rf"{name}: .*--pixels full"):
            load_rgb(str(tmp_path / name))


def test_per_sample_seeding_never_touches_a_cuda_generator(monkeypatch):
    """torch.manual_seed would reseed the CUDA generators too, which the main-process fetch
    does not restore: masking and drop path on a GPU would then follow the data order."""
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: calls.append(("all", s)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: calls.append(("one", s)))
    ds = SeededSamples(RandomDraws(), seed=0)
    a, b = ds[(0, 3)][0], ds[(0, 3)][0]
    assert torch.equal(a, b)  # the CPU generator was seeded: the draw is the key's
    assert calls == []


class LoggedDraws(Dataset):
    """RandomDraws that also appends each fetched index to a file (visible across workers)."""

    def __init__(self, log: Path, n: int = 24) -> None:
        self.log, self.n = log, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        with open(self.log, "a") as f:
            f.write(f"{torch.utils.data.get_worker_info() is not None} {i}\n")
        return torch.tensor([float(i), torch.rand(()).item(), random.random()]), i


def _epoch_batches(loader, epoch: int, skip: int = 0, take: int | None = None) -> list:
    loader.sampler.set_epoch(epoch)
    if skip:
        loader.sampler.start_at(skip)
    batches = []
    for k, (x, y, bad) in enumerate(loader):
        if take is not None and k == take:
            break
        batches.append((x, y, bad))
    return batches


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(u, v) for u, v in zip(p, q, strict=True)) for p, q in zip(a, b, strict=True)
    )


def test_persistent_workers_read_on_across_epochs_and_give_a_fresh_loaders_batches(tmp_path):
    """Epochs read whole continue one loader iteration (the workers prefetch the next epoch's
    batches before it starts); a resumed, cut or out-of-order epoch restarts it. Either way the
    batches are exactly those of a fresh single-process loader at the same position."""
    log = tmp_path / "fetch.log"
    loader = build_train_loader(LoggedDraws(log), 4, 0, 1, 5, 1, False)

    def fresh(epoch: int, skip: int = 0, take: int | None = None) -> list:
        return _epoch_batches(
            build_train_loader(LoggedDraws(tmp_path / "x.log"), 4, 0, 1, 5, 0, False),
            epoch,
            skip,
            take,
        )

    assert _same(_epoch_batches(loader, 0), fresh(0)) and len(fresh(0)) == 6
    # Before epoch 1 is asked for, the worker has already fetched some of its samples.
    first_of_1 = {int(x[0, 0]) for x, _, _ in fresh(1)[:1]}
    for _ in range(200):
        fetched = [int(line.split()[1]) for line in log.read_text().splitlines()]
        if len(fetched) > 24 and first_of_1 <= set(fetched[24:]):
            break
        import time

        time.sleep(0.1)
    assert len(fetched) > 24 and first_of_1 <= set(fetched[24:]), fetched
    assert all(line.startswith("True") for line in log.read_text().splitlines())  # in the worker
    assert _same(_epoch_batches(loader, 1), fresh(1)) and loader.starts == 1  # continued
    assert _same(_epoch_batches(loader, 2, skip=8), fresh(2, skip=8))  # a resume: restarted
    assert loader.starts == 2
    assert _same(_epoch_batches(loader, 3), fresh(3)) and loader.starts == 2  # continued
    assert _same(_epoch_batches(loader, 4, take=2), fresh(4, take=2))  # cut short
    assert _same(_epoch_batches(loader, 5), fresh(5)) and loader.starts == 3  # restarted
    assert _same(_epoch_batches(loader, 7), fresh(7)) and loader.starts == 4  # not the next one
