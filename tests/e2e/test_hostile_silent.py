"""Issue 29, silently wrong (cases 7-22): each hostile input either works correctly or stops
with one line (exit 2); none trains on, scores or loads something else than it says.

Cases decided by flags alone run the CLI; cases in one reader (a folder walk, a decoder, a
checkpoint or config reader) call it directly and check the one line its error becomes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from maekit.checkpoint.pretrained import load_checkpoint
from maekit.config.files import read_mapping
from maekit.data import build_dataset
from maekit.data.folder import UnreadableImage, image_folder, load_rgb
from maekit.data.shards.write import write_shards
from maekit.errors import MaekitError
from maekit.formats.safe_pickle import load_torch
from maekit.models import create_model
from tests.conftest import run_cli_in_process, write_image_folder
from tests.e2e.test_hostile_data_loss import one_line_refusal, pretrain

SUPERVISED = [
    "--model",
    "vit_tiny_patch16",
    "--input_size",
    "32",
    "--patch_size",
    "8",
    "--batch_size",
    "4",
    "--num_workers",
    "0",
    "--warmup_epochs",
    "0",
    "--epochs",
    "1",
]


def labeled(root: Path, train: list[str], val: list[str]) -> Path:
    """train/ and val/ with the given class folder names, 4 and 2 images each."""
    for split, names, n in (("train", train, 4), ("val", val, 2)):
        for c, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((36, 40, 3), 30 * c + 5 * i, np.uint8)).save(d / f"{i}.png")
    return root


def case_val_class_names_differ_from_train(tmp: Path) -> None:
    data = labeled(tmp / "data", ["cat", "dog", "owl"], ["ant", "bee", "cow"])
    for phase in ("finetune", "linprobe"):
        out = tmp / phase
        r = run_cli_in_process(
            [phase, *SUPERVISED, "--data_path", str(data), "--output_dir", str(out)], tmp
        )
        one_line_refusal(r, "train/ and val/ have different class folders (cat / ant")
        assert not out.exists()


def case_accum_iter_above_the_steps_of_an_epoch(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)  # 8 images, batch 4: 2 steps
    r = run_cli_in_process(pretrain(data, tmp / "run", "--epochs", "1", "--accum_iter", "3"), tmp)
    one_line_refusal(r, "--accum_iter 3 is above the 2 steps of an epoch")
    assert not (tmp / "run" / "checkpoint-last.pth").exists()
    r = run_cli_in_process(pretrain(data, tmp / "ok", "--epochs", "1", "--accum_iter", "2"), tmp)
    assert r.returncode == 0, r.stderr
    state = torch.load(tmp / "ok" / "checkpoint-last.pth", weights_only=True)["optimizer"]
    assert state["state"], "an accumulation that fits the epoch steps the optimizer"


def case_symlink_loop_in_a_class_folder(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=12)  # 24 images
    (data / "train" / "class_0" / "loop").symlink_to("..", target_is_directory=True)
    (data / "train" / "class_1" / "again").symlink_to(
        data / "train" / "class_1", target_is_directory=True
    )
    ds = build_dataset(str(data), "train", None)
    assert len(ds) == 24
    assert len(set(ds.samples)) == 24
    # the same walk in shard and stats (both read through image_folder)
    write_shards(data, tmp / "shards", 10)
    counts = [
        e["count"] for e in json.loads((tmp / "shards/train/shards.json").read_text())["shards"]
    ]
    assert sum(counts) == 24
    r = run_cli_in_process(["stats", "--data_path", str(data), "--num_workers", "0"], tmp)
    assert r.returncode == 0, r.stderr
    assert "folders seen before (a symlink loop)" in r.stderr, r.stderr


def case_one_class_is_refused(tmp: Path) -> None:
    data = labeled(tmp / "data", ["only"], ["only"])
    for phase in ("finetune", "linprobe"):
        r = run_cli_in_process(
            [phase, *SUPERVISED, "--data_path", str(data), "--output_dir", str(tmp / phase)], tmp
        )
        one_line_refusal(r, "the dataset has one class (only)")


def case_mask_ratio_leaving_no_visible_patch(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    r = run_cli_in_process(
        pretrain(data, tmp / "run", "--epochs", "1", "--mask_ratio", "0.999"), tmp
    )
    one_line_refusal(r, "--mask_ratio 0.999 leaves no visible cell of the 16")
    assert not (tmp / "run").exists()
    # ConvMAE masks its 4x coarser grid: at 64 px, 16 cells of which 0.95 leaves none
    r = run_cli_in_process(
        [
            "pretrain",
            "--model",
            "convmae_convvit_small_patch16",
            "--input_size",
            "64",
            "--mask_ratio",
            "0.95",
            "--data_path",
            str(data),
            "--output_dir",
            str(tmp / "conv"),
            "--num_workers",
            "0",
        ],
        tmp,
    )
    one_line_refusal(r, "--mask_ratio 0.95 leaves no visible cell of the 16")


def case_float_and_int32_tiffs_never_load_silently(tmp: Path) -> None:
    """The 8-bit path refuses float, 32-bit and 16-bit files (it once rounded 16 bits to 8);
    the full-precision path reads each to its exact values."""
    from maekit.data.folder import EightBitOnly
    from maekit.data.pixels import read_image

    flt = np.random.default_rng(0).random((8, 8), np.float32)
    i32 = (np.arange(64).reshape(8, 8) * 100_000).astype(np.int32)
    u16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    for name, arr in (("f.tif", flt), ("i.tif", i32), ("u.tif", u16)):
        tifffile.imwrite(tmp / name, arr)
        with pytest.raises(EightBitOnly, match=rf"{name}: .* pixels .*--pixels full"):
            load_rgb(str(tmp / name))
        x = read_image(tmp / name, 1, max_value=1.0)[0].numpy()
        np.testing.assert_array_equal(x, arr.astype(np.float32))  # every value, exactly


def _vit_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16", img_size=32, patch_size=8, depth=1).state_dict()


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_int8_and_bool_weights_are_refused_not_cast(dtype, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.to(dtype) for k, v in _vit_state().items()}
    save_file(state, tmp_path / "q.safetensors")
    model = create_model("vit_tiny_patch16", img_size=32, patch_size=8, depth=1)
    before = model.state_dict()["blocks.0.attn.qkv.weight"].clone()
    with pytest.raises(MaekitError, match="not floating point where the model's weights are"):
        load_checkpoint(tmp_path / "q.safetensors", model)
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], before)


def case_int8_weights_through_the_cli(tmp: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.to(torch.int8) for k, v in _vit_state().items()}, tmp / "q.safetensors")
    data = labeled(tmp / "data", ["a", "b"], ["a", "b"])
    r = run_cli_in_process(
        [
            "finetune",
            *SUPERVISED,
            "--finetune",
            str(tmp / "q.safetensors"),
            "--data_path",
            str(data),
            "--output_dir",
            str(tmp / "ft"),
        ],
        tmp,
    )
    one_line_refusal(r, "not floating point")


def _flip(src: Path, dst: Path, value: torch.Tensor) -> None:
    """``src`` with 64 bytes inside ``value``'s data flipped."""
    raw = bytearray(src.read_bytes())
    at = raw.find(value.numpy().tobytes()[:64])
    assert at > 0
    raw[at + 64 : at + 128] = bytes(b ^ 0xFF for b in raw[at + 64 : at + 128])
    dst.write_bytes(bytes(raw))


def case_flipped_bytes_in_a_checkpoint(tmp: Path) -> None:
    state = _vit_state()
    torch.save({"model": state, "epoch": 0}, tmp / "ok.pth")
    _flip(tmp / "ok.pth", tmp / "bad.pth", state["blocks.0.attn.qkv.weight"])
    assert torch.load(tmp / "bad.pth", weights_only=True)["epoch"] == 0  # torch reads it
    assert load_torch(tmp / "ok.pth")["epoch"] == 0
    with pytest.raises(MaekitError, match="does not match its stored checksum"):
        load_torch(tmp / "bad.pth")
    r = run_cli_in_process(
        ["convert", str(tmp / "bad.pth"), str(tmp / "w.safetensors"), "--to", "safetensors"], tmp
    )
    one_line_refusal(r, "does not match its stored checksum")
    assert not (tmp / "w.safetensors").exists()


def case_explicit_resume_with_other_flags_in_the_same_folder(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    out = tmp / "run"
    assert run_cli_in_process(pretrain(data, out, "--epochs", "1"), tmp).returncode == 0
    config = (out / "config.json").read_text()
    r = run_cli_in_process(
        pretrain(
            data,
            out,
            "--epochs",
            "2",
            "--mask_ratio",
            "0.5",
            "--resume",
            str(out / "checkpoint-0.pth"),
        ),
        tmp,
    )
    one_line_refusal(r, "--mask_ratio 0.75 -> 0.5")
    assert (out / "config.json").read_text() == config


def case_warmup_above_epochs_is_said(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    r = run_cli_in_process(
        pretrain(data, tmp / "run", "--epochs", "1", "--warmup_epochs", "3"), tmp
    )
    assert r.returncode == 0, r.stderr
    assert "--warmup_epochs 3 is above --epochs 1: the lr never reaches its peak" in r.stdout


def case_output_dir_inside_the_data(tmp: Path) -> None:
    flat = tmp / "flat"
    flat.mkdir()
    for i in range(8):
        Image.fromarray(np.full((36, 40, 3), 9 * i, np.uint8)).save(flat / f"{i}.png")
    r = run_cli_in_process(pretrain(flat, flat / "run", "--epochs", "1"), tmp)
    one_line_refusal(r, "which is read as images")
    assert sorted(p.name for p in flat.iterdir()) == [f"{i}.png" for i in range(8)]
    data = write_image_folder(tmp / "data", per_class=4)
    r = run_cli_in_process(pretrain(data, data / "train" / "run", "--epochs", "1"), tmp)
    one_line_refusal(r, "which is read as images")
    # beside train/ (not read as images) is fine
    r = run_cli_in_process(pretrain(data, data / "runs" / "a", "--epochs", "1"), tmp)
    assert r.returncode == 0, r.stderr


def _shards(tmp: Path) -> Path:
    src = write_image_folder(tmp / "src", per_class=6, size=(16, 16))
    write_shards(src, tmp / "shards", 6)
    return tmp / "shards"


def case_a_manifest_that_under_counts(tmp: Path) -> None:
    shards = _shards(tmp)
    manifest = shards / "train" / "shards.json"
    data = json.loads(manifest.read_text())
    for entry in data["shards"]:  # 6 + 6 samples said to be 4 + 4: one epoch of 2 steps
        entry["count"] -= 2
    manifest.write_text(json.dumps(data))
    r = run_cli_in_process(pretrain(shards, tmp / "run", "--epochs", "1"), tmp)
    one_line_refusal(r, "holds more samples than its manifest's 4")


def case_max_pixels_above_pillows_own_limit(tmp: Path, monkeypatch=None) -> None:
    Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(tmp / "big.png")  # 3000 pixels
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # PIL refuses over 2000 pixels itself
    try:
        assert load_rgb(str(tmp / "big.png"), max_pixels=5000).size == (50, 60)
        assert Image.MAX_IMAGE_PIXELS == 1000  # PIL's limit as it was
        with pytest.raises(UnreadableImage, match="more than --max_pixels 2500"):
            load_rgb(str(tmp / "big.png"), max_pixels=2500)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def case_skipped_files_and_folders_are_counted(tmp: Path) -> None:
    data = write_image_folder(tmp / "data", per_class=4)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "train" / "class_0" / "x.gif")
    (data / "train" / "class_0" / "notes.txt").write_text("hello")
    hidden = data / "train" / "class_1" / "sub"
    hidden.mkdir()
    shutil.copy(data / "train" / "class_1" / "0.png", hidden / "0.png")
    hidden.chmod(0)
    try:
        r = run_cli_in_process(["stats", "--data_path", str(data), "--num_workers", "0"], tmp)
    finally:
        hidden.chmod(0o755)
    assert r.returncode == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if "left out" in line]
    assert len(warning) == 1, r.stderr
    assert "files not of an image type (.gif) (e.g. x.gif)" in warning[0]
    assert "(.txt)" in warning[0]
    if os.geteuid() != 0:  # root reads any folder
        assert "1 unreadable folders" in warning[0], warning[0]
    # an unreadable class folder is named as such, not as one without images
    (data / "train" / "class_1").chmod(0)
    try:
        if os.geteuid() != 0:
            with pytest.raises(MaekitError, match=r"class_1 cannot be read \(permissions\)"):
                image_folder(data / "train")
    finally:
        (data / "train" / "class_1").chmod(0o755)


def case_a_key_given_twice_in_a_config(tmp: Path) -> None:
    (tmp / "c.yaml").write_text("blr: 1.0e-3\nepochs: 2\nblr: 5.0e-4\n")
    with pytest.raises(MaekitError, match="key 'blr' appears twice"):
        read_mapping(str(tmp / "c.yaml"))
    (tmp / "c.json").write_text('{"epochs": 2, "epochs": 3}')
    with pytest.raises(MaekitError, match="key 'epochs' appears twice"):
        read_mapping(str(tmp / "c.json"))
    data = write_image_folder(tmp / "data", per_class=4)
    r = run_cli_in_process(pretrain(data, tmp / "run", "--config", str(tmp / "c.yaml")), tmp)
    one_line_refusal(r, "appears twice (line 3)")


CASES = {
    "7-val-class-names-differ": case_val_class_names_differ_from_train,
    "8-accum-iter-above-epoch-steps": case_accum_iter_above_the_steps_of_an_epoch,
    "10-symlink-loop": case_symlink_loop_in_a_class_folder,
    "11-one-class": case_one_class_is_refused,
    "12-mask-ratio-no-visible-patch": case_mask_ratio_leaving_no_visible_patch,
    "13-float-int32-tiffs": case_float_and_int32_tiffs_never_load_silently,
    "14-int8-weights-cli": case_int8_weights_through_the_cli,
    "15-flipped-bytes-checksum": case_flipped_bytes_in_a_checkpoint,
    "16-explicit-resume-other-flags": case_explicit_resume_with_other_flags_in_the_same_folder,
    "17-warmup-above-epochs": case_warmup_above_epochs_is_said,
    "18-output-dir-inside-data": case_output_dir_inside_the_data,
    "19-manifest-under-counts": case_a_manifest_that_under_counts,
    "20-max-pixels-above-pillow": case_max_pixels_above_pillows_own_limit,
    "21-skipped-files-counted": case_skipped_files_and_folders_are_counted,
    "22-duplicate-config-key": case_a_key_given_twice_in_a_config,
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_never_silently_wrong(case: str, tmp_path: Path) -> None:
    CASES[case](tmp_path)
