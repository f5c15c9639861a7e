"""The pre-training watch: a fixed held-out split, val_loss under fixed per-image masks, gray grids."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from maekit.analysis.visualize import render_grid, show_gray
from maekit.analysis.watch import ReconstructionWatch, holdout_indices
from maekit.engine.distributed import DistEnv
from maekit.engine.precision import resolve_precision
from maekit.engine.progress import RunRecorder
from maekit.models import create_model

CPU = torch.device("cpu")


def test_holdout_is_fixed_disjoint_and_complete():
    train, held = holdout_indices(1000, 0.05)
    assert len(held) == 50 and len(train) == 950
    assert sorted(train + held) == list(range(1000))
    assert holdout_indices(1000, 0.05) == (train, held)  # the same every time (not --seed)
    assert held != list(range(50))  # a random choice, not the first files (sorted by class)
    assert len(holdout_indices(3, 0.01)[1]) == 1  # at least one image


def watch_for(
    batch_size: int,
    tmp_path,
    epochs: int = 4,
    val_freq: int = 1,
    vis_freq: int = 0,
    model: str = "mae_vit_tiny_patch16",
    record: bool = False,
) -> ReconstructionWatch:
    torch.manual_seed(0)
    net = create_model(model, img_size=16, patch_size=4, norm_pix_loss=True)
    imgs = torch.randn(11, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cfg = SimpleNamespace(
        batch_size=batch_size,
        mask_ratio=0.75,
        epochs=epochs,
        val_freq=val_freq,
        vis_freq=vis_freq,
        vis_images=4,
        model=model,
    )
    recorder = RunRecorder(str(tmp_path), None, enabled=record)
    return ReconstructionWatch(
        cfg,
        net,
        TensorDataset(imgs, torch.zeros(11)),
        DistEnv(0, 1, 0, CPU),
        resolve_precision("none", CPU),
        recorder,
        tmp_path,
        0,
    )


def test_val_loss_uses_fixed_per_image_masks(tmp_path):
    a, b = watch_for(3, tmp_path), watch_for(11, tmp_path)
    first = a.val_loss()
    assert first == pytest.approx(a.val_loss(), abs=0)  # the same masks every epoch
    assert first == pytest.approx(b.val_loss(), rel=1e-6)  # whatever the batch composition
    torch.manual_seed(123)  # the global RNG (training's) neither matters nor is needed
    assert a.val_loss() == pytest.approx(first, abs=0)
    # ...and the masks are random per image, not one mask for all
    assert not torch.equal(a.noise[0].argsort(), a.noise[1].argsort())
    with torch.no_grad():  # a changed model gives a changed loss: it measures the model
        a.model.decoder_pred.bias.add_(0.5)
    assert a.val_loss() != pytest.approx(first)


def test_val_loss_epochs(tmp_path):
    w = watch_for(4, tmp_path, epochs=5, val_freq=2)
    assert [bool(w(e)) for e in range(5)] == [
        False,
        True,
        False,
        True,
        True,
    ]  # every 2nd and the last


def test_gray_originals_get_a_gray_reconstruction():
    rng = np.random.default_rng(0)
    gray = np.repeat(rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8), 3, axis=-1)
    tinted = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    out = show_gray(gray, tinted)
    assert (out == out[..., :1]).all()
    assert np.abs(out[..., 0].astype(int) - tinted.mean(axis=-1)).max() <= 0.5
    colour = gray.copy()
    colour[0, 0, 0, 2] += 1  # one coloured pixel: shown as predicted
    assert np.array_equal(show_gray(colour, tinted), tinted)


@pytest.mark.parametrize("model", ["mae_vit_tiny_patch16", "convmae_convvit_small_patch16"])
def test_grids_at_vis_freq_and_last_epoch(tmp_path, model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w = watch_for(4, tmp_path, epochs=3, val_freq=1, vis_freq=2, model=model, record=True)
    logs = [w(e) for e in range(3)]
    w.recorder.close()
    assert all(np.isfinite(x["val_loss"]) for x in logs)
    assert sorted(p.name for p in tmp_path.glob("reconstruction-*.png")) == [
        "reconstruction-1.png",
        "reconstruction-2.png",
    ]
    assert w.last_grid == tmp_path / "reconstruction-2.png"
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("reconstruction")] == [1, 2]


@pytest.mark.parametrize("window, spread", [(["auto"], True), (["full"], False)])
def test_grids_of_dark_four_band_data(tmp_path, monkeypatch, window, spread):
    """12-bit data in 16-bit files, 4 bands: the grid un-normalises with the run's statistics,
    draws bands 3, 2, 1 as R, G, B, and (auto, not 8-bit) stretches the 1-99th percentiles."""
    import maekit.analysis.watch as watch

    drawn = {}

    def capture(columns, title, scale):
        drawn.update(columns=columns, title=title)
        return render_grid(columns, title, scale)

    monkeypatch.setattr(watch, "render_grid", capture)
    rng = np.random.default_rng(0)
    levels = np.array([1000, 1500, 2000, 2500]).reshape(1, 4, 1, 1)  # band b around levels[b]
    raw = levels + rng.integers(-400, 400, (3, 4, 16, 16))
    px = torch.from_numpy(raw / 65535.0).float()
    mean, std = [0.03] * 4, [0.02] * 4
    normalised = (px - 0.03) / 0.02
    torch.manual_seed(0)
    net = create_model("mae_vit_tiny_patch16", img_size=16, patch_size=4, in_chans=4)
    cfg = SimpleNamespace(
        batch_size=3, mask_ratio=0.75, epochs=1, val_freq=0, vis_freq=1, vis_images=3,
        model="mae_vit_tiny_patch16", mean=mean, std=std, max_value=65535.0,
        vis_channels=[3, 2, 1], vis_window=window,
    )  # fmt: skip
    w = ReconstructionWatch(
        cfg,
        net,
        TensorDataset(normalised, torch.zeros(3)),
        DistEnv(0, 1, 0, CPU),
        resolve_precision("none", CPU),
        RunRecorder(str(tmp_path), None, enabled=False),
        tmp_path,
        0,
    )
    assert w.grid(0) == tmp_path / "reconstruction-0.png"
    original = drawn["columns"][0]
    assert original.shape == (3, 16, 16, 3)
    means = original.reshape(-1, 3).astype(float).mean(axis=0)
    assert means[0] > means[1] > means[2]  # R = band 3 (brightest), B = band 1
    if spread:
        assert len(np.unique(original)) > 100
        assert "channels 3,2,1, window 1-99th pct = " in drawn["title"]
    else:
        assert len(np.unique(original)) <= 18 and original.max() <= 17
        assert drawn["title"].endswith("channels 3,2,1, window full = 0..1")
    # the model's input, un-normalised, is what the original column shows
    lo, hi = (0.0, 1.0) if not spread else np.percentile(px[:, [3, 2, 1]].numpy(), [1, 99])
    expected = ((px[:, [3, 2, 1]] - lo) / (hi - lo)).clamp(0, 1) * 255
    got = torch.from_numpy(original).permute(0, 3, 1, 2).float()
    assert (got - expected.round()).abs().max() <= 1
