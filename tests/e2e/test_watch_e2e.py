"""A pre-training you can watch: val_loss every epoch, reconstruction grids at --vis_freq, the
same scalars and images in TensorBoard and (offline) Weights & Biases; its config.json
starts the same configuration again."""

from __future__ import annotations

import glob
import json
import math
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maekit.cli import build_parser
from maekit.config import PretrainConfig
from maekit.config.files import flag_values, read_mapping
from maekit.config.flags import config_from_args
from tests.conftest import run_cli

TINY = [
    "--model",
    "mae_vit_tiny_patch16",
    "--input_size",
    "32",
    "--patch_size",
    "8",
    "--batch_size",
    "4",
    "--warmup_epochs",
    "1",
    "--num_workers",
    "0",
    "--print_freq",
    "2",
    "--blr",
    "1e-3",
    "--norm_pix_loss",
]


def wandb_records(path: Path) -> list:
    """The Record protos of a wandb offline run file (.wandb: a LevelDB-style log of 32 KiB blocks,
    after a 7-byte ':W&B' header; chunks of crc32 (4), length (2), type (1: full, 2-4: first,
    middle, last))."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    return records


def test_three_epochs_watched(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    r = run_cli(
        [
            "pretrain",
            "--data_path",
            str(image_folder),
            "--epochs",
            "3",
            "--output_dir",
            str(out),
            "--val_frac",
            "0.25",
            "--vis_freq",
            "2",
            "--log_wandb",
            "--wandb_project",
            "maekit-test",
            "--wandb_name",
            "watch",
            *TINY,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    # image_folder has no val/: 6 of its 24 training images are held out, 18 train
    assert "(18 images)" in r.stdout
    assert "validation: 6 training images held out (--val_frac 0.25), fixed masks" in r.stdout
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == [0, 1, 2]
    val = [rec["val_loss"] for rec in log]
    assert all(math.isfinite(v) and v > 0 for v in val)
    # every --vis_freq 2 epochs (epoch 1) and at the last (epoch 2)
    assert sorted(p.name for p in out.glob("reconstruction-*.png")) == [
        "reconstruction-1.png",
        "reconstruction-2.png",
    ]
    png = np.asarray(Image.open(out / "reconstruction-2.png").convert("RGB"))
    assert (
        png.shape[0] > 6 * 32 * 4 and png.shape[1] > 4 * 32 * 4
    )  # 6 rows x 4 columns of 128 px cells
    assert f"reconstructions of fixed validation images: {out / 'reconstruction-2.png'}" in r.stdout

    acc = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tb_val = acc.Scalars("epoch/val_loss")
    assert [e.step for e in tb_val] == [0, 1, 2]
    assert [e.value for e in tb_val] == [np.float32(v) for v in val]
    assert {"epoch/train_loss", "epoch/train_lr", "train_loss", "lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train_loss")][-1] == 3000  # 1000 x fractional epoch
    images = acc.Images("reconstruction")
    assert [e.step for e in images] == [1, 2]
    assert (images[-1].width, images[-1].height) == (png.shape[1], png.shape[0])

    # wandb offline: the same scalars and images
    (run_file,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    history = []
    for rec in wandb_records(Path(run_file)):
        if rec.WhichOneof("record_type") == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in rec.history.item
                }
            )
    wb_val = [(h["epoch"], h["epoch/val_loss"]) for h in history if "epoch/val_loss" in h]
    assert wb_val == [(e, v) for e, v in enumerate(val)]
    wb_images = [h["epoch"] for h in history if any(k.startswith("reconstruction") for k in h)]
    assert wb_images == [1, 2]
    assert (
        len(
            glob.glob(str(out / "wandb" / "offline-run-*" / "files" / "media" / "images" / "*.png"))
        )
        == 2
    )
    assert any("train_loss" in h and "epoch_x1000" in h for h in history)

    # the run's own config.json starts the same configuration
    saved = json.loads((out / "config.json").read_text())
    argv = ["pretrain", "--config", str(out / "config.json")]
    ns = build_parser(
        {
            "pretrain": flag_values(
                *read_mapping(str(out / "config.json"))[:1],
                PretrainConfig,
                "pretrain",
                "config.json",
            )
        }
    ).parse_args(argv)
    again = config_from_args(PretrainConfig, ns)
    assert again == PretrainConfig(**{k: v for k, v in saved.items() if k != "resolved"})
    assert (again.val_frac, again.vis_freq, again.epochs, again.norm_pix_loss) == (0.25, 2, 3, True)
