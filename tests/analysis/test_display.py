"""Drawing pixels of any channel count and range: channel choice, display windows, 8-bit as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maekit.analysis.display import (
    ShownWindow,
    display_set,
    is_eight_bit,
    resolve_window,
    to_display,
    unnormalize,
)
from maekit.analysis.visualize import to_uint8
from maekit.config.fields import VisWindow, check_vis_channels, default_vis_channels, vis_window
from maekit.errors import MaekitError

AUTO, FULL = VisWindow("auto"), VisWindow("full")


def twelve_bit(n: int = 2, chans: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A 12-bit camera in 16-bit files: values 0..4095 on the 0..65535 scale (dark)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 4096, (n, chans, size, size)).astype(np.float32)
    return torch.from_numpy(raw / 65535.0)


def levels(arr: np.ndarray) -> int:
    return len(np.unique(arr))


def test_percentile_window_spreads_dark_12_bit_data_full_does_not() -> None:
    px = twelve_bit()
    full, _, full_caption = display_set(px, [], None, FULL, eight_bit=False)
    spread, _, caption = display_set(px, [], None, AUTO, eight_bit=False)  # auto: pct 1 99
    assert levels(full) <= 17 and full.max() <= 16  # 4095/65535 of 255: almost black
    assert levels(spread) > 200 and spread.min() == 0 and spread.max() == 255
    assert full_caption == "channels 0, window full = 0..1"
    lo, hi = np.percentile(px.numpy(), [1, 99])
    assert caption == f"channels 0, window 1-99th pct = {lo:.3g}..{hi:.3g}"
    assert 0.0 < lo < hi < 0.0625
    explicit = display_set(px, [], None, vis_window(["pct", "1", "99"]), eight_bit=True)[0]
    assert np.array_equal(explicit, spread)  # pct applies whatever the data's bit depth


def test_reconstructions_get_the_originals_window() -> None:
    px = twelve_bit(chans=3)
    brighter = px * 1.5  # a reconstruction that is too bright must look too bright
    original, (recon,), caption = display_set(px, [brighter], [0, 1, 2], AUTO, eight_bit=False)
    shown = resolve_window(VisWindow("pct", 1, 99), px, [0, 1, 2])
    assert np.array_equal(recon, to_display(brighter, [0, 1, 2], shown))
    assert recon.astype(int).mean() > original.astype(int).mean() + 20
    assert (recon == 255).mean() > 0.2  # clipped at the originals' 99th percentile


def four_bands(values=(0.1, 0.2, 0.3, 0.4)) -> torch.Tensor:
    """Two 8x8 images whose band b is the constant values[b] (e.g. B, G, R, NIR)."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).expand(2, -1, 8, 8).clone()


def test_channels_pick_the_bands_in_rgb_order() -> None:
    px = four_bands()
    rgb, _, caption = display_set(px, [], [3, 2, 1], FULL, eight_bit=True)
    assert rgb.shape == (2, 8, 8, 3)
    assert (rgb.reshape(-1, 3) == [round(0.4 * 255), round(0.3 * 255), round(0.2 * 255)]).all()
    assert caption == "channels 3,2,1, window full = 0..1"
    stretched = display_set(px, [], [3, 2, 1], AUTO, eight_bit=False)[0].reshape(-1, 3)
    assert (stretched[:, 0] == 255).all() and (stretched[:, 2] == 0).all()  # band 3 R, band 1 B
    assert 0 < stretched[0, 1] < 255
    gray = display_set(px, [], [2], FULL)[0]
    assert (gray == round(0.3 * 255)).all() and gray.shape == (2, 8, 8, 3)
    first = display_set(px, [], None, FULL)[0]  # default: channels 0, 1, 2
    assert (first.reshape(-1, 3) == [round(0.1 * 255), round(0.2 * 255), round(0.3 * 255)]).all()


@pytest.mark.parametrize("chans", [3, 1])
def test_8bit_display_is_unchanged(chans: int) -> None:
    """auto on 8-bit data is the old picture: to_uint8 of the normalised tensor, bit for bit
    (reconstructions overshoot 0..1, so the clamp is exercised too)."""
    g = torch.Generator().manual_seed(0)
    normalised = torch.randn(3, chans, 16, 16, generator=g) * 1.5
    old = to_uint8(normalised)
    new, _, caption = display_set(unnormalize(normalised), [], None, AUTO, eight_bit=True)
    assert np.array_equal(new, np.repeat(old, 3, axis=-1) if chans == 1 else old)
    assert 0 < (old == 0).mean() < 0.5 and 0 < (old == 255).mean() < 0.5
    assert caption == f"channels {'0,1,2' if chans == 3 else '0'}, window full = 0..1"
    k = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16).expand(1, chans, -1, -1)
    assert np.array_equal(
        to_display(k / 255, list(range(chans)), ShownWindow(0, 1, "full"))[0, ..., 0],
        k[0, 0].numpy(),
    )


def test_fixed_window_and_constant_images() -> None:
    px = torch.linspace(0, 1, 64).view(1, 1, 8, 8)
    out = display_set(px, [], None, vis_window(["0.25", "0.75"]))[0][0, ..., 0].ravel()
    expected = ((px.ravel() - 0.25) / 0.5).clamp(0, 1) * 255
    assert np.array_equal(out, expected.round().to(torch.uint8).numpy())
    assert display_set(px, [], None, vis_window(["0.25", "0.75"]))[2].endswith("fixed = 0.25..0.75")
    # a constant set has an empty percentile window: drawn on the plain scale, not black
    flat = torch.full((1, 1, 4, 4), 0.5)
    shown = resolve_window(AUTO, flat, [0], eight_bit=False)
    assert (shown.lo, shown.hi) == (0.0, 1.0) and "constant" in shown.how
    assert (to_display(flat, [0], shown) == 128).all()
    # a few outliers over a constant background: the 1-99 window is empty, min..max is not
    spikes = torch.zeros(1, 1, 20, 20)
    spikes[0, 0, 0, :2] = 1.0
    shown = resolve_window(AUTO, spikes, [0], eight_bit=False)
    assert (shown.lo, shown.hi) == (0.0, 1.0) and shown.how.startswith("min..max")


def test_eight_bit_scale() -> None:
    assert is_eight_bit(None) and is_eight_bit(255.0) and is_eight_bit(255)
    assert not is_eight_bit(65535.0) and not is_eight_bit(4095.0) and not is_eight_bit(1.0)


@pytest.mark.parametrize(
    "words, parsed",
    [
        (["auto"], VisWindow("auto")),
        (["full"], VisWindow("full")),
        (["FULL"], VisWindow("full")),
        (["pct", "1", "99"], VisWindow("pct", 1.0, 99.0)),
        (["pct", "0", "100"], VisWindow("pct", 0.0, 100.0)),
        (["0.01", "0.2"], VisWindow("fixed", 0.01, 0.2)),
        (["-1", "2.5"], VisWindow("fixed", -1.0, 2.5)),
    ],
)
def test_vis_window_forms(words, parsed) -> None:
    assert vis_window(words) == parsed


@pytest.mark.parametrize(
    "words, message",
    [
        (["pct", "5"], "give auto, full, pct A B"),
        (["bright"], "give auto, full, pct A B"),
        (["full", "1"], "give auto, full, pct A B"),
        (["0.5", "0.1"], "low < high"),
        (["0", "inf"], "two finite numbers"),
        (["pct", "1", "101"], "percentiles are in 0..100"),
        ([], "--vis_window (nothing): give"),
    ],
)
def test_vis_window_refusals_name_the_forms(words, message) -> None:
    with pytest.raises(MaekitError, match="^--vis_window") as e:
        vis_window(words)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_vis_channels_checks() -> None:
    assert default_vis_channels(4) == [0, 1, 2] and default_vis_channels(3) == [0, 1, 2]
    assert default_vis_channels(2) == [0] and default_vis_channels(1) == [0]
    check_vis_channels([3, 2, 1], 4)
    check_vis_channels(None, 1)
    check_vis_channels([7], None)  # the count alone, before the channels are known
    with pytest.raises(MaekitError) as e:
        check_vis_channels([3, 2, 1], 3)
    assert str(e.value) == (
        "--vis_channels 3 2 1: channel 3 does not exist; the model has 3 channels, "
        "valid indices are 0..2"
    )
    with pytest.raises(MaekitError, match="the model has 1 channel, valid indices are 0$"):
        check_vis_channels([-1], 1)
    with pytest.raises(MaekitError, match="give 1 channel index .gray. or 3 .R G B., got 2"):
        check_vis_channels([0, 1], 4)
