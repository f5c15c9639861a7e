"""Tar shards: the writer, locating shards (patterns, URLs), and the exact per-epoch split
across ranks and workers, augmentations, mid-epoch resume and bad images."""

from __future__ import annotations

import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from maekit.data import build_dataset, build_train_loader
from maekit.data.shards.dataset import ShardDataset
from maekit.data.shards.locate import expand_braces, resolve_shards
from maekit.data.shards.plan import resume_plan, segments, shard_order, train_blocks
from maekit.data.shards.stream import shard_eval_loader
from maekit.data.shards.write import write_shards
from maekit.data.transforms import pretrain_transform
from maekit.errors import MaekitError
from maekit.phases.supervised import num_classes_of
from tests.conftest import write_image_folder

TO_TENSOR = T.ToTensor()


def make_shards(
    tmp_path: Path, per_class: int = 24, shard_size: int = 10, val: bool = False
) -> Path:
    """2 classes x ``per_class`` 16 px images (+ 2 x 3 in val/) as shards; returns DST."""
    src = write_image_folder(tmp_path / "src", classes=2, per_class=per_class, size=(16, 16))
    if val:
        other = write_image_folder(
            tmp_path / "other", classes=2, per_class=3, size=(16, 16), seed=1
        )
        (other / "train").rename(src / "val")
    dst = tmp_path / "shards"
    write_shards(src, dst, shard_size)
    return dst


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:  # plain tarfile reads them
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def epoch_keys(
    ds: ShardDataset, world: int, workers: int, batch: int, epoch: int = 0
) -> list[list[str]]:
    """Every rank's keys, batch after batch, for one epoch."""
    out = []
    for rank in range(world):
        loader = build_train_loader(ds, batch, rank, world, 0, workers, False)
        loader.sampler.set_epoch(epoch)
        keys = [k for _, batch_keys in loader.batches_with_keys() for k in batch_keys]
        assert len(keys) == len(loader) * batch
        out.append(keys)
    return out


# --------------------------------------------------------------------------- writer


def test_writer_round_trip_every_image_once_with_its_label(tmp_path):
    dst = make_shards(tmp_path, per_class=24, shard_size=10)
    src = tmp_path / "src" / "train"
    manifest = json.loads((dst / "train" / "shards.json").read_text())
    assert manifest["format"] == "maekit-shards/1" and manifest["classes"] == ["class_0", "class_1"]
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 10, 10, 8]
    assert manifest["num_samples"] == 48
    written: Counter = Counter()
    for i, entry in enumerate(manifest["shards"]):
        assert entry["name"] == f"shard-{i:06d}.tar"
        files = members(dst / "train" / entry["name"])
        images = {n: b for n, b in files.items() if not n.endswith(".cls")}
        assert len(images) == entry["count"] and len(files) == 2 * entry["count"]
        labels = set()
        for name, data in images.items():
            key, ext = name.split(".")
            assert key == f"{int(key):09d}" and 10 * i <= int(key) < 10 * i + 10
            label = int(files[f"{key}.cls"].decode("ascii"))
            labels.add(label)
            written[(data, label, ext)] += 1
        if entry["count"] == 10:
            assert labels == {0, 1}  # the order is shuffled: a shard mixes classes
    expected = Counter(
        (p.read_bytes(), int(p.parent.name[-1]), p.suffix[1:]) for p in src.rglob("*.*")
    )
    assert written == expected
    assert not list((dst / "train").glob(".*"))  # no temp files left


def test_writer_refuses_existing_shards_unless_forced_and_keeps_other_files(tmp_path):
    dst = make_shards(tmp_path, per_class=12, shard_size=5)
    (dst / "train" / "notes.txt").write_text("mine")
    with pytest.raises(MaekitError, match="already holds shards.*--force"):
        write_shards(tmp_path / "src", dst, 5)
    lines = write_shards(tmp_path / "src", dst, 20, force=True)
    assert lines == [
        f"train: 24 samples (2 classes) in 2 shards of up to 20, "
        f"{lines[0].split(', ')[1].split(' ->')[0]} -> {dst / 'train'}"
    ]
    names = sorted(p.name for p in (dst / "train").iterdir())
    assert names == ["notes.txt", "shard-000000.tar", "shard-000001.tar", "shards.json"]


def test_half_written_shard_folder_says_the_shard_run_did_not_finish(tmp_path):
    # Issue 29, misleading one-liners: `maekit shard` writes shards.json last, so a killed run
    # leaves tars without it; that folder was "no images found", now it names the cause.
    dst = make_shards(tmp_path, per_class=12, shard_size=5)
    (dst / "train" / "shards.json").unlink()
    for path in (dst, dst / "train"):
        with pytest.raises(MaekitError, match=r"holds 5 tar shards but no shards\.json.*--force"):
            build_dataset(str(path), "train", TO_TENSOR)
    write_shards(tmp_path / "src", dst, 5, force=True)  # the advice works
    assert len(build_dataset(str(dst), "train", TO_TENSOR)) == 24


def test_writer_refuses_dst_inside_src_and_bad_sizes(tmp_path):
    src = write_image_folder(tmp_path / "src", classes=1, per_class=2, size=(8, 8))
    for dst in (src, src / "shards"):
        with pytest.raises(MaekitError, match="inside SRC"):
            write_shards(src, dst, 10)
    with pytest.raises(MaekitError, match="--shard_size"):
        write_shards(src, tmp_path / "out", 0)
    with pytest.raises(MaekitError, match="not a folder"):
        write_shards(tmp_path / "nope", tmp_path / "out", 10)


def test_flat_folder_has_no_labels(tmp_path):
    src = tmp_path / "flat"
    for p in write_image_folder(tmp_path / "f", classes=1, per_class=6, size=(8, 8)).rglob("*.*"):
        src.mkdir(exist_ok=True)
        p.rename(src / p.name)
    write_shards(src, tmp_path / "dst", 4)
    files = members(tmp_path / "dst" / "train" / "shard-000000.tar")
    assert len(files) == 4 and not any(n.endswith(".cls") for n in files)
    ds = build_dataset(str(tmp_path / "dst"), "train", TO_TENSOR)
    assert len(ds) == 6 and ds.classes == []
    with pytest.raises(MaekitError, match="no class labels"):
        num_classes_of(ds)
    (batch, keys), *_ = build_train_loader(ds, 3, 0, 1, 0, 0, False).batches_with_keys()
    assert batch[1].tolist() == [0, 0, 0] and batch[0].shape == (3, 3, 8, 8)


def test_train_and_val_splits(tmp_path):
    dst = make_shards(tmp_path, per_class=6, shard_size=4, val=True)
    train = build_dataset(str(dst), "train", TO_TENSOR)
    val = build_dataset(str(dst), "val", TO_TENSOR)
    assert (len(train), len(val)) == (12, 6) and val.classes == train.classes == [
        "class_0",
        "class_1",
    ]


# --------------------------------------------------------------------------- locating shards


def test_brace_expansion():
    assert expand_braces("a/s-{000..002}.tar") == ["a/s-000.tar", "a/s-001.tar", "a/s-002.tar"]
    assert expand_braces("{x,y}-{8..10}") == ["x-8", "x-9", "x-10", "y-8", "y-9", "y-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(MaekitError, match="cannot expand"):
        expand_braces("a/{train}/x.tar")


def test_patterns_globs_and_file_urls_find_the_same_shards(tmp_path):
    dst = make_shards(tmp_path, per_class=10, shard_size=6, val=True)
    forms = [
        str(dst),
        f"{dst}/{{split}}/shard-{{000000..000003}}.tar",
        f"{dst}/{{split}}/*.tar",
        f"file://{dst}",
        f"file://{dst}/{{split}}/shard-{{000000..000003}}.tar",
        f"file://{dst}/{{split}}/shard-*.tar",
    ]
    for form in forms:
        train = resolve_shards(form, "train")
        assert train.counts == (6, 6, 6, 2) and train.classes == ("class_0", "class_1"), form
        assert [u.rsplit("/", 1)[1] for u in train.urls] == [
            f"shard-00000{i}.tar" for i in range(4)
        ]
        if ".." not in form:  # val/ is one shard of 6
            assert resolve_shards(form, "val").counts == (6,), form
    # Streaming from file:// URLs gives the same samples as the local paths.
    a = build_dataset(f"file://{dst}", "train", TO_TENSOR)
    b = build_dataset(str(dst), "train", TO_TENSOR)
    assert epoch_keys(a, 1, 0, 4) == epoch_keys(b, 1, 0, 4)


def test_local_shards_without_manifest_are_counted(tmp_path):
    dst = make_shards(tmp_path, per_class=10, shard_size=6)
    (dst / "train" / "shards.json").unlink()
    found = resolve_shards(f"{dst}/train/shard-{{000000..000003}}.tar", "train")
    assert found.counts == (6, 6, 6, 2) and found.classes == ("0", "1")


def test_location_errors(tmp_path):
    dst = make_shards(tmp_path, per_class=4, shard_size=4)
    with pytest.raises(MaekitError, match="no shard file"):
        resolve_shards(f"{dst}/train/shard-{{000007..000009}}.tar", "train")
    with pytest.raises(MaekitError, match="no shard file"):
        resolve_shards(f"{dst}/nothing/*.tar", "train")
    with pytest.raises(MaekitError, match=r"\{split\}"):
        resolve_shards(f"{dst}/train/*.tar", "val")
    with pytest.raises(MaekitError, match="val/shards.json"):
        resolve_shards(str(dst), "val")
    (dst / "train" / "shards.json").unlink()
    with pytest.raises(MaekitError, match="need the manifest"):
        resolve_shards(f"file://{dst}/train/shard-000000.tar", "train")
    (dst / "train" / "shard-000001.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(MaekitError, match="shard-000001.tar is not a readable tar file"):
        resolve_shards(f"{dst}/train/*.tar", "train")


# --------------------------------------------------------------------------- the epoch split


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_every_sample_exactly_once_per_epoch(tmp_path, world, workers):
    ds = build_dataset(str(make_shards(tmp_path, per_class=24, shard_size=7)), "train", TO_TENSOR)
    keys = epoch_keys(ds, world, workers, batch=4, epoch=1)  # 48 = 4 x 12: no padding, no rest
    assert sorted(k for rank in keys for k in rank) == [f"{i:09d}" for i in range(48)]
    assert all(len(rank) == 48 // world for rank in keys)


def test_uneven_split_wraps_and_drops_as_documented(tmp_path):
    ds = build_dataset(str(make_shards(tmp_path, per_class=25, shard_size=7)), "train", TO_TENSOR)
    n, world, batch = 50, 4, 4  # L = 13 positions per rank, 3 batches of 4, 1 left out
    order = shard_order(8, seed=0, epoch=2)
    expected: Counter = Counter()
    for rank in range(world):
        for s, a, b in segments(order, ds.shards.counts, rank * 13, rank * 13 + 12):
            expected.update(f"{7 * s + i:09d}" for i in range(a, b))  # the writer's keys
    got = Counter(k for rank in epoch_keys(ds, world, 2, batch, epoch=2) for k in rank)
    assert got == expected and sum(got.values()) == 48
    # Position 50 of the last rank wrapped to the stream's first sample: the one duplicate.
    ((s, a, _),) = segments(order, ds.shards.counts, 0, 1)
    assert [k for k, c in got.items() if c > 1] == [f"{7 * s + a:09d}"] and got.most_common(1)[0][
        1
    ] == 2
    assert len(got) == 47  # of 50: positions 12, 25, 38 left out, position 0 twice
    assert train_blocks(n, world, 3, batch, 2) == [(39, 43), (43, 51)]


def test_epochs_differ_and_repeat(tmp_path):
    ds = build_dataset(str(make_shards(tmp_path, per_class=24, shard_size=6)), "train", TO_TENSOR)
    e0, e0_again, e1 = (epoch_keys(ds, 2, 1, 4, epoch=e) for e in (0, 0, 1))
    assert e0 == e0_again and e0 != e1
    assert sorted(sum(e0, [])) == sorted(sum(e1, []))


def test_augmentation_depends_only_on_seed_epoch_and_sample(tmp_path):
    ds = build_dataset(
        str(make_shards(tmp_path, per_class=12, shard_size=5)), "train", pretrain_transform(8)
    )

    def tensors(world: int, workers: int) -> dict[str, torch.Tensor]:
        out = {}
        for rank in range(world):
            loader = build_train_loader(ds, 2, rank, world, 0, workers, False)
            loader.sampler.set_epoch(3)
            for (images, _, _), keys in loader.batches_with_keys():
                out.update(zip(keys, images, strict=True))
        return out

    one, many = tensors(1, 0), tensors(2, 2)
    assert one.keys() == many.keys() and len(one) == 24
    assert all(torch.equal(one[k], many[k]) for k in one)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (1, 3)])  # (1, 3): 6, 7, 7 batches
def test_start_at_resumes_with_exactly_the_rest_of_the_epoch(tmp_path, world, workers):
    ds = build_dataset(
        str(make_shards(tmp_path, per_class=20, shard_size=5)), "train", pretrain_transform(8)
    )
    loader = build_train_loader(ds, 2, world - 1, world, 0, workers, False)
    loader.sampler.set_epoch(4)
    full = list(loader.batches_with_keys())
    for skip in (1, 3, len(full) - 1, len(full)):
        loader.sampler.set_epoch(4)
        loader.sampler.start_at(skip * 2)
        assert len(loader) == len(full) - skip
        rest = list(loader.batches_with_keys())
        assert [keys for _, keys in rest] == [keys for _, keys in full[skip:]], skip
        assert all(torch.equal(a[0][0], b[0][0]) for a, b in zip(rest, full[skip:], strict=True))
    loader.sampler.set_epoch(5)  # a new epoch is whole again
    assert len(loader) == len(full)


def test_resume_plan_rotates_workers():
    # Worker batches 2, 3 -> loader order (0,0) (0,1) (1,0) (1,1) (2,1) as (batch j, worker k).
    assert resume_plan([2, 3], 0) == ([0, 0], 0)
    assert resume_plan([2, 3], 1) == ([1, 0], 1)
    assert resume_plan([2, 3], 4) == ([2, 2], 1)
    assert resume_plan([2, 3], 5) == ([2, 3], 0)


def test_main_process_loading_leaves_the_global_rng_alone(tmp_path):
    ds = build_dataset(
        str(make_shards(tmp_path, per_class=6, shard_size=4)), "train", pretrain_transform(8)
    )
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    loader = build_train_loader(ds, 4, 0, 1, 0, 0, False)
    list(loader)
    assert (torch.rand(1), random.random(), np.random.rand()) == expected


def test_unreadable_images_are_replaced_and_counted(tmp_path):
    src = write_image_folder(tmp_path / "src", classes=2, per_class=6, size=(8, 8))
    (src / "train" / "class_0" / "0.png").write_bytes(b"not an image")
    write_shards(src, tmp_path / "dst", 5)
    ds = build_dataset(str(tmp_path / "dst"), "train", TO_TENSOR)
    for workers in (0, 2):
        batches = list(build_train_loader(ds, 3, 0, 1, 0, workers, False))
        assert len(batches) == 4 and all(b[0].shape[0] == 3 for b in batches)
        assert sum(int(b[2].sum()) for b in batches) == 1


# --------------------------------------------------------------------------- evaluation


def test_eval_split_is_exact_without_padding(tmp_path):
    dst = make_shards(tmp_path, per_class=5, shard_size=3, val=True)
    ds = build_dataset(str(dst), "val", TO_TENSOR)  # 6 images, 3 per class

    def images(world: int, rank: int, workers: int, rank_split: bool = True) -> torch.Tensor:
        loader = shard_eval_loader(ds, 4, rank, world, rank_split, workers, False)
        return torch.cat([x for x, _ in loader])

    whole = images(1, 0, 0)
    assert whole.shape[0] == 6
    assert torch.equal(torch.cat([images(4, r, 0) for r in range(4)]), whole)  # 1, 2, 1, 2 images
    for workers in (1, 2):
        parts = torch.cat([images(4, r, workers) for r in range(4)])
        assert sorted(parts.sum((1, 2, 3)).tolist()) == sorted(whole.sum((1, 2, 3)).tolist())
    assert torch.equal(images(2, 1, 0, rank_split=False), whole)  # without --dist_eval: every image


def test_a_brace_range_typo_is_refused_before_it_is_expanded(tmp_path):
    """Issue 29 case 30: `{000000000..099999999}` (a digit too many) once built 10^8 names
    (3 GB, then MemoryError); now one line, exit 2, before any allocation."""
    import tracemalloc

    from maekit.data.shards.locate import expand_braces
    from tests.conftest import assert_one_error_line, run_cli_in_process

    tracemalloc.start()
    with pytest.raises(MaekitError, match="names 100000000 shards, more than 1000000"):
        expand_braces("d/shard-{000000000..099999999}.tar")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10_000_000  # bytes: nothing was expanded
    assert len(expand_braces("d/{a,b}/shard-{000..009}.tar")) == 20  # real patterns still work
    r = run_cli_in_process(
        [
            "pretrain",
            "--data_path",
            str(tmp_path / "{split}/shard-{000000000..099999999}.tar"),
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "32",
            "--patch_size",
            "8",
        ],
        tmp_path,
    )
    assert_one_error_line(r, "pretrain", "more than 1000000")
