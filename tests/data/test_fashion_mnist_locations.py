"""Fashion-MNIST off Debian: torchvision's folder layout, MAEKIT_FASHION_MNIST, --download.

The files are small idx files written here in the places torchvision keeps them
(``ROOT/FashionMNIST/raw/``); --download runs torchvision's real download code against a
``file://`` mirror, so no network is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from maekit.cli import main
from maekit.data import build_dataset
from maekit.data import fashion_mnist as fm

STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_split(folder: Path, split: str, n: int, seed: int, gz: bool = True) -> np.ndarray:
    """``n`` random 28x28 images and labels 0..9 as the split's two idx files; returns the labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    for stem, arr in zip(STEMS[split], (images, labels), strict=True):
        data = idx_bytes(arr)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return labels


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Debian package, no MAEKIT_FASHION_MNIST, an empty cache, cwd an empty folder."""
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "no-debian")
    monkeypatch.delenv("MAEKIT_FASHION_MNIST", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def test_torchvision_layout_under_dot_data(nowhere: Path) -> None:
    raw = nowhere / "work" / "data" / "FashionMNIST" / "raw"
    labels = write_split(raw, "val", 12, seed=1, gz=False)  # torchvision keeps them unpacked too
    ds = build_dataset("fashion-mnist", "val", None)
    assert len(ds) == 12 and [ds[i][1] for i in range(12)] == labels.tolist()
    assert fm.find_root("val").resolve() == raw.resolve()


def test_torchvision_layout_in_the_download_root(nowhere: Path) -> None:
    raw = nowhere / "cache" / "maekit" / "FashionMNIST" / "raw"
    labels = write_split(raw, "train", 20, seed=2)
    ds = fm.FashionMNIST("train")
    assert len(ds) == 20 and int(ds.targets[5]) == int(labels[5])


@pytest.mark.parametrize("layout", ["files", "torchvision_root"])
def test_env_variable_names_the_files_or_a_torchvision_root(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    root = nowhere / "mine"
    folder = root if layout == "files" else root / "FashionMNIST" / "raw"
    write_split(folder, "val", 7, seed=3)
    # A second copy further down the search order must not be taken.
    write_split(nowhere / "work" / "data" / "FashionMNIST" / "raw", "val", 9, seed=4)
    monkeypatch.setenv("MAEKIT_FASHION_MNIST", str(root))
    assert len(fm.FashionMNIST("val")) == 7


@pytest.mark.slow
def test_missing_everywhere_is_one_line_naming_download(
    nowhere: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = main(
        [
            "pretrain",
            "--data_path",
            "fashion-mnist",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "28",
            "--patch_size",
            "4",
            "--num_workers",
            "0",
            "--device",
            "cpu",
            "--output_dir",
            str(nowhere / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "Fashion-MNIST (train) not found" in err and "--download" in err
    assert "dataset-fashion-mnist" in err and "MAEKIT_FASHION_MNIST" in err


@pytest.fixture
def file_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A local folder served over HTTP on 127.0.0.1 as torchvision's mirror, with the
    resources' checksums those files have (torchvision's own download code runs)."""
    from torchvision.datasets import FashionMNIST as TV

    mirror = tmp_path / "mirror"
    write_split(mirror, "train", 30, seed=5)
    write_split(mirror, "val", 10, seed=6)
    resources = [
        (f"{stem}.gz", hashlib.md5((mirror / f"{stem}.gz").read_bytes()).hexdigest())
        for split in ("train", "val")
        for stem in STEMS[split]
    ]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(mirror), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(TV, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
    monkeypatch.setattr(TV, "resources", resources)
    yield mirror
    server.shutdown()
    server.server_close()


def test_download_fetches_into_the_torchvision_layout(nowhere: Path, file_mirror: Path) -> None:
    folder = fm.download()
    assert folder == nowhere / "cache" / "maekit" / "FashionMNIST" / "raw"
    assert len(fm.FashionMNIST("train")) == 30 and len(fm.FashionMNIST("val")) == 10
    # Found now: a second --download fetches nothing and returns the same folder.
    for f in file_mirror.iterdir():
        f.unlink()
    assert fm.download() == folder


def test_download_flag_on_the_command_line(
    nowhere: Path, file_mirror: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = main(
        [
            "pretrain",
            "--download",
            "--epochs",
            "1",
            "--max_train_step",
            "1",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "28",
            "--patch_size",
            "7",
            "--batch_size",
            "8",
            "--num_workers",
            "0",
            "--device",
            "cpu",
            "--warmup_epochs",
            "0",
            "--output_dir",
            str(nowhere / "run"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"Fashion-MNIST: {nowhere / 'cache' / 'maekit' / 'FashionMNIST' / 'raw'}" in out
    assert (nowhere / "run" / "checkpoint-0.pth").is_file()


def test_download_without_a_network_says_what_to_do(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from torchvision.datasets import FashionMNIST as TV

    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(TV, "mirrors", [f"http://127.0.0.1:{port}/"])
    rc = main(["pretrain", "--download", "--output_dir", str(nowhere / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "could not download Fashion-MNIST" in err and "FashionMNIST/raw/" in err


def test_download_is_for_fashion_mnist_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["pretrain", "--download", "--data_path", str(tmp_path)])
    assert rc == 2 and "--download fetches Fashion-MNIST only" in capsys.readouterr().err
