"""The path one `maekit pretrain` run takes through the package, and the longest functions.

    python3 benchmarks/run_path.py [--steps 2] [--json OUT]

Runs a tiny pre-training in this process (Fashion-MNIST if installed, else generated images)
under a profile hook that records every call into a maekit module, then prints:

- the modules in the order the run first enters them;
- the package-level path (consecutive calls in one package collapsed), up to the first training
  step, and how many times it climbs back up (a call from a lower layer into a higher one, by the
  order cli > bench > phases > analysis > engine > data > checkpoint > formats > models > rest);
- the longest functions of the package (source lines, decorators included).

Made for issue 19's before/after figures; it measures structure, not speed.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORDER = ["cli", "bench", "phases", "analysis", "engine", "data", "checkpoint", "formats", "models"]


def module_of(filename: str) -> str | None:
    path = Path(filename)
    try:
        rel = path.resolve().relative_to(ROOT / "maekit")
    except ValueError:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["maekit", *parts])


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "maekit"


def rank(package: str) -> int:
    return ORDER.index(package) if package in ORDER else len(ORDER)


def longest_functions(top: int) -> list[tuple[int, str]]:
    out = []
    for path in sorted((ROOT / "maekit").rglob("*.py")):
        tree = ast.parse(path.read_text())
        mod = module_of(str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                out.append((node.end_lineno - start + 1, f"{mod}.{node.name}"))
    return sorted(out, reverse=True)[:top]


# The function that runs the phase: the pretrain phase's run() (before issue 19 the skeleton
# lived there), or engine.run.run (after).
RUNNERS = {("maekit.phases.pretrain", "run"), ("maekit.engine.run", "run")}


def trace_pretrain(steps: int) -> tuple[list[str], list[str], list[str]]:
    """(modules in first-entry order, package path up to the first training step, the calls
    the phase's runner makes, in order)."""
    from maekit.cli import main

    first: list[str] = []
    seen: set[str] = set()
    skeleton: list[str] = []
    path: list[str] = []
    state = {"training": False}

    def hook(frame, event, _arg):
        if event != "call":
            return
        mod = module_of(frame.f_code.co_filename)
        # module and class bodies run at import: not the run's path (functions are "optimized")
        if mod is None or not frame.f_code.co_flags & inspect.CO_OPTIMIZED:
            return
        caller = frame.f_back
        if (
            caller is not None
            and (module_of(caller.f_code.co_filename), caller.f_code.co_name) in RUNNERS
        ):
            name = f"{mod}.{frame.f_code.co_qualname}"
            if (mod, frame.f_code.co_name) not in RUNNERS and (
                not skeleton or skeleton[-1] != name
            ):
                skeleton.append(name)
        if mod not in seen:
            seen.add(mod)
            first.append(mod)
        if frame.f_code.co_name in ("train_one_epoch", "train_epoch", "forward_backward_step"):
            state["training"] = True
        if not state["training"]:
            pkg = package_of(mod)
            if not path or path[-1] != pkg:
                path.append(pkg)

    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            "pretrain",
            "--model",
            "mae_vit_tiny_patch16",
            "--input_size",
            "28",
            "--patch_size",
            "4",
            "--batch_size",
            "16",
            "--epochs",
            "1",
            "--max_train_step",
            str(steps),
            "--max_train_images",
            "64",
            "--num_workers",
            "0",
            "--output_dir",
            f"{tmp}/run",
            "--device",
            "cpu",
        ]
        sys.setprofile(hook)
        try:
            main(argv)
        except SystemExit as e:
            if e.code:
                raise
        finally:
            sys.setprofile(None)
    return first, path, skeleton


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    first, path, skeleton = trace_pretrain(args.steps)
    climbs = sum(rank(b) < rank(a) for a, b in zip(path, path[1:], strict=False))
    longest = longest_functions(args.top)
    print(f"modules entered, in order ({len(first)}):")
    for m in first:
        print(f"  {m}")
    print(f"\nthe calls the runner makes ({len(skeleton)}):")
    for name in skeleton:
        print(f"  {name}")
    print(f"\npackage path to the first training step ({len(path)} hops, {climbs} climbs back up):")
    print("  " + " -> ".join(path))
    print("\nlongest functions (lines):")
    for n, name in longest:
        print(f"  {n:4d}  {name}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "modules": first,
                    "runner_calls": skeleton,
                    "path": path,
                    "climbs": climbs,
                    "longest": longest,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
