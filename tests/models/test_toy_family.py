"""A family maekit has never seen (tests/models/toy_family.py, registered here only) passes the
family contract and pre-trains, fine-tunes and linear-probes through the phases unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maekit.config import FinetuneConfig, LinprobeConfig, PretrainConfig
from maekit.errors import MaekitError
from maekit.formats.export import export_timm
from maekit.models.family import family_of_state
from tests.conftest import write_image_folder

from . import toy_family
from .contract import check_structure, check_training


@pytest.fixture
def toy():
    toy_family.register()
    yield toy_family
    toy_family.unregister()


@pytest.mark.parametrize("name", sorted(toy_family.SIZES))
def test_the_toy_family_keeps_the_contract(toy, name: str, tmp_path: Path) -> None:
    check_structure(name)
    check_training(name, tmp_path)


def test_the_toy_family_runs_every_phase(toy, tmp_path: Path) -> None:
    from maekit.phases import finetune, linprobe, pretrain

    data = write_image_folder(tmp_path / "data", classes=2, per_class=8, size=(32, 32))
    common = dict(
        data_path=str(data), input_size=32, batch_size=4, epochs=1, warmup_epochs=0,
        num_workers=0, device="cpu", max_train_step=2,
    )  # fmt: skip
    pretrain.run(
        PretrainConfig(
            model="toy_mae_tiny",
            output_dir=str(tmp_path / "pt"),
            val_frac=0.25,
            vis_freq=1,
            **common,
        )
    )
    ckpt = tmp_path / "pt" / "checkpoint-0.pth"
    assert ckpt.is_file() and (tmp_path / "pt" / "reconstruction-0.png").is_file()
    (data / "val").symlink_to(data / "train")
    for phase, cls, out in ((finetune, FinetuneConfig, "ft"), (linprobe, LinprobeConfig, "lp")):
        history = phase.run(
            cls(
                model="toy_vit_tiny",
                finetune=str(ckpt),
                output_dir=str(tmp_path / out),
                aa="none",
                **common,
            )
            if cls is FinetuneConfig
            else cls(
                model="toy_vit_tiny", finetune=str(ckpt), output_dir=str(tmp_path / out), **common
            )
        )
        assert "test_acc1" in history[-1]


def test_the_toy_family_is_refused_export_in_one_line(toy) -> None:
    state = toy.ToyEncoder().state_dict()
    assert family_of_state(state).name == "toy"
    with pytest.raises(MaekitError, match="^timm has no toy model$"):
        export_timm(state, None)


def test_an_unknown_class_and_unknown_weights_are_one_clear_error() -> None:
    from maekit.engine.optim import layer_rule
    from maekit.models.family import family_of

    with pytest.raises(MaekitError, match="belongs to no registered model family"):
        family_of(torch.nn.Linear(2, 2))
    with pytest.raises(MaekitError, match="no model family maekit knows"):
        family_of_state({"w.weight": torch.zeros(1)})
    with pytest.raises(MaekitError, match="belongs to no registered model family"):
        layer_rule(torch.nn.Linear(2, 2))
