"""What a model family *is*, declared once beside its size table: the :class:`Family` spec.

A family is the pre-training model and the encoder that share its weights (MAE + ViT, ConvMAE +
ConvViT, ...). Everything outside ``models/`` that depends on the architecture asks the family
of a model (:func:`family_of`), of a registered name (:func:`family_of_name`) or of a state dict
(:func:`family_of_state`) instead of probing attribute or key names:

- the optimizer: the layer-decay rule (:attr:`Family.layer_decay`, :attr:`Family.num_layers`);
- FSDP and activation checkpointing: the blocks (:attr:`Family.units`);
- masking: how many cells the random mask is drawn over (:attr:`Family.mask_cells`);
- fine-tuning: cls token or pooling only (:attr:`Family.cls_token`), the head's keys;
- checkpoints: which keys are the input conv, the position tables, the pre-training-only
  weights (:class:`CheckpointLayout`), and exports (:class:`Exports`): a function per target,
  or the one line that says why the family cannot be exported there.

An unknown model class or state dict is one clear :class:`~maekit.errors.MaekitError`, never a
silent ViT. Adding a family: its module plus one :func:`register_family` entry (see
CONTRIBUTING.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import MaekitError

LayerId = Callable[[str, int], int]  # (parameter name, num_layers) -> layer id
HEAD_KEYS = ("head.weight", "head.bias")  # timm's classifier names, which every family keeps
POOL_NORM_KEYS = ("fc_norm.weight", "fc_norm.bias")
# The names every family's encoder ends in (for its ``owns`` whitelist): the pooled-token norm,
# the classifier, and the linear probe's BatchNorm1d + Linear head.
HEAD_PATTERNS = (
    r"fc_norm\.(?:weight|bias)",
    r"head\.(?:weight|bias)",
    r"head\.0\.(?:running_mean|running_var|num_batches_tracked|weight|bias)",
    r"head\.1\.(?:weight|bias)",
)


@dataclass(frozen=True)
class CheckpointLayout:
    """Where a family keeps the weights that checkpoint loading adapts or may lack."""

    input_convs: tuple[str, ...]  # first conv weights (D, C, k, k): adapted to other channels
    output_layer: str | None  # pre-training prediction layer (p*p*C outputs, channel fastest)
    pos_tables: tuple[str, ...]  # position tables (1, prefix + h*w, D): recomputed or resized
    pretrain_only: tuple[str, ...]  # prefixes only pre-training has (decoder): fresh or dropped
    head: tuple[str, ...] = HEAD_KEYS  # the classifier a new task replaces
    pool_norm: tuple[str, ...] = POOL_NORM_KEYS  # the norm of the pooled tokens (global pool)
    # Encoder weights `pretrain --init` may find missing (a global-pool encoder has no final norm).
    init_may_lack: tuple[str, ...] = ()


@dataclass(frozen=True)
class Exports:
    """Per target library: a converter, or why the family cannot go there (one line).

    ``timm``: (state, global_pool) -> (state in timm's names, notes, global_pool used);
    ``timm_call``: (timm state, global_pool, args) -> the ``timm.create_model(...)`` call that
    loads it strictly. ``hf``: the name of the Hugging Face layout :mod:`maekit.formats.hf`
    writes for the family ("vit"), or None.
    """

    timm: Callable | None = None
    timm_call: Callable | None = None
    hf: str | None = None
    refusals: Mapping[str, str] = field(default_factory=dict)  # target -> why not

    def refusal(self, target: str) -> str:
        return self.refusals.get(target) or f"this model family cannot be exported to {target}"


@dataclass(frozen=True)
class Family:
    """One model family's rules; see the module docstring for who reads which field."""

    name: str
    pretrain_cls: type[nn.Module] | None
    encoder_cls: type[nn.Module] | None
    cls_token: bool  # encoders can classify a cls token (else they pool their tokens)
    prefix_tokens: int  # rows before the patch grid in the position tables (the cls slot)
    layer_decay: Mapping[str, LayerId]  # --layer_decay_rule name -> layer id; the first is default
    num_layers: Callable[[nn.Module], int]  # layer ids run 0 .. num_layers
    units: Callable[[nn.Module], list[nn.Module]]  # FSDP units / --grad_ckpt blocks, in order
    mask_cells: Callable[[nn.Module], int]  # cells the random mask is drawn over (noise length)
    token_grid: Callable[[nn.Module], tuple[int, int]]  # the patch grid of the position tables
    owns: Callable[[Mapping[str, torch.Tensor]], bool]  # is this state dict one of ours?
    patch_of: Callable[[Mapping[str, torch.Tensor]], int | None]  # overall stride, from weights
    checkpoint: CheckpointLayout
    exports: Exports = field(default_factory=Exports)
    # The norm a pooled feature goes through (a global-pool encoder's fc_norm), or None.
    pooled_norm: Callable[[nn.Module], nn.Module | None] = lambda model: None
    # The pre-training constructor argument that selects the dense reference computation where
    # the family has a cheaper exact one (ConvMAE: "dense_stages"), else None.
    dense_option: str | None = None

    def layer_rule(self, model: nn.Module, rule: str = "official") -> tuple[LayerId, int]:
        """(layer-id function, num_layers) for ``model``; an unknown ``rule`` means the default
        (``--layer_decay_rule plsc`` has no effect on a family with one rule)."""
        fn = self.layer_decay.get(rule) or next(iter(self.layer_decay.values()))
        return fn, self.num_layers(model)

    def input_size(
        self, state: Mapping[str, torch.Tensor], args: Mapping | None = None
    ) -> tuple[int, int]:
        """(H, W) in pixels of the images ``state`` was trained on: the saved ``--input_size``
        checked against the position table (a wrong size would build a model that cannot load
        the weights), else the square the table's cell count gives; one line when neither can.
        Exports (timm's img_size, HF's image_size, the ONNX input) all read it here."""
        args = args or {}
        patch = args.get("patch_size") or self.patch_of(state)
        table = state.get(self.checkpoint.pos_tables[0])
        if not patch or table is None:
            raise MaekitError(
                f"the weights have no patch embedding or position table ({describe_keys(state)}); "
                "convert a whole checkpoint of a maekit model"
            )
        cells = int(table.shape[1]) - self.prefix_tokens
        size = args.get("input_size")
        if size is None:
            side = math.isqrt(cells)
            if side * side != cells:
                raise MaekitError(
                    f"the checkpoint's patch grid ({cells} cells) is not square and it records no "
                    "--input_size; convert the checkpoint the run saved (its args hold H W)"
                )
            return side * patch, side * patch
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
        if (h // patch) * (w // patch) != cells:
            raise MaekitError(
                f"the checkpoint says --input_size {h} {w} with patch {patch}, "
                f"{(h // patch) * (w // patch)} cells, but its position table has {cells}; "
                "the file's args do not belong to its weights"
            )
        return h, w

    def classes(self) -> tuple[type[nn.Module], ...]:
        return tuple(c for c in (self.pretrain_cls, self.encoder_cls) if c is not None)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make ``family`` known (its name must be new); returns it, for a module-level constant."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget a family (tests that register a toy family remove it after themselves)."""
    _FAMILIES.pop(name, None)


def families() -> list[Family]:
    return list(_FAMILIES.values())


def family_of(model: nn.Module) -> Family:
    """The family of a plain model (its class or a base class is a family's class)."""
    for cls in type(model).__mro__:
        for fam in _FAMILIES.values():
            if cls in fam.classes():
                return fam
    raise MaekitError(
        f"{type(model).__name__} belongs to no registered model family; register its family "
        "with maekit.models.family.register_family (CONTRIBUTING.md, 'Adding a model family')"
    )


def family_of_name(name: str) -> Family:
    """The family of a registered model name."""
    from .registry import get_entry

    return get_entry(name).family


def family_of_state(state: Mapping[str, torch.Tensor], model_name: str | None = None) -> Family:
    """The family a state dict (our names) belongs to: the saved model name's if it is
    registered, else the one family whose ``owns`` accepts the keys; one line otherwise."""
    if model_name:
        from .registry import is_registered

        if is_registered(model_name):
            return family_of_name(model_name)
    matches = [f for f in _FAMILIES.values() if f.owns(state)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f.name for f in _FAMILIES.values())
    if not matches:
        raise MaekitError(
            f"the weights belong to no model family maekit knows ({known}): "
            f"{describe_keys(state)}; convert a checkpoint of a maekit model"
        )
    raise MaekitError(
        f"the weights fit several model families ({', '.join(f.name for f in matches)}); "
        "use a checkpoint saved by maekit (its args name the model)"
    )


def describe_keys(state: Mapping[str, torch.Tensor], most: int = 6) -> str:
    """A short view of a state dict's top-level names, for error lines."""
    tops = sorted({k.split(".")[0] for k in state})
    shown = ", ".join(tops[:most]) + (" ..." if len(tops) > most else "")
    return f"{len(state)} tensors ({shown})"


def keys_match(state: Mapping[str, object], patterns) -> bool:
    """Every key of ``state`` matches one of the compiled ``patterns`` (a family's whitelist)."""
    return bool(state) and all(any(p.fullmatch(k) for p in patterns) for k in state)
