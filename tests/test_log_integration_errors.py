"""The optional logs keep the error contract: wandb that cannot start a run (no API key) and a
TensorBoard that cannot be imported or written stop with one line and exit 2, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from maekit.engine.progress import summary_writer
from maekit.errors import MaekitError
from tests.conftest import assert_one_error_line, run_cli_in_process, write_image_folder

TINY = ["--model", "mae_vit_tiny_patch16", "--input_size", "32", "--patch_size", "8"]
OK = ["--epochs", "1", "--warmup_epochs", "0", "--num_workers", "0", "--device", "cpu"]
OK += ["--batch_size", "4"]


@pytest.fixture
def no_wandb_account(tmp_path: Path, monkeypatch) -> Path:
    """wandb as on a fresh machine: no key, no login (.netrc), online mode."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    return home


def test_log_wandb_without_a_key_is_one_line(tmp_path: Path, no_wandb_account) -> None:
    wandb = pytest.importorskip("wandb")  # the dev extra installs it
    write_image_folder(tmp_path / "data", per_class=2, size=(36, 36))
    argv = ["pretrain", "--data_path", "data", *TINY, *OK, "--output_dir", "out", "--log_wandb"]
    try:
        r = run_cli_in_process(argv, tmp_path)
    finally:
        wandb.teardown()  # the service process a failed init may leave
    assert_one_error_line(r, "pretrain", "--log_wandb")
    line = r.stderr.strip()
    # wandb's own reason, and the ways on
    assert "UsageError" in line and "API key" in line, line
    assert "wandb login" in line and "WANDB_MODE=offline" in line
    assert not list((tmp_path / "out").glob("checkpoint-*.pth"))


def test_any_wandb_init_failure_is_one_line(tmp_path: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")

    def refuse(**kwargs):
        raise wandb.errors.CommError("Run initialization has timed out\nafter 90 seconds")

    monkeypatch.setattr(wandb, "init", refuse)
    write_image_folder(tmp_path / "data", per_class=2, size=(36, 36))
    argv = ["pretrain", "--data_path", "data", *TINY, *OK, "--output_dir", "out", "--log_wandb"]
    r = run_cli_in_process(argv, tmp_path)
    assert_one_error_line(r, "pretrain", "CommError: Run initialization has timed out")
    assert "after 90 seconds" not in r.stderr  # wandb's first line only


def test_tensorboard_missing_or_unwritable_is_one_line(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MaekitError, match="--log_dir .* is not writable"):
        summary_writer(str(blocker / "tb"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(MaekitError, match="pip install 'tensorboard") as e:
        summary_writer(str(tmp_path / "tb"))
    assert "\n" not in str(e.value)
