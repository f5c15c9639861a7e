"""Checkpoint files: round trip, safe loading, atomic saving, resume."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from maekit.checkpoint.rundir import (
    BEST,
    LAST,
    find_resume_checkpoint,
    progress_of,
    prune_checkpoints,
    remove_stale_temp_files,
)
from maekit.config import PretrainConfig
from maekit.engine.train_state import resume_from, save_checkpoint
from maekit.errors import MaekitError
from maekit.files import atomic_copy, atomic_save
from maekit.formats import read_checkpoint


def make_model(seed: int = 0, hidden: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, 2))


def trained(model: nn.Module) -> torch.optim.Optimizer:
    """An AdamW with state (one step taken)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    model(torch.randn(3, 4)).pow(2).mean().backward()
    opt.step()
    return opt


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")
    )


# --------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path):
    model = make_model()
    opt = trained(model)
    args = PretrainConfig(batch_size=8, epochs=3, warmup_epochs=1).to_dict()
    path = tmp_path / "checkpoint-7.pth"
    save_checkpoint(path, model, opt, 7, None, args)

    ckpt = read_checkpoint(path)
    assert set(ckpt) == {"model", "optimizer", "epoch", "scaler", "args"}
    assert ckpt["epoch"] == 7
    assert type(ckpt["args"]) is dict and ckpt["args"] == args
    assert ckpt["scaler"] is None
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    assert ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert ckpt["optimizer"]["state"][0]["exp_avg"].shape == model[0].weight.shape

    # the file is loadable with the safe loader directly (no pickled classes inside)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["epoch"] == 7 and raw["args"]["batch_size"] == 8


def test_enabled_scaler_state_is_saved(tmp_path):
    model = make_model()
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    save_checkpoint(tmp_path / "c.pth", model, None, 0, scaler, {})
    ckpt = read_checkpoint(tmp_path / "c.pth")
    assert ckpt["optimizer"] is None
    assert ckpt["scaler"]["scale"] == pytest.approx(1024.0)


def test_save_unwraps_module_wrappers(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    model = make_model()
    save_checkpoint(tmp_path / "c.pth", Wrapper(model), None, 0, None, {})
    assert set(read_checkpoint(tmp_path / "c.pth")["model"]) == set(model.state_dict())


def test_atomic_save_leaves_no_temp_files(tmp_path):
    atomic_save({"a": torch.arange(3)}, tmp_path / "x.pth")
    atomic_save({"a": torch.arange(4)}, tmp_path / "x.pth")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pth"]
    assert torch.equal(torch.load(tmp_path / "x.pth", weights_only=True)["a"], torch.arange(4))


def test_saved_file_has_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_save({"a": torch.zeros(1)}, tmp_path / "x.pth")
    finally:
        os.umask(umask)
    assert (tmp_path / "x.pth").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- bad files


def _one_line_error(excinfo, path: Path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert path.name in msg
    return msg


def test_read_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(MaekitError) as ei:
        read_checkpoint(path)
    assert "does not exist" in _one_line_error(ei, path)


def test_read_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint at all\n" * 50)
    with pytest.raises(MaekitError) as ei:
        read_checkpoint(path)
    _one_line_error(ei, path)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_read_truncated_checkpoint(tmp_path, keep):
    path = tmp_path / "c.pth"
    save_checkpoint(path, make_model(), None, 1, None, {"x": 1})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(MaekitError) as ei:
        read_checkpoint(path)
    _one_line_error(ei, path)


def test_read_empty_file(tmp_path):
    """A zero-byte file (e.g. a copy interrupted at once) is a MaekitError too."""
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(MaekitError) as ei:
        read_checkpoint(path)
    _one_line_error(ei, path)


def test_read_refuses_pickled_objects(tmp_path):
    """weights_only loading: a pickled non-tensor class is refused, not executed."""
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": Path("/tmp")}, path)
    with pytest.raises(MaekitError):
        read_checkpoint(path)


# --------------------------------------------------------------------------- resume


def test_resume_restores_weights_optimizer_and_next_epoch(tmp_path):
    src = make_model(seed=0)
    opt = trained(src)
    path = tmp_path / "checkpoint-4.pth"
    save_checkpoint(path, src, opt, 4, None, {})

    dst = make_model(seed=1)
    dst_opt = torch.optim.AdamW(dst.parameters(), lr=1.0)
    with pytest.raises(AssertionError):
        assert_same_weights(src, dst)
    assert resume_from(str(path), dst, dst_opt, None)[0] == 5
    assert_same_weights(src, dst)
    assert dst_opt.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert torch.equal(
        dst_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )


def test_resume_restores_scaler(tmp_path):
    model = make_model()
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=64.0)
    save_checkpoint(tmp_path / "c.pth", model, None, 0, scaler, {})
    new = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**16)
    resume_from(str(tmp_path / "c.pth"), make_model(1), None, new)
    assert new.get_scale() == pytest.approx(64.0)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_resume_accepts_wrapper_prefixed_keys(tmp_path, prefix):
    src = make_model(seed=0)
    state = {prefix + k: v for k, v in src.state_dict().items()}
    torch.save({"model": state, "epoch": 9}, tmp_path / "c.pth")
    dst = make_model(seed=3)
    assert resume_from(str(tmp_path / "c.pth"), dst, None, None)[0] == 10
    assert_same_weights(src, dst)


def test_resume_without_model_entry(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "c.pth")
    with pytest.raises(MaekitError, match="model"):
        resume_from(str(tmp_path / "c.pth"), make_model(), None, None)


def test_resume_into_model_with_other_layers(tmp_path):
    save_checkpoint(tmp_path / "c.pth", make_model(), None, 0, None, {})
    other = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2), nn.Linear(2, 2))
    with pytest.raises(MaekitError, match="does not match"):
        resume_from(str(tmp_path / "c.pth"), other, None, None)


def test_resume_into_model_with_other_sizes(tmp_path):
    """Same names, different shapes (e.g. another --input_size or width) is a MaekitError."""
    save_checkpoint(tmp_path / "c.pth", make_model(hidden=8), None, 0, None, {})
    with pytest.raises(MaekitError):
        resume_from(str(tmp_path / "c.pth"), make_model(hidden=16), None, None)


# --------------------------------------------------------------------------- failing saves


def test_save_below_a_regular_file_is_a_maekit_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(MaekitError):
        save_checkpoint(blocker / "checkpoint-0.pth", make_model(), None, 0, None, {})


def test_disk_full_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-0.pth"
    save_checkpoint(path, make_model(0), None, 0, None, {"run": 1})
    before = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(MaekitError, match="No space left on device"):
        save_checkpoint(path, make_model(1), None, 1, None, {"run": 2})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0.pth"]
    assert read_checkpoint(path)["epoch"] == 0


def test_torch_zip_writer_failure_is_one_line_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as a RuntimeError, not an OSError."""
    path = tmp_path / "checkpoint-last.pth"
    save_checkpoint(path, make_model(0), None, 0, None, {"run": 1})
    before = path.read_bytes()

    def zip_writer_full(obj, f, *a, **k):
        f.write(b"PK partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos 5824 vs 5712\n"
            "frame #0: c10::ThrowEnforceNotMet(...)\nframe #1: ..."
        )

    monkeypatch.setattr(torch, "save", zip_writer_full)
    with pytest.raises(MaekitError) as err:
        save_checkpoint(path, make_model(1), None, 1, None, {"run": 2})
    monkeypatch.undo()
    text = str(err.value)
    assert "\n" not in text and "unexpected pos" in text and "full disk" in text
    assert "free disk space" in text
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.pth"]


def test_a_failing_copy_keeps_the_old_periodic_file(tmp_path, monkeypatch):
    import shutil

    src = _save(tmp_path, LAST, 4)
    old = _save(tmp_path, "checkpoint-4.pth", 3)
    before = old.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full)
    monkeypatch.setattr("maekit.files._reflink", lambda *a: False)
    with pytest.raises(MaekitError, match="No space left on device"):
        atomic_copy(src, old)
    assert old.read_bytes() == before and not leftovers(tmp_path)


@pytest.mark.parametrize(
    "ckpt",
    [
        {"epoch": "abc"},
        {"epoch": -5},
        {"epoch": 1.5},
        {"epoch": True},
        {"epoch": 0, "resume": {"epoch": -1}},
        {"epoch": 0, "resume": {"epoch": 1, "step": "x"}},
        {"epoch": 0, "resume": [1, 2]},
    ],
)
def test_progress_of_refuses_a_damaged_epoch(ckpt):
    with pytest.raises(MaekitError, match="integer|not a dict"):
        progress_of(ckpt, "c.pth")


def test_progress_of_accepts_the_official_minus_one():
    assert progress_of({"epoch": -1}) == (0, 0)
    assert progress_of({"epoch": 3, "resume": {"epoch": 4, "step": 7}}) == (4, 7)


def test_nonfinite_entries_names_weights_gradients_and_optimizer_state():
    from maekit.engine.train_state import nonfinite_entries

    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert nonfinite_entries(module=model, optimizer=opt) == []
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    assert nonfinite_entries(module=model, optimizer=opt) == ["0.weight"]
    with torch.no_grad():
        model[0].weight[0, 0] = 1.0
    model[2].bias.grad[0] = float("inf")
    assert nonfinite_entries(module=model, optimizer=opt) == ["2.bias (gradient)"]
    model[2].bias.grad = None
    state = next(iter(opt.state.values()))
    state["exp_avg_sq"].view(-1)[0] = float("inf")
    bad = nonfinite_entries(module=model, optimizer=opt)
    assert len(bad) == 1 and bad[0].endswith("exp_avg_sq")
    # large but finite values: the L2 norm overflows, the element-wise re-check clears them
    state["exp_avg_sq"].view(-1)[0] = 3e38
    assert nonfinite_entries(module=model, optimizer=opt) == []


def test_interrupt_during_save_is_reraised_and_cleaned(tmp_path, monkeypatch):
    def interrupted(obj, f, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": 1}, tmp_path / "x.pth")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- crash safety


def _save(folder: Path, name: str, epoch: int, resume: dict | None = None) -> Path:
    model = make_model(seed=epoch)
    extra = {"resume": resume} if resume is not None else None
    save_checkpoint(folder / name, model, None, epoch, None, {}, extra=extra)
    return folder / name


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_keep_last_prunes_old_periodic_checkpoints_only(tmp_path):
    for e in range(5):
        _save(tmp_path, f"checkpoint-{e}.pth", e)
    _save(tmp_path, LAST, 4)
    _save(tmp_path, BEST, 2)
    removed = prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == [
        "checkpoint-0.pth",
        "checkpoint-1.pth",
        "checkpoint-2.pth",
    ]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "checkpoint-3.pth",
        "checkpoint-4.pth",
        BEST,
        LAST,
    ]
    assert prune_checkpoints(tmp_path, None) == []  # default: keep everything


def test_atomic_copy_is_independent_of_its_source(tmp_path):
    src = _save(tmp_path, LAST, 3)
    atomic_copy(src, tmp_path / "checkpoint-3.pth")
    assert (tmp_path / "checkpoint-3.pth").read_bytes() == src.read_bytes()
    # Not a second name of the same bytes: damage to last leaves the periodic copy intact.
    assert os.stat(src).st_ino != os.stat(tmp_path / "checkpoint-3.pth").st_ino
    _truncate(src)
    assert read_checkpoint(tmp_path / "checkpoint-3.pth")["epoch"] == 3
    assert not leftovers(tmp_path)


def test_find_resume_prefers_the_furthest_progress(tmp_path):
    _save(tmp_path, "checkpoint-0.pth", 0)
    _save(tmp_path, "checkpoint-1.pth", 1)
    _save(tmp_path, LAST, 1, resume={"epoch": 2, "step": 5})  # mid-epoch stop in epoch 2
    path, ckpt = find_resume_checkpoint(tmp_path)
    assert path.name == LAST and progress_of(ckpt) == (2, 5)


def test_find_resume_takes_a_periodic_file_newer_than_last(tmp_path):
    _save(tmp_path, LAST, 1)
    _save(tmp_path, "checkpoint-2.pth", 2)  # killed before last was rewritten
    path, ckpt = find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint-2.pth" and progress_of(ckpt) == (3, 0)


def test_find_resume_skips_damaged_files_with_a_warning(tmp_path, capsys):
    _save(tmp_path, "checkpoint-0.pth", 0)
    _truncate(_save(tmp_path, "checkpoint-1.pth", 1))
    _truncate(_save(tmp_path, LAST, 1))
    (tmp_path / "checkpoint-2.pth").write_bytes(b"")
    path, ckpt = find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint-0.pth" and ckpt["epoch"] == 0
    err = capsys.readouterr().err
    assert err.count("skipping damaged checkpoint") == 3
    assert (tmp_path / LAST).exists()  # damaged files are reported, never deleted


def test_find_resume_in_an_empty_folder(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    _truncate(_save(tmp_path, LAST, 0))
    assert find_resume_checkpoint(tmp_path) is None


def test_stale_temp_files_of_interrupted_saves_are_removed(tmp_path):
    (tmp_path / ".checkpoint-3.pth.abc.tmp").write_bytes(b"partial")
    keep = _save(tmp_path, "checkpoint-2.pth", 2)
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == [".checkpoint-3.pth.abc.tmp"]
    assert keep.exists() and not leftovers(tmp_path)
