"""Which family's export rules apply to a state dict (maekit/models/family.py), for
``maekit convert --to timm`` and ``--to hf``: the family converts, or says in one line why not."""

from __future__ import annotations

import torch

from ..errors import MaekitError
from ..models.family import Family, family_of_state


def exporting_family(state: dict[str, torch.Tensor], args: dict | None, target: str) -> Family:
    """The family of the weights (their saved model name, else their names), if it exports to
    ``target``; else the family's one-line reason."""
    family = family_of_state(state, (args or {}).get("model"))
    supported = family.exports.timm if target == "timm" else family.exports.hf
    if supported is None:
        raise MaekitError(family.exports.refusal(target))
    return family


def export_timm(
    state: dict[str, torch.Tensor], global_pool: bool | None, args: dict | None = None
) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Weights in timm's names by their family's rule: (state, notes, the create_model call)."""
    family = exporting_family(state, args, "timm")
    size = family.input_size(state, args)  # checked before anything is written
    out, notes, pool = family.exports.timm(state, global_pool)
    return out, notes, family.exports.timm_call(out, pool, {**(args or {}), "input_size": size})
