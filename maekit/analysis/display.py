"""Pixels a person can look at: any channel count and any value range as 8-bit RGB.

The reconstruction grids (``maekit visualize`` and the pre-training watch) draw un-normalised
pixels, on the model's scale (value / max_value: 0..1 for 8-bit images), through a display
window ``lo..hi`` mapped to black..white. ``--vis_channels`` picks the channels drawn: one
(gray) or three (red, green, blue) of the C the model reads, e.g. ``3 2 1`` for a true-colour
picture of a 4-band (B, G, R, NIR) satellite image. ``--vis_window`` picks the window:

- ``full``: 0..1, the whole pixel scale. 8-bit images are drawn exactly as they are.
- ``pct A B``: the A-th and B-th percentiles of the shown channels of the *original* images,
  one window for the whole set (the channels keep their relative brightness), applied to the
  reconstructions too, so that the columns compare. 12-bit data in 16-bit files fills only
  0..0.0625 of the scale: black in ``full``, the full grey range here.
- ``LO HI``: a fixed window, in pixel values on the model's scale.
- ``auto`` (the default): ``full`` for 8-bit data (``max_value`` 255, as the 8-bit path and
  every run before full precision read their files), ``pct 1 99`` otherwise. So an ordinary
  RGB or gray run draws the picture it always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config.fields import VisWindow, default_vis_channels
from ..data.transforms import resolve_stats

AUTO_PCT = (1.0, 99.0)  # auto's window for data that is not 8-bit
EIGHT_BIT_MAX = 255.0


def is_eight_bit(max_value: float | None) -> bool:
    """Data on the 8-bit scale: ``max_value`` 255, or none recorded (runs before full precision
    read 8-bit images only)."""
    return max_value is None or float(max_value) == EIGHT_BIT_MAX


@dataclass(frozen=True)
class ShownWindow:
    """The window a grid was drawn with, and how it was chosen (for the figure title)."""

    lo: float
    hi: float
    how: str  # 'full', '1-99th pct', 'fixed', ...

    def describe(self) -> str:
        return f"window {self.how} = {self.lo:.3g}..{self.hi:.3g}"


def _pct_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}th pct"


def resolve_window(
    window: VisWindow,
    reference: torch.Tensor,
    channels: Sequence[int],
    eight_bit: bool = True,
) -> ShownWindow:
    """The window of ``window`` for images ``reference`` (N, C, H, W), un-normalised: its
    percentiles are taken over the ``channels`` shown, of all N images together. A percentile
    window with nothing in it (a constant set) widens to the set's min..max, then to 0..1."""
    kind, lo, hi = window.kind, window.lo, window.hi
    if kind == "auto":
        if eight_bit:
            kind = "full"
        else:
            kind, (lo, hi) = "pct", AUTO_PCT
    if kind == "full":
        return ShownWindow(0.0, 1.0, "full")
    if kind == "fixed":
        return ShownWindow(lo, hi, "fixed")
    values = reference[:, list(channels)].detach().float().cpu().numpy().ravel()
    values = values[np.isfinite(values)]
    name = _pct_name(lo, hi)
    if values.size == 0:
        return ShownWindow(0.0, 1.0, f"full ({name} of no finite pixels)")
    p_lo, p_hi = (float(v) for v in np.percentile(values, [lo, hi]))
    if p_hi > p_lo:
        return ShownWindow(p_lo, p_hi, name)
    v_lo, v_hi = float(values.min()), float(values.max())
    if v_hi > v_lo:
        return ShownWindow(v_lo, v_hi, f"min..max ({name} empty)")
    return ShownWindow(0.0, 1.0, f"full (constant images: {v_lo:.3g})")


def to_display(px: torch.Tensor, channels: Sequence[int], window: ShownWindow) -> np.ndarray:
    """Un-normalised pixels (N, C, H, W) -> (N, H, W, 3) uint8: ``channels`` (1: gray, repeated
    to R = G = B; 3: R, G, B) mapped ``window.lo..window.hi`` -> 0..255, clamped, rounded.

    With the window 0..1 this is exactly the grids' old ``clamp(0, 1) * 255`` (x - 0 and x / 1
    are exact in floating point), so 8-bit pictures keep every value."""
    if len(channels) not in (1, 3):
        raise ValueError(f"show 1 or 3 channels, got {list(channels)}")
    x = px.detach().float().cpu()[:, list(channels)]
    x = torch.nan_to_num((x - window.lo) / (window.hi - window.lo), nan=0.0)
    out = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def unnormalize(imgs: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """Normalised model input (N, C, H, W) -> pixels on the model's scale (float32, CPU), with
    the run's ``mean``/``std`` (default: :func:`~maekit.data.transforms.normalization`'s)."""
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in resolve_stats(imgs.shape[1], mean, std))
    return imgs.float().cpu() * std + mean


def display_set(
    original: torch.Tensor,
    others: Sequence[torch.Tensor],
    channels: Sequence[int] | None,
    window: VisWindow,
    eight_bit: bool = True,
) -> tuple[np.ndarray, list[np.ndarray], str]:
    """(original, each of ``others``, as (N, H, W, 3) uint8; the caption) of un-normalised
    pixel sets: one window, resolved on the originals, for all, so the columns compare.
    ``channels`` None: :func:`~maekit.config.fields.default_vis_channels` of C. The caption
    reads e.g. ``channels 3,2,1, window 1-99th pct = 0.012..0.214``."""
    channels = list(channels) if channels is not None else default_vis_channels(original.shape[1])
    shown = resolve_window(window, original, channels, eight_bit)
    caption = f"channels {','.join(map(str, channels))}, {shown.describe()}"
    return (
        to_display(original, channels, shown),
        [to_display(x, channels, shown) for x in others],
        caption,
    )
