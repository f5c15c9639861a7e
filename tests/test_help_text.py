"""`maekit COMMAND --help`: every flag states its default once, and truthfully."""

from __future__ import annotations

import argparse

import pytest

from maekit.cli import COMMANDS, build_parser
from maekit.config.flags import HelpFormatter


def subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def helps(name: str) -> dict[str, str]:
    """Flag -> its help line as printed (whitespace joined)."""
    fmt = HelpFormatter("maekit")
    return {
        a.option_strings[0]: " ".join(fmt._expand_help(a).split())
        for a in subparser(name)._actions
        if a.option_strings and a.help != argparse.SUPPRESS
    }


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_flag_states_its_default_at_most_once(name: str) -> None:
    text = subparser(name).format_help()
    for bad in ("(default: None)", "(default: False)", "(default: True)", "(default: )"):
        assert bad not in " ".join(text.split()), (name, bad)
    for flag, line in helps(name).items():
        assert line.count("(default") + line.count("; default") <= 1, (name, flag, line)


def test_flags_whose_help_states_the_default_get_no_second_one() -> None:
    h = helps("finetune")
    assert h["--clip_grad"].endswith("(default: no clipping)")
    assert h["--log_dir"] == "TensorBoard directory (default: output_dir)"
    assert h["--nb_classes"].endswith("(default: taken from the dataset; checked against it)")
    assert h["--lr"].count("default") == 1
    # A plain value still gets one, switches say on/off.
    assert h["--epochs"].endswith("(default: 50)")
    assert h["--dist_eval"].endswith("(default: off)") and h["--auto_resume"].endswith(
        "(default: on)"
    )


def test_the_pooling_default_is_the_phases() -> None:
    ft, lp = helps("finetune"), helps("linprobe")
    assert ft["--global_pool"].endswith("(default: on)")
    assert ft["--cls_token"].endswith("(default: off: global pool)")
    assert lp["--global_pool"].endswith("(default: off: the cls token)")
    assert lp["--cls_token"].endswith("(default: on)")
    # ... and that is what the phases resolve to with neither flag given.
    from maekit.config import FinetuneConfig, LinprobeConfig

    assert FinetuneConfig().use_global_pool() and not LinprobeConfig().use_global_pool()


def test_visualize_help_offers_only_what_it_takes() -> None:
    """visualize needs a pre-training checkpoint's decoder and has no --random_init."""
    text = " ".join(subparser("visualize").format_help().split())
    assert "--random_init" not in text
    assert "fine-tun" not in text and "linear-probe" not in text
    assert "pre-training (MAE / ConvMAE) checkpoint with its decoder" in text
    # the commands that do take both kinds still say so
    assert "fine-tuning/linear-probe" in helps("extract")["--checkpoint"]
