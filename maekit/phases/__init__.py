"""The phases as recipes for :func:`maekit.engine.run.run`, by command name."""

from __future__ import annotations


def recipe_class(phase: str) -> type:
    """The :class:`~maekit.engine.recipe.Recipe` of ``phase`` (pretrain, finetune, linprobe)."""
    if phase == "pretrain":
        from .pretrain import PretrainRecipe

        return PretrainRecipe
    if phase == "finetune":
        from .finetune import FinetuneRecipe

        return FinetuneRecipe
    if phase == "linprobe":
        from .linprobe import LinprobeRecipe

        return LinprobeRecipe
    raise KeyError(phase)
