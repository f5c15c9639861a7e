"""The phase table: each phase's config, CLI help and recipe, by command name.

The CLI, ``maekit bench`` and ``--phase`` read this table; the engine knows no phase (it runs a
:class:`~maekit.engine.recipe.Recipe`). The phases themselves are listed once, in
:data:`maekit.config.phases.PHASE_CONFIGS`; each ``maekit/phases/<command>.py`` holds the recipe
as ``RECIPE``. A new phase is a config class there plus its module here.

Kept light: the CLI imports this table before torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..config.phases import PHASE_CONFIGS, CommonConfig


@dataclass(frozen=True)
class Phase:
    name: str
    config: type[CommonConfig]
    summary: str  # the command's --help line
    module: str  # maekit.phases.<name>: its RECIPE and run(cfg)

    def recipe_class(self) -> type:
        """The phase's :class:`~maekit.engine.recipe.Recipe` (imports torch)."""
        return importlib.import_module(self.module).RECIPE


PHASES: dict[str, Phase] = {
    c.command: Phase(c.command, c, c.summary, f"{__name__}.{c.command}") for c in PHASE_CONFIGS
}


def recipe_class(phase: str) -> type:
    """The recipe of ``phase`` (pretrain, finetune, linprobe); KeyError for another name."""
    return PHASES[phase].recipe_class()
