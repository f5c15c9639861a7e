"""One registry of model names -> (class, size table row), timm-style.

``create_model(name, **overrides)`` builds any registered model; overrides are
constructor arguments (``img_size``, ``patch_size``, ``in_chans``, ``norm_pix_loss``,
...). The size tables live next to each model family so they
read as data.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn
from timm.layers import to_2tuple

from ..errors import MaekitError, is_out_of_memory
from .family import Family, families

KINDS = ("pretrain", "encoder")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: Callable[..., nn.Module]
    defaults: dict = field(default_factory=dict)
    kind: str = "pretrain"  # "pretrain" (MAE-style) or "encoder" (fine-tune / linear probe)
    family: Family | None = None  # the family whose pre-training or encoder class ``cls`` is


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, cls: Callable[..., nn.Module], kind: str = "pretrain", **defaults
) -> None:
    """Register a size of a family's model; the family (:func:`~.family.register_family`) must
    be registered first and name ``cls`` as its pre-training (``kind="pretrain"``) or encoder
    class."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    role = "pretrain_cls" if kind == "pretrain" else "encoder_cls"
    family = next((f for f in families() if getattr(f, role) is cls), None)
    if family is None:
        raise ValueError(
            f"{cls.__name__} is the {kind} class of no registered family; register_family first"
        )
    _REGISTRY[name] = ModelEntry(name, cls, dict(defaults), kind, family)


def unregister_model(name: str) -> None:
    """Forget a registered name (tests that register models remove them after themselves)."""
    _REGISTRY.pop(name, None)


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def list_models(kind: str | None = None) -> list[str]:
    """Registered names, sorted; optionally only one kind ("pretrain" or "encoder")."""
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MaekitError(
            f"unknown model {name!r}; available models: {', '.join(list_models())}"
        ) from None


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` replace the size-table defaults."""
    entry = get_entry(name)
    accepted = inspect.signature(entry.cls).parameters
    unknown = sorted(k for k in overrides if k not in accepted)
    if unknown:
        raise MaekitError(
            f"model {name!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    img_size = overrides.get("img_size", entry.defaults.get("img_size", 224))
    if isinstance(img_size, list | tuple):  # (height, width): non-square inputs
        img_size = overrides["img_size"] = tuple(int(v) for v in img_size)
    patch = overrides.get("patch_size", entry.defaults.get("patch_size"))
    if patch is not None and (patch <= 0 or any(s % patch for s in to_2tuple(img_size))):
        shown = "x".join(map(str, to_2tuple(img_size)))
        raise MaekitError(
            f"input size {shown} is not divisible by the patch size {patch} of {name!r}; "
            f"choose --input_size as a multiple of {patch} or set --patch_size"
        )
    try:
        return entry.cls(**{**entry.defaults, **overrides})
    except (MemoryError, RuntimeError) as e:
        # torch's CPU allocator raises RuntimeError("... can't allocate memory ..."); a ulimit
        # or a small machine should get one line, not a traceback from deep in nn.Linear
        if not is_out_of_memory(e):
            raise
        raise MaekitError(
            f"not enough memory to build {name!r} ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:120]}); pick a smaller --model or free memory "
            "(ulimit -v, other processes)"
        ) from None
