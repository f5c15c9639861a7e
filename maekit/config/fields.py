"""Config fields: :func:`opt` (a dataclass field with its flag's help) and the checks and
help texts several configs share."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..errors import MaekitError


def opt(
    default,
    help: str,
    choices: tuple | None = None,
    flag_aliases: tuple[str, ...] = (),
    positional: bool = False,
    nargs: str | None = None,
    resumable: bool = False,
    opposite: str | None = None,
):
    """A config field with its CLI help text (and optional choices / extra flag names).

    ``resumable``: a rerun may change it and still continue the run in its --output_dir (more
    --epochs; where and how it runs and reports). Every other field shapes the model, the
    optimisation or the data the checkpoint was trained with, so a rerun that changes one is
    refused (:func:`maekit.engine.run.resume_conflicts`).

    ``positional``: read from the bare command-line arguments: a list field takes one or more
    (``maekit plot DIR...``), any other field exactly one (``maekit shard SRC DST``).
    ``nargs``: argparse's, for a scalar field that also takes several values (``--input_size``).
    ``opposite``: for a switch, the switch it excludes (one choice stored as two fields): on the
    command line each turns the other off, so the later one wins.
    """
    meta = {
        "help": help,
        "choices": choices,
        "aliases": flag_aliases,
        "positional": positional,
        "nargs": nargs,
        "resumable": resumable,
        "opposite": opposite,
    }
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def resumable_fields(cls: type) -> frozenset[str]:
    """The fields of config class ``cls`` a rerun may change (``opt(..., resumable=True)``)."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable"))


INPUT_SIZE_HELP = "image size in pixels: one number (square) or two (height width)"


def image_size_value(value):
    """``--input_size``: [S] or S -> S, [H, W] -> [H, W] (H == W -> H), None stays None.

    A list, not a tuple, so config.json and checkpoint args round-trip through JSON unchanged.
    """
    if isinstance(value, list | tuple):
        value = [int(v) for v in value]
        if len(value) == 1 or (len(value) == 2 and value[0] == value[1]):
            return value[0]
    return value


def check_image_size(value, flag: str = "--input_size") -> None:
    """One clear line for anything but one positive number or two (height width)."""
    if value is None:
        return
    values = value if isinstance(value, list | tuple) else [value]
    if len(values) > 2:
        raise MaekitError(
            f"{flag} takes one number (square) or two (height width), got {len(values)}: "
            f"{' '.join(map(str, values))}"
        )
    if any(v <= 0 for v in values):
        raise MaekitError(f"{flag} must be positive, got {' '.join(map(str, values))}")


MEAN_HELP = (
    "normalisation mean, one value per input channel (default: ImageNet's, averaged for "
    "one channel; `maekit stats` measures your data's)"
)
STD_HELP = "normalisation std, one value per input channel (default: ImageNet's, as --mean)"
IN_CHANS_HELP = (
    "input channels (bands): 3 (RGB) or 1 (gray) for 8-bit images; any number for "
    "full-precision files (--pixels), which must hold exactly this many bands"
)
PIXELS_HELP = (
    "how files are read: 8bit (Pillow RGB/gray, the official pipeline), full (16-bit, float, "
    "N-band TIFF/PNG/.npy at their precision, scaled by 1/--max_value), auto (full when the "
    "first files need it; see docs/own-images.md)"
)
MAX_VALUE_HELP = (
    "full-precision pixels are divided by this (default: the maximum of the files' integer "
    "type, 65535 for 16 bits; floats as they are); e.g. 4095 for 12-bit data in 16-bit files"
)
GRAY_TO_RGB_HELP = "full precision: repeat a gray file's band to 3 channels (--in_chans 3)"
VFLIP_HELP = "also flip vertically (p 0.5) when training: for images with no 'up'"
ROT90_HELP = "also rotate by a random multiple of 90 degrees when training (square inputs)"


def check_pixels(pixels: str, max_value: float | None, input_size, rot90: bool) -> None:
    """--pixels, --max_value and --rot90, each in one line."""
    if pixels not in ("auto", "8bit", "full"):
        raise MaekitError(f"--pixels must be auto, 8bit or full, got {pixels!r}")
    if max_value is not None and not max_value > 0:
        raise MaekitError(f"--max_value must be a positive number, got {max_value}")
    if rot90 and input_size is not None and not isinstance(input_size, int):
        h, w = input_size
        if h != w:
            raise MaekitError(
                f"--rot90 turns images by quarter turns, which swaps height and width: it needs a "
                f"square --input_size, got {h} {w}; drop --rot90 (--vflip works on any size)"
            )


def check_stats(mean, std, in_chans: int | None) -> None:
    """--mean/--std: one value per channel, std positive; one line naming the fix otherwise."""
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is None:
            continue
        if in_chans is not None and len(values) != in_chans:
            raise MaekitError(
                f"{flag} has {len(values)} value{'s' if len(values) != 1 else ''} but the model takes "
                f"{in_chans} input channel{'s' if in_chans != 1 else ''} (--in_chans): give one value "
                "per channel (`maekit stats --data_path DIR` prints them)"
            )
        if flag == "--std" and any(v <= 0 for v in values):
            raise MaekitError(f"--std values must be positive, got {' '.join(map(str, values))}")


def check_finite(cfg: object) -> None:
    """Every float flag is a finite number: argparse's float() accepts 'nan' and 'inf', and a
    non-finite lr, decay or clip would train to NaN weights (or fail deep inside torch)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for x in value if isinstance(value, list | tuple) else (value,):
            if isinstance(x, float) and not math.isfinite(x):
                raise MaekitError(f"--{f.name} must be a finite number, got {x}")


# --- how the reconstruction grids show pixels (maekit.analysis.display) ---
VIS_CHANNELS_HELP = (
    "the grids show 1 channel (gray) or 3 (R G B), by index, e.g. 3 2 1 for bands 4-3-2 of a "
    "satellite image (default: 0 1 2 for 3 or more channels, 0 for fewer)"
)
VIS_WINDOW_HELP = (
    "pixel range the grids map to black..white: 'auto' (full for 8-bit data, else pct 1 99), "
    "'full' (0..1, the whole pixel scale), 'pct A B' (the A-th..B-th percentile of the shown "
    "channels of the original images, the same window for the reconstructions) or 'LO HI' "
    "(pixel values on the model's scale, value / max_value) (default: auto)"
)


@dataclass(frozen=True)
class VisWindow:
    """A parsed ``--vis_window``: ``kind`` 'auto', 'full', 'pct' (``lo``/``hi`` percentiles,
    0..100) or 'fixed' (``lo``/``hi`` pixel values)."""

    kind: str
    lo: float = 0.0
    hi: float = 1.0


def vis_window(values: list[str] | str | None, flag: str = "--vis_window") -> VisWindow:
    """``--vis_window`` words -> a :class:`VisWindow` (None: 'auto'); one line naming the
    accepted forms otherwise."""
    if values is None:
        return VisWindow("auto")
    words = [values] if isinstance(values, str) else [str(v) for v in values]
    forms = "give auto, full, pct A B (percentiles, e.g. pct 1 99) or LO HI (pixel values)"
    got = " ".join(words) or "(nothing)"
    head = words[0].lower() if words else ""
    if head in ("auto", "full") and len(words) == 1:
        return VisWindow(head)
    numbers = words[1:] if head == "pct" else words
    try:
        lo, hi = (float(w) for w in numbers)
    except ValueError:  # not two words, or not numbers
        raise MaekitError(f"{flag} {got}: {forms}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise MaekitError(f"{flag} {got}: the window needs two finite numbers, low < high")
    if head == "pct":
        if not 0.0 <= lo < hi <= 100.0:
            raise MaekitError(f"{flag} {got}: percentiles are in 0..100, low < high")
        return VisWindow("pct", lo, hi)
    return VisWindow("fixed", lo, hi)


def default_vis_channels(in_chans: int) -> list[int]:
    """What the grids show without ``--vis_channels``: the first three channels as R, G, B
    (RGB images as they are), or channel 0 as gray when there are fewer than three."""
    return [0, 1, 2] if in_chans >= 3 else [0]


def check_vis_channels(
    channels: list[int] | None, in_chans: int | None, flag: str = "--vis_channels"
) -> None:
    """1 or 3 channel indices, each in 0..in_chans-1 (``in_chans`` None: the count only)."""
    if channels is None:
        return
    shown = " ".join(map(str, channels))
    if len(channels) not in (1, 3):
        raise MaekitError(
            f"{flag} {shown}: give 1 channel index (gray) or 3 (R G B), got {len(channels)}"
        )
    if in_chans is None:
        return
    bad = [c for c in channels if not 0 <= c < in_chans]
    if bad:
        valid = "0" if in_chans == 1 else f"0..{in_chans - 1}"
        raise MaekitError(
            f"{flag} {shown}: channel {bad[0]} does not exist; the model has {in_chans} "
            f"channel{'s' if in_chans != 1 else ''}, valid indices are {valid}"
        )
