"""Every registered model and family keeps the family contract (tests/models/contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maekit.models import list_models
from maekit.models.family import families
from maekit.models.registry import get_entry

from .contract import check_structure, check_training


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_keeps_its_family_spec(name: str) -> None:
    check_structure(name)


def smallest_per_family_and_kind() -> list[str]:
    """One name per (family, kind): the narrowest registered size (the training checks run it)."""
    chosen: dict[tuple[str, str], str] = {}
    for name in list_models():
        entry = get_entry(name)
        width = entry.defaults.get("embed_dim")
        width = max(width) if isinstance(width, tuple | list) else width
        key = (entry.family.name, entry.kind)
        best = chosen.get(key)
        if best is None or width < _width(best):
            chosen[key] = name
    return sorted(chosen.values())


def _width(name: str) -> int:
    w = get_entry(name).defaults.get("embed_dim")
    return max(w) if isinstance(w, tuple | list) else w


@pytest.mark.parametrize("name", smallest_per_family_and_kind())
def test_each_family_trains_checkpoints_and_exports(name: str, tmp_path: Path) -> None:
    check_training(name, tmp_path)


def test_every_family_has_models_of_both_kinds() -> None:
    kinds = {(get_entry(n).family.name, get_entry(n).kind) for n in list_models()}
    for family in families():
        assert {(family.name, "pretrain"), (family.name, "encoder")} <= kinds, family.name
