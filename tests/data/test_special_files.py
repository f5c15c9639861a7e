"""Only regular files are data (issue 18): FIFOs, sockets, devices and dangling links are
skipped and counted, never waited on; --max_pixels; shard manifests and labels validated."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from maekit.data import build_dataset, build_train_loader
from maekit.data.folder import UnreadableImage, image_folder, load_rgb
from maekit.data.shards.locate import resolve_shards
from maekit.data.shards.write import write_shards
from maekit.errors import MaekitError
from tests.conftest import write_image_folder

TO_TENSOR = T.Compose([T.Resize((8, 8)), T.ToTensor()])


def finishes(fn, timeout: float = 60):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) when it blocks."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked for {timeout}s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def add_special_files(folder: Path) -> list[str]:
    """A FIFO, a socket and a dangling symlink with image names; returns their names."""
    os.mkfifo(folder / "fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.jpg"))
    sock.close()
    (folder / "dangling.png").symlink_to(folder / "no-such-file.png")
    return ["fifo.png", "sock.jpg", "dangling.png"]


@pytest.mark.parametrize("name", ["fifo.png", "sock.jpg", "dangling.png"])
def test_special_files_are_unreadable_images_not_hangs(tmp_path, name):
    add_special_files(tmp_path)
    with pytest.raises(UnreadableImage, match=name):
        finishes(lambda: load_rgb(str(tmp_path / name)))


def test_a_device_is_not_read(tmp_path):
    with pytest.raises(UnreadableImage, match="not a regular file"):
        finishes(lambda: load_rgb("/dev/zero"))


def test_class_folder_with_special_files_trains_and_counts_each(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=5, size=(8, 8))
    names = add_special_files(root / "train" / "class_0")
    ds = build_dataset(str(root), "train", TO_TENSOR)
    assert len(ds) == 13  # listed like torchvision does, refused when read
    for workers in (0, 1):
        loader = build_train_loader(ds, 13, 0, 1, 0, workers, False)
        batches = finishes(lambda loader=loader: list(loader))
        assert sum(int(b[2].sum()) for b in batches) == len(names)


def test_flat_folder_counts_special_files_too(tmp_path):
    for i in range(5):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    add_special_files(tmp_path)
    ds = build_dataset(str(tmp_path), "train", TO_TENSOR)
    batches = finishes(lambda: list(build_train_loader(ds, 8, 0, 1, 0, 0, False)))
    assert sum(int(b[2].sum()) for b in batches) == 3


def test_max_pixels_skips_before_decoding(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    assert load_rgb(str(tmp_path / "big.png"), max_pixels=60_000).size == (300, 200)
    with pytest.raises(
        UnreadableImage, match="300x200 = 60000 pixels, more than --max_pixels 59999"
    ):
        load_rgb(str(tmp_path / "big.png"), max_pixels=59_999)
    ds = build_dataset(str(tmp_path), "train", TO_TENSOR, max_pixels=100)
    with pytest.raises(UnreadableImage):
        ds[0]


def test_empty_class_folder_is_named(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=2, size=(8, 8))
    (root / "train" / "class_2").mkdir()
    with pytest.raises(MaekitError, match="class folder .*class_2 has no images"):
        image_folder(root / "train")


def test_shard_writer_skips_and_counts_special_files(tmp_path, capsys):
    src = write_image_folder(tmp_path / "src", classes=2, per_class=4, size=(8, 8))
    add_special_files(src / "train" / "class_1")
    lines = finishes(lambda: write_shards(src, tmp_path / "dst", 3))
    assert "train: 8 samples" in lines[0] and "3 unreadable entries skipped" in lines[0]
    assert capsys.readouterr().err.count("not a regular file") == 3
    manifest = json.loads((tmp_path / "dst" / "train" / "shards.json").read_text())
    assert manifest["num_samples"] == 8


# --------------------------------------------------------------------------- shard validation


def shards(tmp_path: Path) -> Path:
    src = write_image_folder(tmp_path / "src", classes=2, per_class=3, size=(8, 8))
    write_shards(src, tmp_path / "dst", 3)
    return tmp_path / "dst" / "train"


@pytest.mark.parametrize(
    "change,key",
    [
        (lambda m: m["shards"][0].update(count="3"), r"shards\[0\].count"),
        (lambda m: m["shards"][1].update(count=-1), r"shards\[1\].count"),
        (lambda m: m["shards"][0].pop("name"), r"shards\[0\].name"),
        (lambda m: m["shards"][0].update(name="../../etc/x.tar"), r"shards\[0\].name .* leaves"),
        (lambda m: m["shards"][0].update(name="/abs/x.tar"), r"shards\[0\].name .* leaves"),
        (lambda m: m.update(classes=[1, 2]), "classes"),
    ],
)
def test_malformed_manifest_is_one_line_naming_the_key(tmp_path, change, key):
    folder = shards(tmp_path)
    m = json.loads((folder / "shards.json").read_text())
    change(m)
    (folder / "shards.json").write_text(json.dumps(m))
    with pytest.raises(MaekitError, match=key) as e:
        resolve_shards(str(folder.parent), "train")
    assert "shards.json" in str(e.value) and "\n" not in str(e.value)


def set_label(shard: Path, label: bytes) -> str:
    """Rewrite the first sample's .cls member; returns its key."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = next(m.name for m, _ in members if m.name.endswith(".cls")).rsplit(".", 1)[0]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = label if m.name == f"{key}.cls" else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return key


@pytest.mark.parametrize("label", [b"999", b"-1", b"1" * 40, b"2"])
def test_label_out_of_range_is_one_line_naming_shard_and_key(tmp_path, label):
    folder = shards(tmp_path)
    key = set_label(folder / "shard-000000.tar", label)
    ds = build_dataset(str(folder.parent), "train", TO_TENSOR)
    with pytest.raises(MaekitError, match=rf"shard-000000.tar: {key}.cls") as e:
        list(build_train_loader(ds, 2, 0, 1, 0, 0, False))
    assert "\n" not in str(e.value)


def test_labels_in_range_still_load(tmp_path):
    folder = shards(tmp_path)
    ds = build_dataset(str(folder.parent), "train", TO_TENSOR)
    targets = np.concatenate([b[1].numpy() for b in build_train_loader(ds, 2, 0, 1, 0, 0, False)])
    assert set(targets.tolist()) <= {0, 1}


def test_a_fifo_or_directory_given_as_checkpoint_is_one_line(tmp_path):
    from maekit.formats import read_checkpoint

    os.mkfifo(tmp_path / "ckpt.pth")
    with pytest.raises(MaekitError, match="not a regular file"):
        finishes(lambda: read_checkpoint(tmp_path / "ckpt.pth"))
    with pytest.raises(MaekitError, match="is a directory"):
        read_checkpoint(tmp_path)


def test_resource_errors_propagate_instead_of_counting_as_bad_images(tmp_path, monkeypatch):
    import errno

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")

    def too_many_files(*a, **k):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "open", too_many_files)
    with pytest.raises(OSError, match="Too many open files") as e:
        load_rgb(str(tmp_path / "ok.png"))
    assert not isinstance(e.value, UnreadableImage)
