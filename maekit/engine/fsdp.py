"""Sharded data parallelism (``--dist_mode fsdp``): PyTorch's FSDP2 ``fully_shard``.

Each block the model's family names (timm ``Block``s, the MAE decoder blocks, ConvMAE's conv
blocks: :attr:`maekit.models.family.Family.units`) becomes one FSDP unit and the model root a last one, so a
process keeps only 1/world of the parameters, gradients and AdamW state; a block's full
parameters exist only while it runs (all-gathered before, freed after). Mixed precision follows
``--amp``: bf16/fp16 parameters for compute, fp32 gradient reduction, fp32 master weights.

Checkpoints stay in the plain format (``{"model": full state dict, "optimizer": torch's
integer-id state dict}``), written by rank 0 from full tensors gathered to the CPU, so a file
written under fsdp loads in any world size, under ddp, in one process, and in the official code.

The model code never sees any of this: :func:`maekit.engine.parallelize.parallelize` calls
:func:`wrap_model` on the built model. Every other function here takes the bare (sharded in
place) model, never a torch.compile wrapper.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import MaekitError
from ..models.family import family_of
from .distributed import DistEnv, wrap_ddp
from .precision import Precision

DIST_MODES = ("ddp", "fsdp")


def _fsdp():
    from torch.distributed import fsdp  # FSDP2 (torch >= 2.6)

    if not hasattr(fsdp, "fully_shard"):
        raise MaekitError(
            "--dist_mode fsdp needs torch.distributed.fsdp.fully_shard (torch >= 2.6); "
            "use --dist_mode ddp"
        )
    return fsdp


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units: the blocks its family names (encoder, decoder and,
    for ConvMAE, the conv stages' blocks; maekit/models/family.py), never a head."""
    return family_of(model).units(model)


def is_fsdp(model: nn.Module) -> bool:
    """True for a module sharded by ``fully_shard`` (the bare model, not a compile wrapper)."""
    try:
        return isinstance(model, _fsdp().FSDPModule)
    except (ImportError, MaekitError):
        return False


def fully_shard_model(model: nn.Module, precision: Precision) -> nn.Module:
    """Shard ``model`` in place: one unit per block, then the root. All ranks start from rank 0's
    weights (broadcast first, as DDP does). Returns the same module object."""
    fsdp = _fsdp()
    if dist.is_initialized():  # identical starting weights on every rank, like DDP
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)
    kw = {}
    if precision.dtype is not None:
        kw["mp_policy"] = fsdp.MixedPrecisionPolicy(
            param_dtype=precision.dtype, reduce_dtype=torch.float32
        )
    # FSDP2 warns when a module returns a view (in-place ops on it would skip a hook); the
    # training step never modifies model outputs in place, so the warning is noise here.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")
    units = fsdp_units(model)
    if not units:
        warnings.warn(
            f"--dist_mode fsdp: {type(model).__name__} has no blocks to shard one at a "
            "time, so its whole parameter set is gathered for every forward",
            stacklevel=2,
        )
    for unit in units:
        fsdp.fully_shard(unit, **kw)
    fsdp.fully_shard(model, **kw)
    return model


def wrap_model(
    model: nn.Module, env: DistEnv, dist_mode: str = "ddp", precision: Precision | None = None
) -> nn.Module:
    """The module the training step calls: DDP or FSDP2 in a multi-process run, else ``model``.

    Under fsdp the returned module *is* ``model`` (sharded in place); build the optimizer after
    this call so it holds the sharded parameters.
    """
    if dist_mode not in DIST_MODES:
        raise MaekitError(f"unknown --dist_mode {dist_mode!r}; use ddp or fsdp")
    if not env.distributed:
        return model
    if dist_mode == "ddp":
        return wrap_ddp(model, env)
    return fully_shard_model(model, precision or Precision(None, env.device.type))


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP: skip (or do) the gradient reduce-scatter of the next backward (accumulation)."""
    model.set_requires_gradient_sync(enabled)


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a replicated DTensor (e.g. the clipped gradient norm)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict | None, dict | None]:
    """(model state dict, optimizer state dict) as plain full CPU tensors, on rank 0 (None on
    the others). Every rank must call it under fsdp (it gathers the shards).

    The optimizer state comes back in torch's own integer-id format (ids in param-group order),
    so it loads into an unsharded optimizer with ``load_state_dict``.
    """
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    msd = get_model_state_dict(model, options=_options(cpu_offload=True))
    by_name = None
    if optimizer is not None:
        by_name = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if dist.is_initialized() and dist.get_rank() != 0:
        return None, None  # with cpu_offload only rank 0 receives the full tensors
    return msd, None if by_name is None else _to_integer_ids(by_name, optimizer, model)


def _to_integer_ids(by_name: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    """FQN-keyed optimizer state (torch.distributed.checkpoint) -> torch's integer-id format."""
    names = _param_names(model)
    ids, groups = {}, []
    for group, saved in zip(optimizer.param_groups, by_name.get("param_groups", []), strict=True):
        order = []
        for p in group["params"]:
            ids[names[id(p)]] = len(ids)
            order.append(ids[names[id(p)]])
        groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": order})
    # 0-dim entries (AdamW's ``step``) come back as the live optimizer's own tensors: copy them.
    state = {
        ids[k]: {n: t.clone() if torch.is_tensor(t) and t.dim() == 0 else t for n, t in v.items()}
        for k, v in by_name.get("state", {}).items()
        if k in ids
    }
    return {"state": state, "param_groups": groups}


def _to_names(by_id: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    """torch's integer-id optimizer state -> FQN keys of ``model`` (the inverse of the above)."""
    names = _param_names(model)
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved_groups = by_id["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups) or sum(
        len(g["params"]) for g in saved_groups
    ) != len(order):
        raise MaekitError(
            "the checkpoint's optimizer state has other parameter groups than this run "
            "(another model, --layer_decay or --weight_decay rule?); resume with the "
            "same settings"
        )
    name_of = dict(enumerate(order))
    groups = [
        {
            **{k: v for k, v in g.items() if k != "params"},
            "params": [name_of[i] for i in g["params"]],
        }
        for g in saved_groups
    ]
    state = {name_of[int(i)]: dict(v) for i, v in by_id["state"].items()}
    return {"state": state, "param_groups": groups}


def load_full_state(
    model: nn.Module,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    optimizer_state: dict | None = None,
) -> None:
    """Load full (unsharded) state dicts into a sharded model / its optimizer; every rank passes
    the same full tensors and keeps its own shard. Strict: every key must match."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(model_state)), sorted(set(model_state) - own)
    if missing or unexpected:
        raise MaekitError(
            f"the checkpoint does not match the model: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}; resume with the same --model and sizes"
        )
    # Both setters replace entries of the dicts they are given: hand them copies.
    set_model_state_dict(model, dict(model_state), options=_options())
    if optimizer is not None and optimizer_state is not None:
        by_name = _to_names(optimizer_state, optimizer, model)
        set_optimizer_state_dict(model, optimizer, by_name, options=_options())


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Run forwards outside the training step (evaluation, kNN) without collectives: under fsdp
    every unit is all-gathered once and kept whole until the block ends, so ranks may run
    different numbers of batches (sharded evaluation). Buffers (BatchNorm running statistics,
    which FSDP does not keep in sync) are first set to rank 0's. A no-op for unsharded models."""
    if not is_fsdp(model):
        yield
        return
    if dist.is_initialized():  # buffers (BatchNorm statistics) are per rank under fsdp:
        with torch.no_grad():  # use rank 0's, the ones its checkpoint holds
            for b in model.buffers():
                dist.broadcast(b.data, src=0)
    units = [m for m in model.modules() if is_fsdp(m)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            # FSDP2 never reshards the root after forward (backward needs it at once).
            m.set_reshard_after_forward(m is not model, recurse=False)
