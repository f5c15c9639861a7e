"""The default fine-tuning augmentation works at every magnitude, and a transform that does
fail stops the run with one line naming it and the flag that turns it off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm.data.auto_augment as timm_aa
from PIL import Image, ImageOps

from maekit.cli import main
from maekit.data import transforms as mt
from maekit.data.transforms import (
    CheckedCompose,
    TransformFailed,
    finetune_transform,
    posterize,
)
from tests.conftest import write_image_folder
from tests.golden.models import register_golden_models


def random_image(mode: str = "RGB", size: int = 28, seed: int = 0) -> Image.Image:
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def rand_augment(tf) -> timm_aa.RandAugment:
    (ra,) = [t for t in tf.transforms if isinstance(t, timm_aa.RandAugment)]
    return ra


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_posterize_increasing_at_max_magnitude_keeps_zero_bits(mode):
    """The default policy's op at magnitude 10 (its maximum): 0 bits kept = every pixel 0, what
    the TF reference computes (x >> 8 << 8) and Pillow < 13 returned."""
    (op,) = [o for o in rand_augment(finetune_transform(28)).ops if o.name == "PosterizeIncreasing"]
    assert op.aug_fn is posterize
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0  # the maximum, every time
    assert op.level_fn(10, op.hparams) == (0,)
    img = random_image(mode)
    out = op(img)
    assert out.mode == mode and out.size == img.size
    np.testing.assert_array_equal(np.asarray(out), (np.asarray(img) >> 8) << 8)
    assert np.asarray(out).max() == 0


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 8])
def test_posterize_other_levels_are_pillows(bits):
    img = random_image()
    expected = img if bits >= 8 else ImageOps.posterize(img, bits)
    assert np.array_equal(np.asarray(posterize(img, bits)), np.asarray(expected))


def test_default_recipe_over_thousands_of_draws():
    """About one draw in 500 reached posterize(img, 0) and crashed with Pillow 13."""
    tf = finetune_transform(28)
    img = random_image()
    for _ in range(3000):
        x = tf(img)
    assert x.shape == (3, 28, 28)


def _buggy_op(img, *args, **kwargs):
    raise ValueError("bits must be between or equal to 1 and 8")


def break_rand_augment(tf):
    """Every RandAugment op becomes a function that raises, as posterize did under Pillow 13.
    Each op is applied always (prob 1): with timm's 0.5 per op, one draw in four applied none
    and the test then depended on the global random state, i.e. on the test order."""
    for op in rand_augment(tf).ops:
        op.aug_fn = _buggy_op
        op.prob = 1.0
    return tf


def test_a_failing_step_is_named_with_its_flag():
    tf = break_rand_augment(finetune_transform(28))
    assert isinstance(tf, CheckedCompose)
    with pytest.raises(TransformFailed) as ei:
        tf(random_image())
    msg = str(ei.value)
    assert "\n" not in msg and "RandAugment (op " in msg and "--aa none turns it off" in msg
    assert "ValueError: bits must be between" in msg


def test_a_failing_step_in_a_data_worker_stops_the_run_and_keeps_the_checkpoint(
    tmp_path: Path, monkeypatch, capsys
):
    register_golden_models()
    data = tmp_path / "data"
    write_image_folder(data / "t", classes=2, per_class=8, size=(36, 36), seed=0)
    write_image_folder(data / "v", classes=2, per_class=2, size=(36, 36), seed=1)
    (data / "t" / "train").rename(data / "train")
    (data / "v" / "train").rename(data / "val")
    out = tmp_path / "run"
    args = [
        "finetune",
        "--model",
        "vit_golden",
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        "--input_size",
        "32",
        "--batch_size",
        "4",
        "--num_workers",
        "1",
        "--warmup_epochs",
        "0",
    ]
    assert main([*args, "--epochs", "1"]) == 0
    saved = {p.name: p.read_bytes() for p in out.glob("checkpoint-*.pth")}
    assert "checkpoint-0.pth" in saved
    capsys.readouterr()

    import maekit.phases.finetune as phase

    monkeypatch.setattr(
        phase,
        "finetune_transform",
        lambda *a, **k: break_rand_augment(mt.finetune_transform(*a, **k)),
    )
    assert main([*args, "--epochs", "2"]) == 2  # auto-resumes at epoch 1, then a worker fails
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("maekit finetune: error: the data transform RandAugment (op ")
    assert "--aa none turns it off" in err[0]
    assert {p.name: p.read_bytes() for p in out.glob("checkpoint-*.pth")} == saved
