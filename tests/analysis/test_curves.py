"""`maekit plot`: one subplot per logged metric, one line per run, a PNG on disk."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from maekit.analysis.curves import find_metrics, plot_runs, read_log
from maekit.cli import main


def write_log(folder: Path, records: list[dict], tail: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.txt").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return folder


PRETRAIN = [
    {
        "train_loss": 1.0 - 0.1 * e,
        "train_lr": 1e-3 * (e + 1),
        "epoch": e,
        "epoch_time_s": 3.0,
        "wall_time_s": 3.0 * e,
        "train_img_per_s": 50.0,
    }
    for e in range(4)
]
FINETUNE = [
    {"train_loss": 2.0 - 0.2 * e, "train_lr": 5e-4, "test_acc1": 40.0 + e, "epoch": e}
    for e in range(3)
]


def test_one_line_per_metric() -> None:
    runs = {"pre": PRETRAIN}
    assert find_metrics(runs) == ["train_loss", "train_lr"]  # epoch and timings left out
    fig = plot_runs(runs)
    assert [ax.get_title() for ax in fig.axes] == ["train_loss", "train_lr"]
    for ax, key in zip(fig.axes, ["train_loss", "train_lr"], strict=True):
        (line,) = ax.lines
        assert list(line.get_xdata()) == [0, 1, 2, 3]
        assert list(line.get_ydata()) == [r[key] for r in PRETRAIN]


def test_runs_are_overlaid_and_sparse_metrics_kept() -> None:
    knn = [{**r, "knn_acc1": 20.0} if r["epoch"] % 2 else r for r in PRETRAIN]  # every 2nd epoch
    fig = plot_runs({"pre": knn, "ft": FINETUNE})
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert set(by_title) == {"train_loss", "train_lr", "knn_acc1", "test_acc1"}
    assert len(by_title["train_loss"].lines) == len(by_title["train_lr"].lines) == 2
    (knn_line,) = by_title["knn_acc1"].lines
    assert list(knn_line.get_xdata()) == [1, 3]
    assert [line.get_label() for line in by_title["test_acc1"].lines] == ["ft"]
    # a run keeps its color in every subplot, whichever runs the subplot has
    assert by_title["test_acc1"].lines[0].get_color() == by_title["train_loss"].lines[1].get_color()
    assert (
        knn_line.get_color()
        == by_title["train_loss"].lines[0].get_color()
        != by_title["test_acc1"].lines[0].get_color()
    )


def test_incomplete_last_line_is_skipped(tmp_path: Path, capsys) -> None:
    write_log(tmp_path / "run", PRETRAIN, tail='{"train_loss": 0.5, "tra')
    assert len(read_log(tmp_path / "run")) == 4
    assert "incomplete last line" in capsys.readouterr().err


def test_plot_command_writes_a_png(tmp_path: Path, capsys) -> None:
    a = write_log(tmp_path / "a", PRETRAIN)
    b = write_log(tmp_path / "b", FINETUNE)
    assert main(["plot", str(a)]) == 0
    assert Image.open(a / "curves.png").size[0] > 100
    out = tmp_path / "both.png"
    assert (
        main(["plot", str(a), str(b), "--metrics", "train_loss", "wall_time_s", "--out", str(out)])
        == 0
    )
    assert "2 metrics, 2 runs" in capsys.readouterr().out
    assert Image.open(out).format == "PNG"


def test_plot_errors(tmp_path: Path, capsys) -> None:
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "nope has no log.txt (no such folder)" in capsys.readouterr().err
    a = write_log(tmp_path / "a", PRETRAIN)
    assert main(["plot", str(a), "--metrics", "test_acc9"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("maekit plot: error: --metrics test_acc9 not in the logs")
        and "train_loss" in err
    )
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "log.txt").write_text("not json\n{}\n")
    assert main(["plot", str(tmp_path / "bad")]) == 2
    assert "line 1 is not JSON" in capsys.readouterr().err
