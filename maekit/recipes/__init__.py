"""The published MAE / ConvMAE / PLSC recipes as config files (``--config recipe:NAME``).

Each ``NAME.yaml`` holds the flags of one results row plus a ``recipe`` block: the command,
the number of processes the published run used (``world_size``: batch_size x accum_iter x
world_size is the published effective batch), the ImageNet top-1 the source reports, and the
source. ``maekit recipes`` lists them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import MaekitError


def recipe_names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml")
    )


def recipe_path(name: str) -> Path:
    """The file of recipe ``name``; an error listing the recipes when there is none."""
    names = recipe_names()
    if name not in names:
        raise MaekitError(f"unknown recipe {name!r}; shipped recipes: {', '.join(names)}")
    return Path(str(resources.files(__name__) / f"{name}.yaml"))


def load_recipe(name: str) -> dict:
    """The whole file of recipe ``name`` (flags and the ``recipe`` block)."""
    import yaml

    return yaml.safe_load(recipe_path(name).read_text())


def _top1(top1) -> str:
    if isinstance(top1, dict):  # a pre-training: the top-1 of its encoder after each protocol
        return ", ".join(f"{k} {v}" for k, v in top1.items() if v is not None) or "-"
    return "-" if top1 is None else str(top1)


def run() -> None:
    """``maekit recipes``: one line per recipe."""
    print(
        f"{'name':34s} {'command':9s} {'model':30s} {'epochs':>6s} {'eff. batch':>15s}  top-1 (ImageNet)"
    )
    for name in recipe_names():
        r = load_recipe(name)
        meta = r["recipe"]
        eff = r["batch_size"] * r.get("accum_iter", 1) * meta["world_size"]
        batch = f"{eff} ({meta['world_size']} procs)"
        print(
            f"{name:34s} {meta['command']:9s} {r['model']:30s} {r['epochs']:>6d} {batch:>15s}  {_top1(meta.get('top1'))}"
        )
    print(
        "use one: maekit COMMAND --config recipe:NAME [flags that override it]; "
        "--print_config shows what it resolves to here"
    )
