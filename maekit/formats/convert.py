"""``maekit convert IN OUT --to {maekit,timm,safetensors,hf,onnx}``: re-save any readable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MaekitError
from ..files import atomic_save, check_overwrite, save_safetensors
from .export import export_timm
from .loader import read_file

TARGETS = ("maekit", "timm", "safetensors", "hf", "onnx")


def convert(
    src: str | Path,
    dst: str | Path,
    to: str,
    global_pool: bool | None = None,
    force: bool = False,
    encoder_only: bool = False,
) -> list[str]:
    """Convert ``src`` (any format :mod:`.loader` reads) to ``dst``; returns lines to print.

    ``maekit``: {model, epoch, args} .pth for --finetune / :func:`maekit.load_checkpoint`.
    ``safetensors``: the state dict in our names. ``timm``: encoder weights in timm's names
    (``.safetensors`` if ``dst`` ends so, else a bare .pth state dict). ``hf``: a folder that
    transformers' ``from_pretrained`` loads (ViTMAEForPreTraining, ViTMAEModel or
    ViTForImageClassification, see :mod:`.hf`; ``encoder_only``: a pre-training checkpoint's
    encoder alone). ``onnx``: the encoder's features or the classifier's logits as an ONNX
    graph, checked with onnxruntime (:mod:`.onnx_export`).
    """
    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise MaekitError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if global_pool is not None and to != "timm":
        raise MaekitError(
            "--global_pool/--cls_token choose timm's pooling: use them with --to timm"
        )
    if encoder_only and to != "hf":
        raise MaekitError(
            "--encoder_only writes a Hugging Face ViTMAEModel: use it with --to hf "
            "(--to timm and --to onnx export the encoder anyway)"
        )
    if dst.exists() and (force is False or dst.resolve() == src.resolve()):
        raise MaekitError(
            f"{dst} already exists; choose another output path"
            + ("" if dst.resolve() == src.resolve() else " or pass --force to overwrite it")
        )
    if to == "hf":
        check_overwrite(dst, _is_hf_folder, "a Hugging Face folder that maekit convert wrote")
    if not dst.parent.is_dir():
        raise MaekitError(f"output folder {dst.parent} does not exist; create it first")
    ckpt = read_file(src)
    lines = [ckpt.report.summary()]
    state = ckpt.model
    if to == "maekit":
        keep = {k: ckpt.extras[k] for k in ("epoch", "args", "classes") if k in ckpt.extras}
        atomic_save({"model": state, **keep}, dst)
    elif to == "safetensors":
        save_safetensors(state, dst, {"format": "pt", "converted_from": src.name})
    elif to == "hf":
        from .hf import maekit_to_hf, write_hf_dir

        classes = ckpt.extras.get("classes")
        state, config, pre, notes = maekit_to_hf(
            state,
            ckpt.extras.get("args"),
            list(classes) if isinstance(classes, list | tuple) else None,
            encoder_only,
        )
        lines += notes
        write_hf_dir(dst, state, config, pre)
        arch = config["architectures"][0]
        lines.append(f"load it with: transformers.{arch}.from_pretrained({str(dst)!r})")
    elif to == "onnx":
        from .onnx_export import CHECK_ATOL, CHECK_BATCH, INPUT, onnx_module, write_onnx

        args = ckpt.extras.get("args") if isinstance(ckpt.extras.get("args"), dict) else {}
        module, shape, output, notes = onnx_module(state, args)
        lines += notes
        diff = write_onnx(module, shape, output, dst)
        c, h, w = shape
        lines.append(
            f"ONNX input {INPUT!r} (N, {c}, {h}, {w}) with N dynamic, output {output}; "
            f"onnxruntime vs PyTorch on a random batch of {CHECK_BATCH}: max abs diff {diff:.2e} "
            f"(limit {CHECK_ATOL:g})"
        )
        lines.append(f"wrote {dst} (onnx, {output})")
        return lines
    else:
        args = ckpt.extras.get("args") if isinstance(ckpt.extras.get("args"), dict) else {}
        state, notes, call = export_timm(state, global_pool, args)
        lines += notes
        if dst.suffix == ".safetensors":
            save_safetensors(state, dst, {"format": "pt"})
        else:
            atomic_save(state, dst)
        lines.append(f"load it with: {call}")
    lines.append(f"wrote {dst} ({to}, {len(state)} tensors)")
    return lines


def _is_hf_folder(path: Path) -> bool:
    """A save_pretrained folder (a config.json naming a model_type) that holds no run: a run
    folder's config.json is maekit's record of the run, never replaced by an export."""
    if not path.is_dir() or any(path.glob("checkpoint*.pth")) or (path / "log.txt").exists():
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return not any(path.iterdir())  # an empty folder is free to fill
    return isinstance(config, dict) and "model_type" in config
