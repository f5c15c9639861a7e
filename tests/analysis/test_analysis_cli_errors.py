"""visualize / extract / knn with bad input: exit 2 and one clear line, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from maekit.cli import main

CASES = {
    "visualize_missing_checkpoint": (
        ["visualize", "--checkpoint", "nope.pth", "--images", "a.png"],
        "does not exist",
    ),
    "visualize_no_checkpoint": (["visualize", "--images", "a.png"], "--checkpoint is required"),
    "visualize_images_and_data": (
        ["visualize", "--checkpoint", "CKPT", "--images", "a.png", "--data_path", "d"],
        "either --images",
    ),
    "visualize_missing_image": (
        ["visualize", "--checkpoint", "CKPT", "--images", "a.png"],
        "a.png not found",
    ),
    "visualize_mask_ratio": (
        ["visualize", "--checkpoint", "CKPT", "--images", "a.png", "--mask_ratio", "1"],
        "--mask_ratio",
    ),
    # the checkpoint's model reads 3 channels: checked once it is loaded, before any image
    "visualize_vis_channels_out_of_range": (
        ["visualize", "--checkpoint", "CKPT", "--images", "a.png", "--vis_channels", "2", "1", "3"],
        "--vis_channels 2 1 3: channel 3 does not exist; the model has 3 channels, valid "
        "indices are 0..2",
    ),
    "visualize_vis_channels_count": (
        ["visualize", "--checkpoint", "CKPT", "--images", "a.png", "--vis_channels", "0", "1"],
        "give 1 channel index (gray) or 3 (R G B), got 2",
    ),
    "visualize_vis_window": (
        ["visualize", "--checkpoint", "CKPT", "--images", "a.png", "--vis_window", "0.5", "0.1"],
        "--vis_window 0.5 0.1: the window needs two finite numbers, low < high",
    ),
    "extract_missing_checkpoint": (["extract", "--checkpoint", "nope.pth"], "does not exist"),
    "extract_no_checkpoint": (["extract"], "--checkpoint is required"),
    "extract_bad_suffix": (
        ["extract", "--checkpoint", "CKPT", "--out", "f.pt"],
        ".safetensors or .npy",
    ),
    "extract_random_init_without_model": (["extract", "--random_init"], "needs --model"),
    "knn_missing_checkpoint": (["knn", "--checkpoint", "nope.pth"], "does not exist"),
    "knn_not_a_checkpoint": (["knn", "--checkpoint", "junk.pth"], "could not read checkpoint"),
    "knn_wrong_model": (
        ["knn", "--checkpoint", "CKPT", "--model", "mae_vit_small_patch16"],
        "pass the --model",
    ),
    "knn_bad_k": (["knn", "--checkpoint", "CKPT", "--k", "0"], "--k must be positive"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_clear_line(
    name: str, tmp_path: Path, mae_checkpoint, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    argv, message = CASES[name]
    argv = [str(mae_checkpoint) if a == "CKPT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"maekit {argv[0]}: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
