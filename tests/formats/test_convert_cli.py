"""``maekit convert IN OUT --to {maekit,timm,safetensors}``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from maekit.cli import main
from maekit.formats import read_checkpoint
from tests.conftest import run_cli_in_process

from .builders import paddle_layout, tiny_mae, write_pd


def test_paddle_to_maekit_and_safetensors(tmp_path, capsys):
    mae = tiny_mae()
    src = write_pd(tmp_path / "checkpoint-7.pd", paddle_layout(mae))
    assert main(["convert", str(src), str(tmp_path / "m.pth"), "--to", "maekit"]) == 0
    out = capsys.readouterr().out
    assert "transposed" in out and "wrote" in out
    ckpt = torch.load(tmp_path / "m.pth", weights_only=True)  # plain: no Namespace inside
    assert set(ckpt) == {"model", "epoch", "args"} and ckpt["epoch"] == 7
    assert ckpt["args"]["model"] == "mae_vit_tiny_patch16"
    for k, v in mae.state_dict().items():
        assert torch.equal(ckpt["model"][k], v), k

    assert main(["convert", str(src), str(tmp_path / "m.safetensors"), "--to", "safetensors"]) == 0
    st = load_file(str(tmp_path / "m.safetensors"))
    assert st.keys() == mae.state_dict().keys()
    assert all(torch.equal(st[k], v) for k, v in mae.state_dict().items())
    assert read_checkpoint(tmp_path / "m.safetensors")["model"].keys() == st.keys()


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    torch.save({"model": tiny_mae().state_dict()}, tmp_path / "a.pth")
    (tmp_path / "b.pth").write_bytes(b"keep me")
    assert (
        main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--to", "maekit"]) == 2
    )
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "b.pth").read_bytes() == b"keep me"
    args = [
        "convert",
        str(tmp_path / "a.pth"),
        str(tmp_path / "a.pth"),
        "--to",
        "safetensors",
        "--force",
    ]
    assert main(args) == 2  # never over its own input
    assert (
        main(
            [
                "convert",
                str(tmp_path / "a.pth"),
                str(tmp_path / "b.pth"),
                "--to",
                "maekit",
                "--force",
            ]
        )
        == 0
    )
    assert set(read_checkpoint(tmp_path / "b.pth")) == {"model"}


def test_cli_errors_are_one_line(tmp_path):
    r = run_cli_in_process(
        ["convert", str(tmp_path / "nope.pd"), str(tmp_path / "out.pth"), "--to", "timm"],
        tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("maekit convert: error: checkpoint") and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.pth").exists()


def test_pool_flags_only_with_timm(tmp_path, capsys):
    torch.save({"model": tiny_mae().state_dict()}, tmp_path / "a.pth")
    args = [
        "convert",
        str(tmp_path / "a.pth"),
        str(tmp_path / "b.pth"),
        "--to",
        "maekit",
        "--global_pool",
    ]
    assert main(args) == 2 and "--to timm" in capsys.readouterr().err


def test_safetensors_write_is_all_or_nothing_and_synced(tmp_path, monkeypatch):
    """save_safetensors goes through atomic_write: a failing writer leaves the old file and no
    temp file; a good write is fsynced (file and folder) before and after the rename."""
    import errno
    import os

    import safetensors.torch

    import maekit.files
    from maekit.errors import MaekitError
    from maekit.files import save_safetensors

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"old content")

    def full(state, name, metadata=None):
        with open(name, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(MaekitError, match="No space left on device") as e:
        save_safetensors({"a": torch.ones(2)}, path, {"format": "pt"})
    assert "\n" not in str(e.value)
    assert path.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    monkeypatch.undo()

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(maekit.files.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    save_safetensors({"a": torch.ones(2)}, path, {"format": "pt"})
    assert len(synced) == 2  # the temp file, then the folder after the rename
    assert torch.equal(load_file(str(path))["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
