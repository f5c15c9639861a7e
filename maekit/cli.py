"""``maekit`` command line: one sub-command per phase, flags generated from the phase config."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .config import (
    BenchConfig,
    ExtractConfig,
    KnnConfig,
    PlotConfig,
    ShardConfig,
    StatsConfig,
    VisualizeConfig,
)
from .config.flags import HelpFormatter, Switch, add_config_flags, config_from_args
from .errors import MaekitError, error_text, is_out_of_memory
from .phases import PHASES as PHASE_TABLE

PHASES = {name: (p.config, p.summary, p.module) for name, p in PHASE_TABLE.items()}
# Looking at a trained model: same shape as PHASES (config, help, module with run(cfg)).
TOOLS = {
    "visualize": (
        VisualizeConfig,
        "reconstruction grid (original | masked | reconstruction | + visible) of a pre-training checkpoint",
        "maekit.analysis.visualize",
    ),
    "plot": (
        PlotConfig,
        "PNG curves of the metrics in log.txt (several runs overlaid)",
        "maekit.analysis.curves",
    ),
    "extract": (
        ExtractConfig,
        "encoder features of a dataset (no masking) to .safetensors or .npy",
        "maekit.analysis.features",
    ),
    "knn": (
        KnnConfig,
        "weighted k-NN top-1/top-5 of the encoder's features (train/ bank, val/ queries)",
        "maekit.analysis.knn",
    ),
    "shard": (
        ShardConfig,
        "write an image folder as WebDataset tar shards (DST/<split>/shard-NNNNNN.tar + "
        "shards.json) for --data_path",
        "maekit.data.shards.write",
    ),
    "stats": (
        StatsConfig,
        "per-channel mean/std of a dataset (a bounded random sample), printed as --mean/--std "
        "flags to paste",
        "maekit.data.stats",
    ),
    "bench": (
        BenchConfig,
        "training-step speed (img/s, peak memory, FLOP/s, MFU) on synthetic batches, fast vs "
        "--reference; or the input pipeline (--pipeline)",
        "maekit.bench",
    ),
}
COMMANDS = {**PHASES, **TOOLS}


def build_parser(file_defaults: dict[str, dict] | None = None) -> argparse.ArgumentParser:
    """The ``maekit`` parser; ``file_defaults`` {command: {flag: value}} (from ``--config``)
    become that command's defaults, so flags on the command line still override them."""
    parser = argparse.ArgumentParser(prog="maekit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"maekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, help_text, _) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        add_config_flags(p, cls)
        p.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help="read flags from a YAML or JSON file (a run's config.json too) or a shipped "
            "recipe:NAME (see `maekit recipes`); flags given here override it",
        )
        p.add_argument(
            "--print_config",
            action="store_true",
            help="print the resolved configuration (effective batch and absolute lr for this "
            "launch's processes) as YAML and exit",
        )
        p.set_defaults(**(file_defaults or {}).get(name, {}))
    sub.add_parser("models", help="list registered model names")
    sub.add_parser(
        "recipes", help="list the shipped recipes (--config recipe:NAME) with their published top-1"
    )
    conv = sub.add_parser(
        "convert",
        help="re-save a checkpoint (official .pth, PLSC .pd/.pdparams, safetensors, timm, Hugging "
        "Face) for maekit, timm, safetensors or Hugging Face",
        description="Read any checkpoint maekit understands (safely: nothing in it runs) and "
        "write it as a maekit .pth, a .safetensors file, encoder weights that "
        "timm.create_model('vit_*') loads with strict=True, a folder that transformers' "
        "from_pretrained loads, or an ONNX graph.",
    )
    conv.add_argument("input", metavar="IN", help="checkpoint to read")
    conv.add_argument("output", metavar="OUT", help="file to write")
    conv.add_argument(
        "--to",
        required=True,
        choices=("maekit", "timm", "safetensors", "hf", "onnx"),
        help="output format (timm: .safetensors if OUT ends so, else .pth; hf: a "
        "save_pretrained folder for transformers; onnx: encoder features or classifier logits, "
        "checked with onnxruntime, needs maekit[onnx])",
    )
    # one choice, two flags sharing a dest: the later one wins, as everywhere
    conv.add_argument(
        "--global_pool",
        dest="global_pool",
        action="store_const",
        const=True,
        help="--to timm: for timm's global_pool='avg' (MAE norm -> fc_norm)",
    )
    conv.add_argument(
        "--cls_token",
        dest="global_pool",
        action="store_const",
        const=False,
        help="--to timm: for timm's global_pool='token'",
    )
    conv.add_argument(
        "--encoder_only",
        "--no_encoder_only",
        action=Switch,
        off=("--no_encoder_only",),
        default=False,
        help="--to hf: write a pre-training checkpoint's encoder alone (ViTMAEModel), e.g. for "
        "H != W, which transformers' ViTMAEForPreTraining cannot build",
    )
    conv.add_argument(
        "--force",
        "--no_force",
        action=Switch,
        off=("--no_force",),
        default=False,
        help="overwrite OUT if it exists",
    )
    return parser


def fetch_dataset(data_path: str) -> None:
    """--download: fetch Fashion-MNIST (the only dataset maekit can download) if it is missing."""
    from .data import BUILTIN_ALIASES

    if data_path not in BUILTIN_ALIASES:
        raise MaekitError(
            f"--download fetches Fashion-MNIST only; drop it for --data_path {data_path}"
        )
    from .data.fashion_mnist import download

    print(f"Fashion-MNIST: {download()}")


def world_size_here() -> int:
    """The process count of this launch: torchrun's WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def resolved_view(cfg, world_size: int, source: dict | None = None) -> dict:
    """What ``--print_config`` prints: every flag's value and, for a training command, the
    effective batch and absolute lr at ``world_size`` processes. ``source``: the --config
    file's mapping; for a recipe, its published effective batch is shown too, so a mismatch
    with this launch shows."""
    import dataclasses

    from .config.phases import CommonConfig
    from .engine.schedule import absolute_lr

    # every command's config (tools have no to_dict); positionals (``maekit shard SRC DST``) stay
    # on the command line, as --config refuses them
    view = {
        f.name: value
        for f, value in zip(dataclasses.fields(cfg), dataclasses.astuple(cfg), strict=True)
        if not f.metadata.get("positional")
    }
    if not isinstance(cfg, CommonConfig):
        return view
    lr, eff = absolute_lr(cfg, world_size)
    resolved = {"world_size": world_size, "effective_batch": eff, "blr": lr * 256 / eff, "lr": lr}
    recipe = (source or {}).get("recipe")
    if isinstance(recipe, dict) and recipe.get("world_size"):
        published = (
            source.get("batch_size", cfg.batch_size)
            * source.get("accum_iter", 1)
            * int(recipe["world_size"])
        )
        resolved["recipe_effective_batch"] = published
        if published != eff:
            per_step = cfg.batch_size * world_size
            resolved["note"] = (
                f"the recipe's effective batch is {published}, here it is {eff}: match it with "
                f"--accum_iter {max(1, published // per_step)} (or more processes); the absolute lr "
                "scales with the effective batch"
            )
    view["resolved"] = resolved
    return view


def print_config(cls: type, cfg, args: argparse.Namespace) -> None:
    """--print_config: the resolved configuration as YAML that --config reads back."""
    from .config.files import dump_yaml, read_mapping

    source = read_mapping(args.config)[0] if args.config else None
    view = resolved_view(cfg, world_size_here(), source)
    origin = f" from --config {args.config} and the command line" if args.config else ""
    print(dump_yaml(view, f"maekit {args.command}{origin}; run it with --config FILE"), end="")


def main(argv: list[str] | None = None) -> int:
    """``maekit ...``: the exit status (0 ok, 2 bad input in one line, 130 interrupted; 141 when
    the reader of stdout went away, as in ``maekit recipes | head -5``: quietly, as Unix tools
    stop on SIGPIPE, not with a BrokenPipeError traceback)."""
    try:
        rc = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return rc
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit-time flush then has nowhere to fail
        return 141


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "config", None):  # the file's values as defaults, then parse again
            from .config.files import flag_values, read_mapping

            data, spec = read_mapping(args.config)
            values = flag_values(data, COMMANDS[args.command][0], args.command, spec)
            args = build_parser({args.command: values}).parse_args(argv)
        if args.command == "recipes":
            from .recipes import run as list_recipes

            list_recipes()
            return 0
        if args.command == "convert":
            from .formats.convert import convert

            lines = convert(
                args.input, args.output, args.to, args.global_pool, args.force, args.encoder_only
            )
            for line in lines:
                print(line)
            return 0
        if args.command == "models":
            from .models import get_entry, list_models

            for name in list_models():
                print(f"{name:32s} {get_entry(name).kind}")
            return 0
        cls, _, module = COMMANDS[args.command]
        import importlib

        cfg = config_from_args(cls, args)
        cfg.validate()  # before the heavy imports, so flag errors come back at once
        if args.print_config:
            print_config(cls, cfg, args)
            return 0
        if getattr(cfg, "download", False):
            fetch_dataset(cfg.data_path)
        importlib.import_module(module).run(cfg)
        return 0
    except MaekitError as e:
        print(f"maekit {args.command}: error: {error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"maekit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        print(
            f"maekit {args.command}: error: out of memory ({first}); lower --batch_size, pick a "
            "smaller --model (or --grad_ckpt on a GPU), or free memory (ulimit -v, other "
            "processes); checkpoints already written are intact",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
