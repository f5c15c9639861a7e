"""Issue 18: inputs that used to end in a raw traceback give one line and exit 2.

Malformed shard manifests and labels, crafted checkpoints, a non-image given to `visualize
--images`, a directory given to --resume, an empty class folder, flags refused at start-up. The cases run
in-process through ``maekit.cli.main`` (no torch import per case)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from maekit.data.shards.write import write_shards
from tests.conftest import write_image_folder

TINY = [
    "--model",
    "mae_vit_tiny_patch16",
    "--input_size",
    "32",
    "--patch_size",
    "8",
    "--batch_size",
    "2",
    "--epochs",
    "1",
    "--warmup_epochs",
    "0",
    "--num_workers",
    "0",
    "--device",
    "cpu",
    "--print_freq",
    "1",
    "--max_train_step",
    "2",
]


MANIFESTS = {
    "manifest_count_string": (lambda m: m["shards"][0].update(count="3"), "shards[0].count"),
    "manifest_count_negative": (lambda m: m["shards"][0].update(count=-2), "shards[0].count"),
    "manifest_entry_without_name": (lambda m: m["shards"][0].pop("name"), "shards[0].name"),
    "manifest_name_leaves_folder": (
        lambda m: m["shards"][0].update(name="../../x.tar"),
        "leaves the manifest's folder",
    ),
}
LABELS = {"label_999": b"999", "label_negative": b"-1", "label_40_digits": b"7" * 40}


def _relabel(shard: Path, label: bytes) -> None:
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = label if m.name.endswith(".cls") else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def _deep_checkpoint(path: Path, depth: int = 200_000) -> None:
    """A torch zip whose pickle nests lists ``depth`` deep (torch.save itself would overflow)."""
    buf = io.BytesIO()
    torch.save({"model": {}, "epoch": 0}, buf)
    pkl = (
        b"\x80\x02}q\x00(X\x05\x00\x00\x00model}X\x04\x00\x00\x00args"
        + b"]" * depth
        + b"a" * (depth - 1)
        + b"X\x05\x00\x00\x00epochK\x00u."
    )
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = pkl if info.filename.endswith("data.pkl") else zin.read(info.filename)
            zout.writestr(info.filename, data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    src = write_image_folder(root / "src", classes=2, per_class=3, size=(36, 36))
    for name, (change, _) in MANIFESTS.items():
        write_shards(src, root / name, 3)
        m = json.loads((root / name / "train" / "shards.json").read_text())
        change(m)
        (root / name / "train" / "shards.json").write_text(json.dumps(m))
    for name, label in LABELS.items():
        write_shards(src, root / name, 6)
        _relabel(root / name / "train" / "shard-000000.tar", label)
    from maekit.models import create_model

    model = create_model("mae_vit_tiny_patch16", img_size=32, patch_size=8)
    state = model.state_dict()
    args = {"model": "mae_vit_tiny_patch16", "input_size": 32, "patch_size": 8}
    torch.save({"model": state, "args": args, "epoch": 0}, root / "good.pth")
    torch.save(
        {"model": {**state, "pos_embed": np.array([1, "a"], dtype=object)}, "epoch": 0},
        root / "object_array.pth",
    )
    torch.save({"model": {**state, 7: torch.zeros(1)}, "epoch": 0}, root / "int_key.pth")
    torch.save({"model": state, "args": args, "epoch": "abc"}, root / "epoch_string.pth")
    torch.save({"model": state, "args": args, "epoch": -5}, root / "epoch_negative.pth")
    _deep_checkpoint(root / "deep.pth")
    (root / "not_an_image.png").write_text("plain text, not a PNG")
    (root / "a_folder").mkdir()
    empty = write_image_folder(root / "emptyclass", classes=2, per_class=2, size=(36, 36))
    (empty / "train" / "class_9").mkdir()
    return root


CASES: dict[str, tuple[list[str], str]] = {
    **{
        name: (["pretrain", "--data_path", name, "--output_dir", f"o_{name}", *TINY], key)
        for name, (_, key) in MANIFESTS.items()
    },
    **{
        name: (
            ["pretrain", "--data_path", name, "--output_dir", f"o_{name}", *TINY],
            "shard-000000.tar: ",
        )
        for name in LABELS
    },
    "checkpoint_object_array": (
        ["convert", "object_array.pth", "o1.pth", "--to", "maekit"],
        "numpy array of Python objects",
    ),
    "checkpoint_int_key": (["convert", "int_key.pth", "o2.pth", "--to", "maekit"], "not a string"),
    "checkpoint_deep_nesting": (["convert", "deep.pth", "o3.pth", "--to", "maekit"], "nested"),
    "checkpoint_epoch_string": (
        [
            "pretrain",
            "--data_path",
            "src",
            "--resume",
            "epoch_string.pth",
            "--output_dir",
            "r1",
            *TINY,
        ],
        "'epoch' is 'abc'",
    ),
    "checkpoint_epoch_negative": (
        [
            "pretrain",
            "--data_path",
            "src",
            "--resume",
            "epoch_negative.pth",
            "--output_dir",
            "r2",
            *TINY,
        ],
        "'epoch' is '-5'",
    ),
    "resume_is_a_directory": (
        ["pretrain", "--data_path", "src", "--resume", "a_folder", "--output_dir", "r3", *TINY],
        "is a folder; give the checkpoint file in it",
    ),
    "visualize_non_image": (
        [
            "visualize",
            "--checkpoint",
            "good.pth",
            "--images",
            "not_an_image.png",
            "--device",
            "cpu",
            "--out",
            "v.png",
        ],
        "not_an_image.png",
    ),
    "empty_class_folder": (
        ["pretrain", "--data_path", "emptyclass", "--output_dir", "o_empty", *TINY],
        "class_9 has no images",
    ),
    # flags refused before anything is written (more in tests/test_cli_errors.py)
    "mask_ratio_zero": (
        ["pretrain", "--data_path", "src", "--output_dir", "n1", *TINY, "--mask_ratio", "0"],
        "some must be masked",
    ),
    "clip_grad_negative": (
        ["pretrain", "--data_path", "src", "--output_dir", "n2", *TINY, "--clip_grad", "-1"],
        "--clip_grad must be a positive",
    ),
    "min_lr_above_lr": (
        [
            "pretrain",
            "--data_path",
            "src",
            "--output_dir",
            "n3",
            *TINY,
            "--lr",
            "1e-4",
            "--min_lr",
            "1e-3",
        ],
        "--min_lr 0.001 is above --lr",
    ),
    "min_lr_above_scaled_blr": (
        ["pretrain", "--data_path", "src", "--output_dir", "n4", *TINY, "--min_lr", "1e-3"],
        "--min_lr 0.001 is above the learning rate",
    ),
    "finetune_weight_decay_nan": (
        ["finetune", "--data_path", "src", "--output_dir", "n5", "--weight_decay", "nan"],
        "--weight_decay must be a finite number",
    ),
}
NOTHING_WRITTEN = (
    "mask_ratio_zero",
    "clip_grad_negative",
    "min_lr_above_lr",
    "min_lr_above_scaled_blr",
    "finetune_weight_decay_nan",
)


@pytest.mark.parametrize("case", list(CASES))
def test_fault_is_one_error_line_exit_2(scratch, case, capsys, monkeypatch):
    """In process through the CLI's ``main`` (what the console script runs): a traceback would
    fail the test; exit status and stderr are the CLI's own."""
    from maekit.cli import main

    monkeypatch.chdir(scratch)
    argv, must_contain = CASES[case]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"maekit {argv[0]}: error:"), err[0]
    assert must_contain in err[0], err[0]
    if case in NOTHING_WRITTEN:
        assert not (scratch / argv[argv.index("--output_dir") + 1]).exists()
