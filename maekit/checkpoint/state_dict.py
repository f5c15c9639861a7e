"""A state dict against a model: the module under its wrappers, keys whose shapes differ, and
the one wording of "these weights do not fit this model" that every loader uses."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import MaekitError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) / torch.compile (``._orig_mod``) wrappers: the
    one whose state dict a checkpoint holds, without the wrappers' key prefixes."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def shape_mismatches(state: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Keys present in both whose shapes differ (sorted). A tensor that is not floating
    point (bool, int8, ...) where the model holds floating weights is refused here, on every
    loading path: load_state_dict would cast it and the load be reported as fine."""
    own = model.state_dict()
    cast = [
        k
        for k, v in state.items()
        if k in own
        and isinstance(v, torch.Tensor)
        and own[k].is_floating_point()
        and not v.is_floating_point()
    ]
    if cast:
        k = cast[0]
        raise MaekitError(
            f"{len(cast)} checkpoint tensors are not floating point where the model's weights "
            f"are (e.g. {k}: {str(state[k].dtype).replace('torch.', '')}); loading would cast "
            "them silently: give the float checkpoint (quantized weights are not supported)"
        )
    return sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)


def mismatch_text(state: dict[str, torch.Tensor], model: nn.Module, keys: list[str]) -> str:
    """``key (file shape) vs (model shape), ...``."""
    own = model.state_dict()
    return ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in keys)


def shape_error(
    what: str, state: dict[str, torch.Tensor], model: nn.Module, keys: list[str], fix: str
) -> MaekitError:
    """``{what} does not fit {Model}: shape mismatch for k (a) vs (b), ...; {fix}``."""
    return MaekitError(
        f"{what} does not fit {type(model).__name__}: shape mismatch for "
        f"{mismatch_text(state, model, keys[:6])}; {fix}"
    )


def keys_error(
    what: str, model: nn.Module, missing: list[str], unexpected: list[str], fix: str
) -> MaekitError:
    """``{what} does not match {Model} exactly: missing [...], unexpected [...]; {fix}``."""
    return MaekitError(
        f"{what} does not match {type(model).__name__} exactly: missing "
        f"{list(missing)[:8]}, unexpected {list(unexpected)[:8]}; {fix}"
    )
