"""Hugging Face transformers checkpoints <-> our state dicts, without importing transformers.

Three architectures, both ways: ``ViTMAEForPreTraining`` (encoder + decoder), ``ViTMAEModel``
(the MAE encoder alone, like the released ``mae_pretrain_vit_*.pth``) and
``ViTForImageClassification`` (a fine-tuned ViT that classifies the cls token: our
``--cls_token`` model). A ``save_pretrained`` folder holds ``config.json`` and
``model.safetensors`` (or ``pytorch_model.bin``, read with the weights-only loader; sharded
files with their ``*.index.json``), optionally ``preprocessor_config.json`` with the
normalisation statistics.

What differs from our (= the official, = timm's) names: the prefix (``vit.``, ``decoder.``),
one Linear per query/key/value where we keep one fused ``qkv`` (q, k, v stacked in that order
along the output dim), and the per-layer names. transformers >= 5 renames the layers in memory
(``layers.N.attention.q_proj``) but still saves the names of 4.x
(``encoder.layer.N.attention.attention.query``); both are read, the 4.x names are written, which
every version loads. The architecture (sizes, patch, image size, channels, ``norm_pix_loss``)
comes from ``config.json``.

One numeric difference is documented rather than copied: HF's ViT configs default to
``layer_norm_eps`` 1e-12 where the official MAE uses 1e-6 (ours). Reading such a file says so;
writing sets 1e-6, so HF then computes exactly what maekit does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import MaekitError
from ..files import atomic_write
from .export import exporting_family

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# HF architecture -> what it is for us
ARCHITECTURES = {
    "ViTMAEForPreTraining": "pretrain",  # MAE encoder + decoder
    "ViTMAEModel": "encoder",  # MAE encoder only
    "ViTForImageClassification": "classifier",  # fine-tuned ViT, cls-token head
}
OFFICIAL_LN_EPS = 1e-6

# per-layer names: HF (4.x saved names and 5.x in-memory names) -> ours
_LAYER = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV = {
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_norm.weight": "decoder_norm.weight",
    "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
_ENC_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
_DEC_LAYER = re.compile(
    r"^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$"
)
# weights HF models may carry that ours have no use for
_IGNORED = ("pooler.", "embeddings.mask_token")


# --------------------------------------------------------------------------- reading


def is_hf_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def is_hf_state(state: dict) -> bool:
    """HF ViT/ViTMAE names (``vit.embeddings...`` / ``embeddings.patch_embeddings...``)."""
    return any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in state)


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MaekitError(f"could not read {path}: {e}") from e
    if not isinstance(obj, dict):
        raise MaekitError(f"{path} is not a JSON object")
    return obj


def architecture(config: dict, where: str) -> str:
    """The supported architecture named in ``config.json``, or a one-line error naming it."""
    names = config.get("architectures") or []
    name = names[0] if names else config.get("model_type", "unknown")
    if name not in ARCHITECTURES:
        raise MaekitError(
            f"{where} is a Hugging Face {name} checkpoint, which maekit does not read; "
            f"it reads {', '.join(ARCHITECTURES)}"
        )
    if config.get("hidden_act", "gelu") != "gelu" or not config.get("qkv_bias", True):
        raise MaekitError(
            f"{where}: this {name} uses hidden_act={config.get('hidden_act')!r}, "
            f"qkv_bias={config.get('qkv_bias')}; maekit's ViTs use gelu with a qkv bias"
        )
    return name


def _weight_files(folder: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for name in INDEX_FILES:
        if (folder / name).is_file():
            shards = sorted(set(read_json(folder / name).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if not shards or missing:
                raise MaekitError(
                    f"{folder / name} lists shards that are missing: {', '.join(missing[:3])}"
                )
            return [folder / s for s in shards]
    raise MaekitError(
        f"{folder} has a config.json but no weights ({', '.join(WEIGHT_FILES)}); "
        "give the whole save_pretrained folder"
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """One weights file, safely: safetensors, or a torch file through the weights-only loader."""
    from .safe_pickle import load_torch, unreadable

    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as e:
            raise unreadable(path, e) from e
    else:
        obj = load_torch(path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MaekitError(f"{path} is not a state dict of tensors")
    return obj


def read_hf_dir(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state in HF names, config) of a ``save_pretrained`` folder; unsupported ones refused."""
    folder = Path(folder)
    config = read_json(folder / CONFIG)
    architecture(config, str(folder))
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder):
        state.update(read_weights(f))
    if (folder / PREPROCESSOR).is_file():
        config = {**config, "_preprocessor": read_json(folder / PREPROCESSOR)}
    return state, config


def _image_size(value) -> int | list[int]:
    if isinstance(value, list | tuple):
        return int(value[0]) if value[0] == value[1] else [int(value[0]), int(value[1])]
    return int(value)


def matching_model(kind: str, sizes: dict) -> str | None:
    """The registered model whose size-table row has these sizes (patch size may differ)."""
    from ..models.registry import get_entry, list_models

    for name in list_models(kind):
        d = get_entry(name).defaults
        if all(d.get(k) == v for k, v in sizes.items()):
            return name
    return None


def hf_to_maekit(
    state: dict[str, torch.Tensor], config: dict | None, where: str
) -> tuple[dict[str, torch.Tensor], dict, list[str], str]:
    """HF names -> ours. Returns (state, args for the checkpoint, notes, architecture name).

    ``config`` may be None (a bare weights file): the architecture then follows the names.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], list] = {}
    ignored = []
    for key, value in state.items():
        k = key[4:] if key.startswith("vit.") else key
        m = _ENC_LAYER.match(k) or _DEC_LAYER.match(k)
        if m:
            stem = ("decoder_blocks" if k.startswith("decoder.") else "blocks") + f".{m.group(1)}"
            name, leaf = m.group(2), m.group(3)
            if name in _QKV:
                qkv.setdefault((stem, leaf), [None] * 3)[_QKV[name]] = value
            elif name in _LAYER:
                out[f"{stem}.{_LAYER[name]}.{leaf}"] = value
            else:
                raise MaekitError(
                    f"{where}: unexpected tensor {key} in a Hugging Face ViT checkpoint"
                )
        elif k in _TOP:
            out[_TOP[k]] = value
        elif k.startswith(_IGNORED):
            ignored.append(key)
        else:
            raise MaekitError(f"{where}: unexpected tensor {key} in a Hugging Face ViT checkpoint")
    for (stem, leaf), parts in qkv.items():
        if any(p is None for p in parts):
            raise MaekitError(
                f"{where}: {stem} lacks a query, key or value {leaf}; the file is incomplete"
            )
        out[f"{stem}.attn.qkv.{leaf}"] = torch.cat(parts, dim=0)  # (3D, ...) in q, k, v order
    if "patch_embed.proj.weight" not in out:
        raise MaekitError(f"{where}: no patch embedding in this Hugging Face checkpoint")
    if config is not None:
        arch = architecture(config, where)
    elif "head.weight" in out:
        arch = "ViTForImageClassification"
    else:
        arch = "ViTMAEForPreTraining" if "decoder_pred.weight" in out else "ViTMAEModel"
    notes = [f"renamed from Hugging Face {arch} names (query/key/value fused into qkv)"]
    if ignored:
        notes.append(
            f"ignored {', '.join(sorted({k.split('.')[-2] for k in ignored}))} ({len(ignored)} tensors)"
        )
    eps = (config or {}).get("layer_norm_eps", OFFICIAL_LN_EPS)
    if eps != OFFICIAL_LN_EPS:
        notes.append(
            f"config layer_norm_eps {eps:g}: maekit's LayerNorms use the official MAE's {OFFICIAL_LN_EPS:g}"
        )
    return out, _args_from(out, config, arch), notes, arch


def _depth(state: dict, prefix: str) -> int:
    ids = {int(k.split(".")[1]) for k in state if k.startswith(prefix + ".")}
    return max(ids) + 1 if ids else 0


def _args_from(state: dict, config: dict | None, arch: str) -> dict:
    """The ``args`` our checkpoints carry (model name and geometry), from config.json / shapes."""
    dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    config = config or {}
    sizes = {"embed_dim": dim, "depth": _depth(state, "blocks")}
    if "num_attention_heads" in config:
        sizes["num_heads"] = config["num_attention_heads"]
    kind = "encoder" if arch == "ViTForImageClassification" else "pretrain"
    if arch == "ViTMAEForPreTraining":
        sizes["decoder_embed_dim"] = state["decoder_embed.weight"].shape[0]
        sizes["decoder_depth"] = _depth(state, "decoder_blocks")
        if "decoder_num_attention_heads" in config:
            sizes["decoder_num_heads"] = config["decoder_num_attention_heads"]
    tokens = state["pos_embed"].shape[1] - 1
    side = round(tokens**0.5)
    input_size = _image_size(config.get("image_size", side * patch))
    args = {
        "model": matching_model(kind, sizes),
        "input_size": input_size,
        "patch_size": patch,
        "in_chans": in_chans,
        "norm_pix_loss": bool(config.get("norm_pix_loss", False)),
        "hf_architecture": arch,
    }
    if config.get("mask_ratio") is not None:
        args["mask_ratio"] = config["mask_ratio"]
    if arch == "ViTForImageClassification":
        args.update(global_pool=False, cls_token=True, nb_classes=state["head.weight"].shape[0])
    pre = config.get("_preprocessor") or {}
    if pre.get("image_mean") and pre.get("image_std"):
        args["mean"], args["std"] = list(pre["image_mean"]), list(pre["image_std"])
    if config:
        args["hf_config"] = {k: v for k, v in config.items() if k != "_preprocessor"}
    return args


# --------------------------------------------------------------------------- writing


def _heads(dim: int, args: dict, field: str, hf_field: str) -> int:
    """Attention heads are not in the weights: the saved HF config, the model's size-table row,
    or the standard count for this width."""
    from ..models.registry import get_entry, list_models

    hf = args.get("hf_config") or {}
    hf_width = "hidden_size" if field == "num_heads" else "decoder_hidden_size"
    if hf.get(hf_field) and hf.get(hf_width) == dim:
        return int(hf[hf_field])
    width = "embed_dim" if field == "num_heads" else "decoder_embed_dim"
    name = args.get("model")
    if name:
        try:
            d = get_entry(name).defaults
        except MaekitError:
            d = {}
        if d.get(width) == dim and field in d:
            return int(d[field])
    for name in list_models():
        d = get_entry(name).defaults
        if d.get(width) == dim and field in d:
            return int(d[field])
    raise MaekitError(
        f"cannot tell the number of attention heads of a {dim}-wide {'decoder' if 'decoder' in field else 'encoder'} "
        "(not a standard size and the checkpoint names no model); convert a checkpoint saved by maekit"
    )


def hf_architecture_of(state: dict, args: dict | None = None) -> str:
    """Which HF class our state dict becomes; refuses what HF has no class for (the family says:
    maekit/models/family.py)."""
    layout = exporting_family(state, args, "hf").exports.hf
    if layout != "vit":
        raise MaekitError(f"no Hugging Face writer for the {layout!r} layout")
    if "decoder_pred.weight" in state:
        return "ViTMAEForPreTraining"
    if "head.weight" in state or "head.1.weight" in state:
        if "fc_norm.weight" in state and "norm.weight" not in state:
            raise MaekitError(
                "this encoder was fine-tuned with global pooling (fc_norm over the mean of the patch "
                "tokens), but ViTForImageClassification classifies the cls token; fine-tune with "
                "--cls_token to export a classifier, or export the encoder --to timm --global_pool"
            )
        return "ViTForImageClassification"
    return "ViTMAEModel"


def maekit_to_hf(
    state: dict[str, torch.Tensor],
    args: dict | None,
    classes: list[str] | None = None,
    encoder_only: bool = False,
) -> tuple[dict[str, torch.Tensor], dict, dict | None, list[str]]:
    """Our state dict -> (HF state, config.json, preprocessor_config.json or None, notes).

    ``classes``: the class names a fine-tuning run saved (config ``id2label``); ``encoder_only``:
    a pre-training checkpoint's encoder alone, as a ViTMAEModel. What transformers cannot build
    is refused here, before anything is written (:func:`check_buildable`).
    """
    from ..models.probe_head import LINPROBE_BN_EPS, fold_linprobe_head

    args = dict(args or {})
    notes = []
    family = exporting_family(state, args, "hf")
    if encoder_only:
        pretrain_only = family.checkpoint.pretrain_only
        if not any(k.startswith(pretrain_only) for k in state):
            raise MaekitError(
                "--encoder_only drops a pre-training decoder, but this checkpoint has none; "
                "drop the flag"
            )
        state = {k: v for k, v in state.items() if not k.startswith(pretrain_only)}
        notes.append("dropped the MAE decoder (--encoder_only): the encoder is a ViTMAEModel")
    arch = hf_architecture_of(state, args)
    height, width = family.input_size(state, args)
    check_buildable(arch, height, width)
    args["input_size"] = [height, width]
    if "head.0.running_mean" in state:
        state = fold_linprobe_head(state)
        state.pop("head.0.num_batches_tracked", None)
        notes.append(
            f"folded the linear-probe BatchNorm (eps {LINPROBE_BN_EPS:g}) into the classifier"
        )
    prefix = "" if arch == "ViTMAEModel" else "vit."
    back_top = {v: k for k, v in _TOP.items()}
    back_layer = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state.items():
        m = re.match(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m:
            stem = (
                f"{prefix}encoder.layer.{m.group(2)}"
                if m.group(1) == "blocks"
                else f"decoder.decoder_layers.{m.group(2)}"
            )
            name, leaf = m.group(3), m.group(4)
            if name == "attn.qkv":
                for part, chunk in zip(
                    ("query", "key", "value"), value.chunk(3, dim=0), strict=True
                ):
                    out[f"{stem}.attention.attention.{part}.{leaf}"] = chunk.contiguous()
            else:
                out[f"{stem}.{back_layer[name]}.{leaf}"] = value
            continue
        hf = back_top.get(key)
        if hf is None or (arch != "ViTMAEForPreTraining" and hf.startswith("decoder.")):
            dropped.append(key)
            continue
        if not hf.startswith(("decoder.", "classifier.")):
            hf = prefix + hf  # the encoder sits under ``vit.`` except in a bare ViTMAEModel
        out[hf] = value
    if arch != "ViTForImageClassification":
        dropped += [k for k in list(out) if k.startswith("classifier.")]
        out = {k: v for k, v in out.items() if not k.startswith("classifier.")}
    if dropped:
        notes.append(
            f"dropped {', '.join(sorted({k.split('.')[0] for k in dropped}))} (no place in {arch})"
        )
    config = _config_for(state, args, arch)
    if arch == "ViTForImageClassification":
        notes += _set_labels(config, classes, int(out["classifier.weight"].shape[0]))
    pre = _preprocessor(args, config["num_channels"], height, width)
    return out, config, pre, notes


def check_buildable(arch: str, height: int, width: int) -> None:
    """Refuse (one line) the folders transformers would write but not load. Measured with
    transformers 5.25 (tests/formats/test_wide_exports.py): ViTMAEForPreTraining's decoder builds its
    position table for a square grid of sqrt(cells) a side, so ``from_pretrained`` of an
    H != W model raises a size mismatch in ``__init__`` (and its ``patchify`` refuses H != W);
    ViTMAEModel and ViTForImageClassification take ``image_size`` [H, W] and any
    ``num_channels``, and give our outputs."""
    if arch == "ViTMAEForPreTraining" and height != width:
        raise MaekitError(
            f"transformers' ViTMAEForPreTraining is square-only (its decoder table assumes H == W; "
            f"a {height}x{width} one fails in from_pretrained): add --encoder_only to write the "
            "encoder as a ViTMAEModel, or convert --to timm / --to onnx"
        )


def _set_labels(config: dict, classes: list[str] | None, n: int) -> list[str]:
    """config ``id2label``/``label2id``: the run's class names, else the names an HF config
    brought along, else LABEL_i (said in a note)."""
    if classes is not None and len(classes) == n:
        names = [str(c) for c in classes]
        note = []
    elif len(config.get("id2label") or {}) == n:
        return []  # a Hugging Face checkpoint's own labels, kept
    else:
        names = [f"LABEL_{i}" for i in range(n)]
        why = (
            f"it saved {len(classes)} class names for {n} outputs"
            if classes is not None
            else "the checkpoint saves no class names (fine-tuning runs save them from this version)"
        )
        note = [f"id2label is LABEL_0..LABEL_{n - 1}: {why}"]
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    return note


def _preprocessor(args: dict, channels: int, height: int, width: int) -> dict | None:
    """preprocessor_config.json as training fed the model: resize to (H, W), divide by the run's
    pixel divisor (``max_value``: 255 for 8-bit, 65535 for 16-bit, 1 for float images; 255 in
    checkpoints from before it was saved), normalise with its per-channel statistics."""
    mean, std = args.get("mean"), args.get("std")
    if not (mean and std):
        return None
    if len(mean) != channels or len(std) != channels:
        raise MaekitError(
            f"the checkpoint's mean/std have {len(mean)}/{len(std)} values for a {channels}-channel "
            "model; transformers' image processor would fail on them: fix args mean/std "
            "(one value per channel) or convert --to timm"
        )
    divisor = args.get("max_value") or 255
    if isinstance(divisor, bool) or not isinstance(divisor, int | float) or divisor <= 0:
        raise MaekitError(
            f"the checkpoint's max_value {divisor!r} is no pixel divisor (255, 65535, 1.0, ...); "
            "convert the checkpoint the run saved"
        )
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": height, "width": width},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / float(divisor),
        "do_normalize": True,
        "image_mean": [float(v) for v in mean],
        "image_std": [float(v) for v in std],
    }


def _config_for(state: dict, args: dict, arch: str) -> dict:
    """config.json; ``args["input_size"]`` is the checked [H, W] (:func:`maekit_to_hf`)."""
    dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    size = _image_size(args["input_size"])
    config = dict(args.get("hf_config") or {})
    config.pop("transformers_version", None)
    config.update(
        {
            "architectures": [arch],
            "model_type": "vit" if arch == "ViTForImageClassification" else "vit_mae",
            "hidden_size": int(dim),
            "num_hidden_layers": _depth(state, "blocks"),
            "num_attention_heads": _heads(int(dim), args, "num_heads", "num_attention_heads"),
            "intermediate_size": int(state["blocks.0.mlp.fc1.weight"].shape[0]),
            "hidden_act": "gelu",
            "layer_norm_eps": OFFICIAL_LN_EPS,
            "qkv_bias": True,
            "image_size": size,
            "patch_size": int(patch),
            "num_channels": int(in_chans),
        }
    )
    config.setdefault("hidden_dropout_prob", 0.0)
    config.setdefault("attention_probs_dropout_prob", 0.0)
    config.setdefault("initializer_range", 0.02)
    config.setdefault("dtype", "float32")
    if arch == "ViTMAEForPreTraining":
        ddim = int(state["decoder_embed.weight"].shape[0])
        config.update(
            {
                "decoder_hidden_size": ddim,
                "decoder_num_hidden_layers": _depth(state, "decoder_blocks"),
                "decoder_num_attention_heads": _heads(
                    ddim, args, "decoder_num_heads", "decoder_num_attention_heads"
                ),
                "decoder_intermediate_size": int(state["decoder_blocks.0.mlp.fc1.weight"].shape[0]),
                "norm_pix_loss": bool(args.get("norm_pix_loss", False)),
                "mask_ratio": float(args.get("mask_ratio", 0.75)),
            }
        )
    if arch == "ViTForImageClassification":
        config["encoder_stride"] = int(patch)
    return config


def write_hf_dir(
    folder: str | Path, state: dict[str, torch.Tensor], config: dict, preprocessor: dict | None
) -> None:
    """config.json + model.safetensors (+ preprocessor_config.json): what from_pretrained reads."""
    from ..files import save_safetensors

    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise MaekitError(f"could not create {folder}: {e.strerror or e}") from e
    try:
        save_safetensors(state, folder / WEIGHT_FILES[0], {"format": "pt"})
        files = {CONFIG: config, **({PREPROCESSOR: preprocessor} if preprocessor else {})}
        for name, obj in files.items():
            text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
            atomic_write(folder / name, lambda tmp, text=text: Path(tmp).write_text(text))
    except BaseException:
        if created:  # a half-written export is no export: the next try needs no --force
            for name in (WEIGHT_FILES[0], CONFIG, PREPROCESSOR):
                (folder / name).unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
