"""Config fields: :func:`opt` (a dataclass field with its flag's help) and the checks and
help texts several configs share."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field

from ..errors import MaekitError


def opt(
    default,
    help: str,
    choices: tuple | None = None,
    flag_aliases: tuple[str, ...] = (),
    positional: bool = False,
    nargs: str | None = None,
    resumable: bool = False,
):
    """A config field with its CLI help text (and optional choices / extra flag names).

    ``resumable``: a rerun may change it and still continue the run in its --output_dir (more
    --epochs; where and how it runs and reports). Every other field shapes the model, the
    optimisation or the data the checkpoint was trained with, so a rerun that changes one is
    refused (:func:`maekit.engine.run.resume_conflicts`).

    ``positional``: read from the bare command-line arguments: a list field takes one or more
    (``maekit plot DIR...``), any other field exactly one (``maekit shard SRC DST``).
    ``nargs``: argparse's, for a scalar field that also takes several values (``--input_size``).
    """
    meta = {
        "help": help,
        "choices": choices,
        "aliases": flag_aliases,
        "positional": positional,
        "nargs": nargs,
        "resumable": resumable,
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
