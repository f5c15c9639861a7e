"""``maekit convert CKPT OUT.onnx --to onnx``: an encoder or a classifier as an ONNX graph.

The graph takes ``pixel_values`` (N, C, H, W), normalised as in training, with a dynamic batch
axis N and the checkpoint's channels and size fixed, and returns

- ``logits`` (N, classes) for a fine-tuned or linear-probe classifier (the probe's BatchNorm
  folded into its Linear, exact in eval mode), or
- ``features`` (N, D) for an encoder (a pre-training checkpoint, or an encoder without a
  head): the feature its own pooling gives, which is also ``maekit extract``'s default for it:
  the cls token after the final norm (``--pool cls``) where the model classifies a cls token,
  else the mean of the patch tokens through the pooled-token norm (``--pool mean``: global-pool
  encoders, ConvMAE). One vector per image is what a serving runtime wants; all tokens
  (``--pool all``) stay a ``maekit extract`` job.

The file is checked before it is kept: onnx's checker, then onnxruntime on a random batch
against the PyTorch model; the largest difference is in the lines the command prints and a
file over :data:`CHECK_ATOL` is not written.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import MaekitError
from ..files import atomic_write
from ..models.family import Family, family_of_state
from ..models.probe_head import fold_linprobe_head

INPUT = "pixel_values"
CHECK_ATOL = 1e-4  # float32 graph vs the eager model: ~1e-6 measured on tiny ViTs
CHECK_BATCH = 2
# The TorchScript exporter (dynamo=False): torch 2.14's default torch.export-based exporter
# needs onnxscript, which neither maekit nor its [onnx] extra installs; the TorchScript one
# needs nothing beyond torch, traces a ViT exactly, and opset 17 has LayerNormalization.
OPSET = 17


class _Pooled(nn.Module):
    """An encoder's one feature vector per image (see the module docstring)."""

    def __init__(self, model: nn.Module, family: Family, mean: bool) -> None:
        super().__init__()
        self.model, self.prefix, self.mean = model, family.prefix_tokens, mean
        self.norm = family.pooled_norm(model) if mean else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(pixel_values)  # (N, prefix + L, D)
        if not self.mean:
            return tokens[:, 0]
        pooled = tokens[:, self.prefix :].mean(dim=1)
        return self.norm(pooled) if self.norm is not None else pooled


def onnx_module(
    state: dict[str, torch.Tensor], args: dict | None
) -> tuple[nn.Module, tuple[int, int, int], str, list[str]]:
    """The module to export: (module in eval mode, (C, H, W), output name, notes).

    Built like ``maekit extract`` builds it: the saved model name fixes the architecture, the
    weights and args the input geometry (checked against the position table)."""
    from ..models.registry import create_model, get_entry, is_registered

    args = args or {}
    name = args.get("model")
    if not name or not is_registered(name):
        raise MaekitError(
            f"the checkpoint names {'no model' if not name else f'model {name!r}, which is not registered'}; "
            "--to onnx builds the model by name: convert a checkpoint that maekit saved"
        )
    entry, family = get_entry(name), family_of_state(state, name)
    notes = []
    if "head.0.running_mean" in state:  # the linear probe's BatchNorm1d + Linear
        state = fold_linprobe_head(state)
        state.pop("head.0.num_batches_tracked", None)
        notes.append("folded the linear-probe BatchNorm into the head Linear")
    height, width = family.input_size(state, args)
    chans = int(state[family.checkpoint.input_convs[0]].shape[1])
    kw = {
        "img_size": height if height == width else (height, width),
        "in_chans": chans,
        "patch_size": args.get("patch_size") or family.patch_of(state),
    }
    head = family.checkpoint.head[0]
    classes = int(state[head].shape[0]) if head in state else 0
    global_pool = family.checkpoint.pool_norm[0] in state
    if entry.kind == "encoder":
        kw.update(num_classes=classes, global_pool=global_pool)
    elif classes:
        raise MaekitError(f"{name} is a pre-training model but the weights carry a {head}")
    model = create_model(name, **kw).eval()
    _load(model, state, family, name, entry.kind == "pretrain")
    if classes:
        return model, (chans, height, width), "logits", notes
    mean = not family.cls_token or (entry.kind == "encoder" and global_pool)
    notes.append(
        "features: "
        + ("the mean of the patch tokens" if mean else "the cls token after the final norm")
        + f" ({'--pool mean' if mean else '--pool cls'} of maekit extract)"
    )
    return _Pooled(model, family, mean).eval(), (chans, height, width), "features", notes


def _load(model: nn.Module, state: dict, family: Family, name: str, pretrain: bool) -> None:
    """Every weight the model has, none it lacks; a pre-training model may miss its decoder,
    which the exported encoder does not use (released encoder-only files have none)."""
    own = model.state_dict()
    optional = family.checkpoint.pretrain_only if pretrain else ()
    missing = [k for k in own if k not in state and not k.startswith(optional)]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        what = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, the model's {tuple(own[wrong[0]].shape)}"
        )
        raise MaekitError(
            f"the weights do not fit {name} ({what}); convert the checkpoint the run saved, "
            "with its args"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _runtime():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MaekitError(
            f"--to onnx needs onnx and onnxruntime ({e.name or e} is missing): "
            "pip install maekit[onnx]"
        ) from None
    return onnx, onnxruntime


@torch.no_grad()
def write_onnx(
    module: nn.Module, input_shape: tuple[int, int, int], output: str, dst: str | Path
) -> float:
    """Export ``module`` to ``dst`` and check it; returns the largest |onnxruntime - torch| on a
    random batch. A file that fails the check is never left at ``dst``."""
    onnx, ort = _runtime()
    x = torch.randn(CHECK_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))
    result = {}

    def export_and_check(tmp: Path) -> None:
        with warnings.catch_warnings():
            # the exporter's deprecation notice and the tracer's notes on timm's shape asserts
            # (constant for the fixed C, H, W this graph is exported for)
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module,
                    (x,),
                    str(tmp),
                    input_names=[INPUT],
                    output_names=[output],
                    dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
            except (RuntimeError, torch.onnx.errors.OnnxExporterError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise MaekitError(f"torch.onnx.export failed: {first}") from e
        onnx.checker.check_model(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run([output], {INPUT: x.numpy()})[0])
        diff = float((got - module(x)).abs().max())
        if not diff <= CHECK_ATOL:  # NaN fails too
            raise MaekitError(
                f"the ONNX graph differs from the PyTorch model by {diff:.2g} (> {CHECK_ATOL:g}) "
                "on a random batch; not written: please report it with the checkpoint's model name"
            )
        result["diff"] = diff

    atomic_write(dst, export_and_check)
    return result["diff"]
