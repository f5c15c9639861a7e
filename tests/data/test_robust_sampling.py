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
from maekit.data.robust import SeededSamples, TooManyBadImages, sample_seed
from maekit.data.sampling import ResumableSampler


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
    Image.fromarray((rng.random((24, 24)) * 65535).astype(np.uint16)).save(root / "deep16.png")
    Image.fromarray(rgb[:3, :2]).save(root / "tiny.png")  # smaller than any crop
    bad = ["truncated.jpg", "corrupt.png", "empty.jpg", "notes.png"]
    odd = ["ok.jpg", "ok.png", "cmyk.jpg", "rgba.png", "palette.png", "deep16.png", "tiny.png"]
    return bad, odd


def test_unreadable_files_raise_unreadable_image_and_odd_modes_convert(tmp_path: Path):
    bad, odd = _save_bad_and_odd_files(tmp_path)
    for name in bad:
        with pytest.raises(UnreadableImage, match=name):
            load_rgb(str(tmp_path / name))
    for name in odd:
        img = load_rgb(str(tmp_path / name))
        assert img.mode == "RGB" and img.size[0] >= 2, name
    deep = np.asarray(load_rgb(str(tmp_path / "deep16.png")))
    assert deep.max() > 200  # 16-bit scaled down, not clipped to white/black
