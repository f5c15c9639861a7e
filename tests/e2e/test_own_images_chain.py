"""Your own images, end to end, on 1,100 files each: 4-band uint16 TIFFs, and 1-band 12-bit
content in 16-bit TIFFs. stats -> pretrain --init (from the official-format RGB golden
checkpoint) -> finetune -> finetune --eval -> convert --to timm and --to onnx; the exported
models' outputs equal maekit's in timm and in onnxruntime. Step times are printed (-s)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from tests.conftest import run_cli_in_process
from tests.golden.models import IMG_SIZE, register_golden_models

OFFICIAL = Path(__file__).resolve().parents[1] / "golden" / "official_mae" / "checkpoint-1.pth"
pytestmark = pytest.mark.slow


def write_set(root: Path, bands: int, top: int, per_class: dict[str, int]) -> None:
    """Two classes told apart by which bands are bright; values in 0..top (uint16 files)."""
    rng = np.random.default_rng(bands)
    for split, n in per_class.items():
        for c, cls in enumerate(("field", "water")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            level = np.linspace(0.3, 0.7, bands) if c == 0 else np.linspace(0.7, 0.3, bands)
            for i in range(n):
                x = level + 0.25 * rng.random((IMG_SIZE, IMG_SIZE, bands))
                x = (np.clip(x, 0, 1) * top).astype(np.uint16)
                tifffile.imwrite(folder / f"{i:04d}.tif", x if bands > 1 else x[..., 0])


def cli(args: list[str], tmp: Path, times: dict, step: str) -> str:
    t = time.perf_counter()
    r = run_cli_in_process(args, tmp)
    times[step] = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize(
    "bands, top, scale",
    [(4, 65535, []), (1, 4095, ["--max_value", "4095"])],
    ids=["4band", "gray12"],
)
def test_own_images_chain(tmp_path: Path, bands: int, top: int, scale: list[str]) -> None:
    import onnxruntime
    import timm

    register_golden_models()
    data = tmp_path / "data"
    write_set(data, bands, top, {"train": 500, "val": 50})
    times: dict[str, float] = {}
    common = ["--input_size", str(IMG_SIZE), "--in_chans", str(bands), "--num_workers", "2"]

    out = cli(
        ["stats", "--data_path", str(data), "--in_chans", str(bands), *scale],
        tmp_path,
        times,
        "stats",
    )
    assert "pixels: full precision" in out
    flags = next(line for line in out.splitlines() if line.startswith("--mean")).split()
    steps = ["--epochs", "1", "--warmup_epochs", "0", "--batch_size", "50", *common, *flags, *scale]

    out = cli(
        [
            "pretrain",
            "--model",
            "mae_vit_golden",
            "--init",
            str(OFFICIAL),
            "--data_path",
            str(data),
            "--output_dir",
            str(tmp_path / "pre"),
            "--vflip",
            "--rot90",
            *steps,
        ],
        tmp_path,
        times,
        "pretrain",
    )
    assert f"adapted patch_embed.proj 3 -> {bands} input channels" in out, out
    assert f"scaled by 1/{top}" in out

    out = cli(
        [
            "finetune",
            "--model",
            "vit_golden",
            "--finetune",
            str(tmp_path / "pre" / "checkpoint-0.pth"),
            "--data_path",
            str(data),
            "--output_dir",
            str(tmp_path / "ft"),
            "--aa",
            "none",
            "--blr",
            "5e-3",
            *steps,
        ],
        tmp_path,
        times,
        "finetune",
    )
    ckpt = tmp_path / "ft" / "checkpoint-0.pth"
    out = cli(
        [
            "finetune",
            "--eval",
            "--resume",
            str(ckpt),
            "--model",
            "vit_golden",
            "--data_path",
            str(data),
            "--output_dir",
            str(tmp_path / "eval"),
            *common,
            *flags,
            *scale,
        ],
        tmp_path,
        times,
        "eval",
    )
    acc = float(re.search(r"on the 100 test images: acc1 ([\d.]+)%", out).group(1))

    out = cli(
        ["convert", str(ckpt), str(tmp_path / "m.safetensors"), "--to", "timm"],
        tmp_path,
        times,
        "timm",
    )
    call = re.search(r"load it with: (timm\.create_model\(.*\))", out).group(1)
    assert f"in_chans={bands}" in call, call
    out = cli(
        ["convert", str(ckpt), str(tmp_path / "m.onnx"), "--to", "onnx"], tmp_path, times, "onnx"
    )

    from safetensors.torch import load_file

    from maekit import load_checkpoint
    from maekit.models import create_model

    state = load_checkpoint(ckpt, verbose=False)
    ours = create_model(  # the fine-tuned classifier, as maekit builds it
        "vit_golden",
        img_size=IMG_SIZE,
        in_chans=bands,
        num_classes=2,
        global_pool="fc_norm.weight" in state,
    )
    ours.load_state_dict(state, strict=True)
    ours.eval()
    theirs = eval(call, {"timm": timm}).eval()  # noqa: S307 - the line the command printed
    theirs.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    x = torch.randn(3, bands, IMG_SIZE, IMG_SIZE)
    with torch.no_grad():
        want = ours(x)
        torch.testing.assert_close(theirs(x), want, rtol=1e-5, atol=1e-5)
    sess = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    print(
        f"\n{bands}-band chain on 1100 files: eval acc1 {acc:.1f}%; seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
    )
