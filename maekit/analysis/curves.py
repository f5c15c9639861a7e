"""``maekit plot``: training curves from ``log.txt`` (one JSON object per epoch) as a PNG.

One subplot per metric (train_loss, train_lr, test_acc1, knn_acc1, ...), x = epoch, one
line per run folder, so several runs given together are overlaid. Drawn with matplotlib's
object API on the Agg canvas: no pyplot, no display, no global backend switch.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..config import PlotConfig
from ..errors import MaekitError

# Logged per epoch but not worth a curve by default (ask for them with --metrics).
NOT_PLOTTED = ("epoch", "epoch_time_s", "wall_time_s", "train_img_per_s")


def read_log(path: str | Path) -> list[dict]:
    """The JSON lines of a ``log.txt``. A cut-off last line (a crash mid-write) is skipped."""
    given = Path(path)
    path = given if given.is_file() else given / "log.txt"
    if not path.is_file():
        where = "" if given.is_dir() else " (no such folder)"
        raise MaekitError(
            f"{given} has no log.txt{where}; give run folders written by maekit (--output_dir)"
        )
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                print(f"maekit plot: skipped the incomplete last line of {path}", file=sys.stderr)
                continue
            raise MaekitError(
                f"{path} line {i + 1} is not JSON ({e.msg}); is it a maekit log.txt?"
            ) from e
    return records


def find_metrics(runs: dict[str, list[dict]]) -> list[str]:
    """Numeric keys of the records, first-seen order, without epoch and timings."""
    seen: dict[str, None] = {}
    for records in runs.values():
        for rec in records:
            for k, v in rec.items():
                if k not in NOT_PLOTTED and isinstance(v, int | float) and not isinstance(v, bool):
                    seen.setdefault(k)
    return list(seen)


def plot_runs(runs: dict[str, list[dict]], metrics: list[str] | None = None) -> Figure:
    """A figure with one subplot per metric and one line per run (label = run name)."""
    metrics = metrics or find_metrics(runs)
    if not metrics:
        raise MaekitError("the logs have no numeric metrics to plot")
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        for i, (label, records) in enumerate(runs.items()):
            points = [(r.get("epoch", j), r[metric]) for j, r in enumerate(records) if metric in r]
            if points:
                xs, ys = zip(*points, strict=True)
                # color by run, not by line order, so a run has one color in every subplot
                ax.plot(
                    xs, ys, color=f"C{i % 10}", marker="." if len(xs) < 30 else None, label=label
                )
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if metric.endswith("_lr"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes[len(metrics) :]:
        ax.remove()
    if len(runs) > 1:
        axes[0].legend(fontsize="small")
    return fig


def run_labels(dirs: list[str]) -> list[str]:
    """Folder names; full paths where two runs share a name."""
    names = [Path(d).name or str(d) for d in dirs]
    return [str(d) if names.count(n) > 1 else n for d, n in zip(dirs, names, strict=True)]


def run(cfg: PlotConfig) -> Path:
    """``maekit plot``: read each folder's log.txt, write the PNG, return its path."""
    cfg.validate()
    runs = {
        label: read_log(d)
        for label, d in zip(run_labels(cfg.output_dirs), cfg.output_dirs, strict=True)
    }
    empty = [d for d, recs in zip(cfg.output_dirs, runs.values(), strict=True) if not recs]
    if empty:
        raise MaekitError(f"{', '.join(empty)}: log.txt has no epochs yet")
    known = set(find_metrics(runs)) | {k for recs in runs.values() for r in recs for k in r}
    unknown = [m for m in cfg.metrics if m not in known]
    if unknown:
        raise MaekitError(
            f"--metrics {' '.join(unknown)} not in the logs; they have: "
            + ", ".join(find_metrics(runs))
        )
    out = Path(
        cfg.out
        or (Path(cfg.output_dirs[0]) / "curves.png" if len(cfg.output_dirs) == 1 else "curves.png")
    )
    fig = plot_runs(runs, cfg.metrics or None)
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        raise MaekitError(f"could not write {out}: {e.strerror or e}; choose another --out") from e
    print(f"wrote {out} ({len(fig.axes)} metrics, {len(runs)} run{'s' if len(runs) > 1 else ''})")
    return out
