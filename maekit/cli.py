"""``maekit`` command line: one sub-command per phase, flags generated from the phase config."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import (
    ExtractConfig,
    FinetuneConfig,
    KnnConfig,
    LinprobeConfig,
    PlotConfig,
    PretrainConfig,
    VisualizeConfig,
    add_config_flags,
    config_from_args,
)
from .errors import MaekitError

PHASES = {
    "pretrain": (PretrainConfig, "MAE pre-training (official recipe)", "maekit.phases.pretrain"),
    "finetune": (
        FinetuneConfig,
        "end-to-end fine-tuning (official recipe)",
        "maekit.phases.finetune",
    ),
    "linprobe": (
        LinprobeConfig,
        "linear probing of a frozen encoder (official recipe)",
        "maekit.phases.linprobe",
    ),
}
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
}
COMMANDS = {**PHASES, **TOOLS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maekit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"maekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, help_text, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
        add_config_flags(p, cls)
    sub.add_parser("models", help="list registered model names")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            from .models import get_entry, list_models

            for name in list_models():
                print(f"{name:32s} {get_entry(name).kind}")
            return 0
        cls, _, module = COMMANDS[args.command]
        import importlib

        cfg = config_from_args(cls, args)
        cfg.validate()  # before the heavy imports, so flag errors come back at once
        importlib.import_module(module).run(cfg)
        return 0
    except MaekitError as e:
        print(f"maekit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"maekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
