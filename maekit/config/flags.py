"""Command-line flags generated from a config dataclass, and the config built back from them."""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing


def base_type(tp) -> type:
    """int | None -> int; plain types unchanged."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


# A help text that already says what the default is ("(default: no clipping)", "; default
# blr * ...") gets no second "(default: ...)" from the formatter.
_STATES_DEFAULT = re.compile(r"\(default\b|[;,]\s*default\b|^default\b", re.IGNORECASE)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` once per flag: not after help that states its default, not for None
    (the help says what "not given" means), and on/off for switches."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or _STATES_DEFAULT.search(text)
            or default is None
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        if isinstance(default, bool):
            return f"{text} (default: {'on' if default else 'off'})"
        if isinstance(default, str) and default == "":
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


class Switch(argparse.Action):
    """A boolean field's ``--X`` (on) and ``--no_X`` (off): the last one given wins, on the
    command line as over a ``--config`` file, so a launch script's recipe switch can be undone
    by an argument appended after it. --help lists both forms on one line.

    ``opposite``: a field this one excludes (``--global_pool`` / ``--cls_token``, one choice of
    pooling stored as two switches): setting this switch sets that one to the other value, so
    the later of the pair wins too instead of the two being refused together.
    """

    def __init__(
        self,
        option_strings: list[str],
        dest: str,
        off: tuple[str, ...] = (),
        opposite: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.off = set(off)  # the --no_ forms among option_strings
        self.opposite = opposite

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        on = option_string not in self.off
        setattr(namespace, self.dest, on)
        if self.opposite:
            setattr(namespace, self.opposite, not on)


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per dataclass field: ``--name`` (plus ``--no_name`` for booleans).

    A class may define ``help_default(name) -> str | None`` for defaults the field cannot
    express (a phase-dependent choice such as the pooling); it is appended to that help.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = base_type(hints[f.name])
        meta = dict(f.metadata)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        stated = getattr(cls, "help_default", lambda _name: None)(f.name)
        if stated is not None:
            meta["help"] = f"{meta.get('help')} (default: {stated})"
        names = [f"--{f.name}", *meta.get("aliases", ())]
        if typing.get_origin(tp) is list:  # list[str] -> one or more values
            (elem,) = typing.get_args(tp)
            if meta.get("positional"):
                parser.add_argument(
                    f.name, type=elem, nargs="+", metavar=f.name.upper(), help=meta.get("help")
                )
            else:
                parser.add_argument(
                    *names,
                    dest=f.name,
                    type=elem,
                    nargs="+",
                    default=default,
                    metavar=f.name.upper(),
                    help=meta.get("help"),
                )
        elif tp is bool:
            off = tuple(f"--no_{n[2:]}" for n in names)
            parser.add_argument(
                *names,
                *off,
                dest=f.name,
                action=Switch,
                off=off,
                opposite=meta.get("opposite"),
                help=meta.get("help"),
            )
            parser.set_defaults(**{f.name: default})
        elif meta.get("positional"):  # one required bare argument (``maekit shard SRC DST``)
            parser.add_argument(f.name, type=tp, metavar=f.name.upper(), help=meta.get("help"))
        else:
            parser.add_argument(
                *names,
                dest=f.name,
                type=tp,
                default=default,
                choices=meta.get("choices"),
                help=meta.get("help"),
                nargs=meta.get("nargs"),
            )


def config_from_args(cls: type, ns: argparse.Namespace):
    """Build the phase config from parsed flags (only fields of ``cls``)."""
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})
