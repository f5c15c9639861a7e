"""`maekit bench --pipeline`: the phase's loader on a real folder."""

from __future__ import annotations

import json

import pytest
import torch

from maekit.bench.pipeline import measure_pipeline, phase_transform
from maekit.config import BenchConfig
from tests.conftest import run_cli, write_image_folder


@pytest.mark.parametrize("workers", [0, 1])
def test_pipeline_loads_the_asked_images(tmp_path, workers):
    data = write_image_folder(tmp_path / "data", classes=2, per_class=6)
    cfg = BenchConfig(
        pipeline=True,
        data_path=str(data),
        input_size=32,
        batch_size=4,
        num_workers=workers,
        images=20,
    )
    out = measure_pipeline(cfg)
    # 12 images: the first batch is untimed, then epochs wrap until 20 more are loaded
    assert out["images"] == 20
    assert out["img_per_s"] > 0 and out["num_workers"] == workers
    assert out["img_per_s_per_worker"] == pytest.approx(out["img_per_s"] / max(1, workers))


@pytest.mark.parametrize(
    "phase, dtype",
    # pre-training hands uint8 crops (normalised on the device); the others normalise in the
    # worker (fine-tuning's RandomErasing acts on the normalised image)
    [("pretrain", torch.uint8), ("finetune", torch.float32), ("linprobe", torch.float32)],
)
def test_phase_transforms_give_image_tensors(phase, dtype):
    from PIL import Image

    img = Image.new("RGB", (40, 36), (200, 30, 90))
    x = phase_transform(phase, 32)(img)
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and x.dtype == dtype


@pytest.mark.slow
def test_cli_pipeline_json(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=1, per_class=8)
    r = run_cli(
        [
            "bench",
            "--pipeline",
            "--data_path",
            str(data),
            "--input_size",
            "32",
            "--batch_size",
            "4",
            "--num_workers",
            "0",
            "--images",
            "8",
            "--json",
        ],
        tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["images"] == 8 and out["img_per_s"] > 0
