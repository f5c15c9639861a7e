"""Boolean switches: --X and --no_X both exist for every switch of every command, the last one
given wins (on the command line and over a --config file), and --help lists both forms."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from maekit.cli import COMMANDS, build_parser, main
from maekit.config.flags import base_type, config_from_args

# Bare arguments for commands that require them (``maekit shard SRC DST``, ``maekit plot DIR``):
# the value is never used, the parse only needs one.
POSITIONAL = "x"


def switches(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if base_type(hints[f.name]) is bool]


def positionals(cls: type) -> list[str]:
    return [POSITIONAL for f in dataclasses.fields(cls) if f.metadata.get("positional")]


CASES = [
    pytest.param(command, name, id=f"{command}-{name}")
    for command, (cls, _, _) in sorted(COMMANDS.items())
    for name in switches(cls)
]


def parse(command: str, *argv: str):
    cls = COMMANDS[command][0]
    ns = build_parser().parse_args([command, *positionals(cls), *argv])
    return config_from_args(cls, ns)


def test_every_command_has_switches_to_test() -> None:
    # the parametrisation below would pass vacuously for a command parsed without its switches
    assert {c for c, (cls, _, _) in COMMANDS.items() if switches(cls)} >= {
        "pretrain",
        "finetune",
        "linprobe",
    }
    assert len(CASES) > 30


@pytest.mark.parametrize(("command", "name"), CASES)
def test_the_last_of_on_and_off_wins(command: str, name: str) -> None:
    assert getattr(parse(command, f"--{name}", f"--no_{name}"), name) is False
    assert getattr(parse(command, f"--no_{name}", f"--{name}"), name) is True
    # repeated and alternating: still the last
    assert getattr(parse(command, f"--{name}", f"--no_{name}", f"--{name}"), name) is True


@pytest.mark.parametrize(("command", "name"), CASES)
def test_off_on_the_command_line_beats_on_in_the_config_file(
    command: str, name: str, tmp_path
) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(f"{name}: true\n")
    cls = COMMANDS[command][0]
    argv = [command, *positionals(cls), "--config", str(f)]
    from maekit.config.files import flag_values, read_mapping

    data, spec = read_mapping(str(f))
    parser = build_parser({command: flag_values(data, cls, command, spec)})
    assert getattr(config_from_args(cls, parser.parse_args(argv)), name) is True
    assert getattr(config_from_args(cls, parser.parse_args([*argv, f"--no_{name}"])), name) is False


@pytest.mark.parametrize(("command", "name"), CASES)
def test_help_lists_both_forms_on_one_line(command: str, name: str) -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices[command].format_help()
    assert f"  --{name}, --no_{name}\n" in text or f"  --{name}, --no_{name} " in text


@pytest.mark.parametrize("command", ["finetune", "linprobe"])
def test_the_later_pooling_switch_wins(command: str) -> None:
    def pool(*argv: str) -> bool:
        cfg = parse(command, *argv)
        cfg.validate()  # the two are never both on, so never refused
        return cfg.use_global_pool()

    assert pool("--cls_token", "--global_pool") is True
    assert pool("--global_pool", "--cls_token") is False
    assert pool("--global_pool", "--no_global_pool") is False  # not the mean: the cls token
    assert pool("--cls_token", "--no_cls_token") is True
    # neither given: the phase's default
    assert pool() is (command == "finetune")


def test_the_pooling_pair_in_a_file_still_yields_to_the_command_line(tmp_path, capsys) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("cls_token: true\n")
    argv = ["linprobe", "--config", str(f), "--global_pool", "--print_config"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "global_pool: true" in out and "cls_token: false" in out


def test_convert_switches_too() -> None:
    def ns(*argv: str) -> argparse.Namespace:
        return build_parser().parse_args(["convert", "IN", "OUT", "--to", "timm", *argv])

    assert ns().global_pool is None  # neither: the checkpoint's own pooling
    assert ns("--cls_token", "--global_pool").global_pool is True
    assert ns("--global_pool", "--cls_token").global_pool is False
    assert ns("--force", "--no_force").force is False and ns("--no_force", "--force").force
    assert ns("--encoder_only", "--no_encoder_only").encoder_only is False
