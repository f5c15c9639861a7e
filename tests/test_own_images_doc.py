"""docs/own-images.md, run: every `maekit` command of the page, in order, on small 4-band
uint16 and 12-bit gray data, with the model made tiny and the schedule cut to one epoch (the
only changes, listed in SMALL). The released file the page downloads is stood in for by the
official-format golden checkpoint (RGB, tests/golden/official_mae), under the official name."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import REPO, run_cli_in_process
from tests.golden.models import IMG_SIZE, register_golden_models
from tests.test_docs_commands import maekit_argv, shell_commands

PAGE = REPO / "docs" / "own-images.md"
OFFICIAL = REPO / "tests" / "golden" / "official_mae" / "checkpoint-1.pth"
pytestmark = pytest.mark.slow

# word -> replacement; flag -> its value(s) replaced (the page's sizes made CPU-test sized)
WORDS = {
    "mae_vit_base_patch16": "mae_vit_golden",
    "vit_base_patch16": "vit_golden",
}
VALUES = {
    "--input_size": str(IMG_SIZE),
    "--epochs": "1",
    "--warmup_epochs": "0",
    "--batch_size": "8",
}


def small(args: list[str]) -> list[str]:
    out = []
    for i, a in enumerate(args):
        if i and args[i - 1] in VALUES:
            a = VALUES[args[i - 1]]
        a = WORDS.get(a, a).replace("checkpoint-99.pth", "checkpoint-0.pth")
        out.append(a)
    return out


def write_set(root: Path, bands: int, top: int) -> None:
    rng = np.random.default_rng(bands)
    for split, n in (("train", 40), ("val", 10)):
        for c, cls in enumerate(("a", "b")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            level = np.linspace(0.3, 0.7, bands)[:: 1 if c else -1]
            for i in range(n):
                x = np.clip(level + 0.25 * rng.random((IMG_SIZE, IMG_SIZE, bands)), 0, 1)
                x = (x * top).astype(np.uint16)
                tifffile.imwrite(folder / f"{i:03d}.tif", x if bands > 1 else x[..., 0])


def test_every_command_of_the_own_images_page_runs(tmp_path: Path) -> None:
    register_golden_models()
    shutil.copy(OFFICIAL, tmp_path / "mae_pretrain_vit_base.pth")
    write_set(tmp_path / "scenes", 4, 4000)
    write_set(tmp_path / "cells", 1, 4095)
    commands = [maekit_argv(c) for c in shell_commands(PAGE)]
    commands = [c for c in commands if c]
    assert len(commands) >= 12, commands  # the page's walk-through, not an empty page
    outputs = []
    for args in commands:
        r = run_cli_in_process(small(args), tmp_path)
        assert r.returncode == 0, f"{' '.join(args)}\n{r.stderr[-3000:]}"
        outputs.append(r.stdout)
    text = "\n".join(outputs)
    # what the page says the commands print
    assert "adapted patch_embed.proj 3 -> 4 input channels (kernels repeated, scaled by 3/4" in text
    assert "adapted patch_embed.proj 3 -> 1 input channels (sum of the 3 kernels" in text
    assert "scaled by 1/65535 (the maximum of uint16)" in text
    assert "scaled by 1/4095 (--max_value)" in text
    assert "in_chans=4" in text and "onnxruntime" in text.lower()
    for made in (
        "scenes_vit.safetensors",
        "scenes_vit.onnx",
        "scenes_hf",
        "scenes_recon.png",
        "cells_vit.onnx",
    ):
        assert (tmp_path / made).exists(), made
    import json

    pre = json.loads((tmp_path / "scenes_hf" / "preprocessor_config.json").read_text())
    assert len(pre["image_mean"]) == 4 and pre["rescale_factor"] == pytest.approx(1 / 65535)


def section_commands(page: Path, heading: str) -> list[list[str]]:
    """The maekit commands of one section (from ``heading`` to the next ``## ``) of a page."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading)) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    out = []
    for c in shell_commands(page):
        line = int(c.where.rsplit(":", 1)[1])
        if start < line <= end and maekit_argv(c):
            out.append(maekit_argv(c))
    return out


def test_the_released_weights_example_of_pretraining_md_runs(tmp_path: Path) -> None:
    """docs/pretraining.md's worked example (gray X-rays, 256 x 384, from the official ViT-B
    checkpoint with decoder), run: its five steps on small 8-bit gray PNGs, non-square."""
    from PIL import Image

    register_golden_models()
    shutil.copy(OFFICIAL, tmp_path / "mae_visualize_vit_base.pth")
    rng = np.random.default_rng(0)
    for root, splits in (("xray", ("train",)), ("xray_labeled", ("train", "val"))):
        for split in splits:
            for c, cls in enumerate(("normal", "effusion")):
                folder = tmp_path / "data" / root / split / cls
                folder.mkdir(parents=True)
                for i in range(40):  # 80 per split: one batch of the page's default 64
                    px = rng.integers(40 + 80 * c, 120 + 80 * c, (60, 90), dtype=np.uint8)
                    Image.fromarray(px).save(folder / f"{i}.png")
    commands = section_commands(REPO / "docs" / "pretraining.md", "## Start from released weights")
    assert [c[0] for c in commands] == [
        "stats",
        "pretrain",
        "visualize",
        "finetune",
        "convert",
        "convert",
    ]
    outputs = []
    for args in commands:
        args = [a.replace("/data/", "data/") for a in small(args)]
        i = args.index("--input_size") if "--input_size" in args else -1
        if i >= 0 and args[i + 2 : i + 3] == ["384"]:  # H W: the page's 256 x 384, made small
            args[i + 1 : i + 3] = ["32", "48"]
        r = run_cli_in_process(args, tmp_path)
        assert r.returncode == 0, f"{' '.join(args)}\n{r.stderr[-3000:]}"
        outputs.append(r.stdout)
    text = "\n".join(outputs)
    assert "adapted patch_embed.proj 3 -> 1 input channels (sum of the 3 kernels" in text
    assert "recomputed pos_embed and decoder_pos_embed for the 4x6 grid" in text
    assert (tmp_path / "xray_vit" / "config.json").exists()
    assert (tmp_path / "xray_enc" / "config.json").exists()
