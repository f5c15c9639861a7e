"""Config files for every command: YAML or JSON, a run's own ``config.json`` included.

A file holds flag names as keys (``batch_size: 64``, ``norm_pix_loss: true``). The CLI reads it
first and hands its values to argparse as defaults (``parser.set_defaults``), so any flag given
on the command line still wins, and the flags, names and help text stay those of the config
dataclasses. ``recipe:NAME`` names a file shipped in :mod:`maekit.recipes`.

Two top-level keys are not flags: ``recipe`` (what a shipped recipe describes: command, the
published run's process count, the top-1 it reported) and ``resolved`` (what a run's flags
resolved to, written into ``config.json``); both are read but never become flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path

from ..errors import MaekitError
from .flags import base_type

RECIPE_PREFIX = "recipe:"
NOT_FLAGS = ("recipe", "resolved")  # metadata keys, see the module docstring


MAX_ALIASES = 100  # a config needs few YAML aliases; a billion-laughs file has millions


MAX_VALUES = 100_000  # items of all values together, once aliases are expanded


def _too_big(data: object) -> bool:
    """Whether ``data`` holds more than MAX_VALUES items counted with repeats (stops early:
    a billion-laughs value costs MAX_VALUES steps, not its expansion)."""
    stack, seen = [data], 0
    while stack:
        x = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return True
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list | tuple):
            stack.extend(x)
    return False


def _unique_pairs(pairs: list) -> dict:
    """JSON objects with each key once: a repeated key is an error, not the last value."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {str(k)[:60]!r} appears twice")
        out[k] = v
    return out


def _strict_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML keeps the last one
    silently) and more than MAX_ALIASES aliases (bounded expansion)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise yaml.YAMLError(
                        f"more than {MAX_ALIASES} aliases (*name); write the values out"
                    )
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str) and key in seen:
                    raise yaml.YAMLError(
                        f"key {key[:60]!r} appears twice (line {key_node.start_mark.line + 1})"
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def read_mapping(spec: str) -> tuple[dict, str]:
    """(the file's top-level mapping, a name for messages) of ``--config FILE`` or ``recipe:NAME``."""
    if spec.startswith(RECIPE_PREFIX):
        from ..recipes import recipe_path

        path = recipe_path(spec[len(RECIPE_PREFIX) :])
    else:
        path = Path(spec)
        if not path.is_file():
            raise MaekitError(
                f"--config {spec}: no such file; give a .yaml/.json file or recipe:NAME "
                "(see `maekit recipes`)"
            )
    import yaml

    try:
        text = path.read_text()
        # JSON by suffix (a run's config.json); anything else as YAML, which JSON also is.
        if path.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        else:
            data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader)
    except (OSError, UnicodeDecodeError) as e:
        raise MaekitError(f"--config {spec}: cannot read it ({e})") from e
    except (ValueError, yaml.YAMLError) as e:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise MaekitError(f"--config {spec}: not valid {kind} ({' '.join(str(e).split())})") from e
    if data is None:
        data = {}
    if _too_big(data):
        raise MaekitError(
            f"--config {spec}: its values expand to more than {MAX_VALUES} items (aliases "
            "repeating aliases); write the values out"
        )
    if not isinstance(data, dict):
        raise MaekitError(
            f"--config {spec}: expected a mapping of flag names to values, got a {type(data).__name__}"
        )
    return data, spec


def _convert(name: str, tp, value, choices, spec: str):
    """One file value as the flag's type (what argparse would have produced), or an error."""
    bad = MaekitError(
        f"--config {spec}: {name}: expected {getattr(tp, '__name__', tp)}, got {value!r}"
    )
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if typing.get_origin(tp) is list:
        (elem,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad
        return [_convert(name, elem, v, None, spec) for v in value]
    if isinstance(value, bool | list | dict):
        raise bad
    try:
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            out = int(value)
        elif tp is float:
            out = float(value)  # also YAML 1.1's "1e-3", which it reads as a string
        else:
            out = tp(value)
    except (TypeError, ValueError) as e:
        raise bad from e
    if choices and out not in choices:
        raise MaekitError(
            f"--config {spec}: {name}: {out!r} is not one of {', '.join(map(str, choices))}"
        )
    return out


def flag_values(data: dict, cls: type, command: str, spec: str) -> dict:
    """The file's values for ``cls``'s flags, checked: unknown keys (with the nearest valid one),
    types, choices, and a recipe made for another command."""
    recipe = data.get("recipe")
    if isinstance(recipe, dict) and recipe.get("command") not in (None, command):
        raise MaekitError(
            f"--config {spec} is a `maekit {recipe['command']}` recipe; run "
            f"`maekit {recipe['command']} --config {spec}`"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields and k not in NOT_FLAGS]
    if unknown:
        parts = []
        for k in unknown:
            near = difflib.get_close_matches(str(k), list(fields), n=1)
            parts.append(f"{k!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise MaekitError(
            f"--config {spec}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(parts)}; `maekit {command} --help` lists the flags"
        )
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        if key in NOT_FLAGS:
            continue
        f = fields[key]
        if f.metadata.get("positional"):
            raise MaekitError(
                f"--config {spec}: {key} is a positional argument; give it on the command line"
            )
        optional = type(None) in typing.get_args(hints[key])
        if value is None:
            if not optional:
                raise MaekitError(f"--config {spec}: {key} cannot be null")
            out[key] = None
            continue
        if f.metadata.get("nargs") and isinstance(value, list):  # input_size: [height, width]
            out[key] = [_convert(key, base_type(hints[key]), v, None, spec) for v in value]
            continue
        out[key] = _convert(key, base_type(hints[key]), value, f.metadata.get("choices"), spec)
    return out


def dump_yaml(view: dict, header: str) -> str:
    """``view`` as YAML that ``--config`` reads back (``resolved`` is ignored there)."""
    import yaml

    return f"# {header}\n" + yaml.safe_dump(
        view, sort_keys=False, default_flow_style=False, width=100
    )
