"""PretrainConfig: official flag names, defaults, boolean flags, validation."""

from __future__ import annotations

import dataclasses

import pytest

from maekit.cli import build_parser
from maekit.config import FinetuneConfig, LinprobeConfig, PretrainConfig
from maekit.config.flags import config_from_args
from maekit.errors import MaekitError

OFFICIAL_PRETRAIN_FLAGS = """
batch_size epochs accum_iter model input_size mask_ratio norm_pix_loss weight_decay lr blr
min_lr warmup_epochs data_path output_dir log_dir device seed resume start_epoch num_workers
pin_mem world_size local_rank dist_url
""".split()
PLSC_FLAGS = ["max_train_step", "print_freq"]


@pytest.fixture(scope="module")
def pretrain_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["pretrain"]


def parse(*argv: str) -> PretrainConfig:
    ns = build_parser().parse_args(["pretrain", *argv])
    return config_from_args(PretrainConfig, ns)


def test_every_official_flag_exists(pretrain_parser):
    options = set(pretrain_parser._option_string_actions)
    missing = [f for f in OFFICIAL_PRETRAIN_FLAGS + PLSC_FLAGS if f"--{f}" not in options]
    assert not missing
    assert "--no_pin_mem" in options


def test_every_field_is_a_flag_and_official_names_are_fields(pretrain_parser):
    options = set(pretrain_parser._option_string_actions)
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    assert {f for f in fields if f"--{f}" not in options} == set()
    assert set(OFFICIAL_PRETRAIN_FLAGS + PLSC_FLAGS) <= fields


def test_defaults_are_the_official_script_defaults():
    cfg = parse()
    assert cfg == PretrainConfig()
    assert (cfg.batch_size, cfg.epochs, cfg.accum_iter) == (64, 400, 1)
    assert cfg.blr == pytest.approx(1e-3) and cfg.lr is None
    assert cfg.weight_decay == pytest.approx(0.05)
    assert cfg.warmup_epochs == 40 and cfg.min_lr == 0.0
    assert cfg.mask_ratio == pytest.approx(0.75)
    assert cfg.norm_pix_loss is False and cfg.pin_mem is True
    assert cfg.model == "mae_vit_large_patch16" and cfg.input_size == 224
    assert cfg.clip_grad is None and cfg.max_train_step is None
    cfg.validate()


def test_values_are_parsed_with_their_types():
    cfg = parse(
        "--batch_size",
        "8",
        "--lr",
        "0.003",
        "--clip_grad",
        "1.5",
        "--max_train_step",
        "7",
        "--mask_ratio",
        "0.6",
        "--resume",
        "ck.pth",
        "--log_dir",
        "tb",
    )
    assert cfg.batch_size == 8 and isinstance(cfg.batch_size, int)
    assert cfg.lr == pytest.approx(0.003) and isinstance(cfg.lr, float)
    assert cfg.clip_grad == pytest.approx(1.5)
    assert cfg.max_train_step == 7
    assert cfg.mask_ratio == pytest.approx(0.6)
    assert (cfg.resume, cfg.log_dir) == ("ck.pth", "tb")


@pytest.mark.parametrize(
    ("argv", "pin_mem"), [((), True), (("--pin_mem",), True), (("--no_pin_mem",), False)]
)
def test_pin_mem_flags(argv, pin_mem):
    assert parse(*argv).pin_mem is pin_mem


@pytest.mark.parametrize(
    ("argv", "value"),
    [((), False), (("--norm_pix_loss",), True), (("--no_norm_pix_loss",), False)],
)
def test_norm_pix_loss_flags(argv, value):
    assert parse(*argv).norm_pix_loss is value


def test_pin_mem_then_no_pin_mem_the_last_wins():
    assert parse("--pin_mem", "--no_pin_mem").pin_mem is False
    assert parse("--no_pin_mem", "--pin_mem").pin_mem is True


def test_amp_choices():
    assert parse("--amp", "bf16").amp == "bf16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--amp", "fp8"])


def test_to_dict_is_plain():
    d = PretrainConfig().to_dict()
    assert type(d) is dict and d["mask_ratio"] == 0.75
    assert all(isinstance(v, str | int | float | bool | type(None)) for v in d.values())


@pytest.mark.parametrize(
    "overrides",
    [
        {"mask_ratio": 1.0},
        {"mask_ratio": -0.1},
        {"mask_ratio": 1.5},
        {"batch_size": 0},
        {"batch_size": -4},
        {"epochs": 0},
        {"num_workers": -1},
        {"accum_iter": 0},
        {"input_size": 0},
        {"blr": 0.0},
        {"lr": -1.0},
        {"warmup_epochs": -1.0},
        {"max_train_step": 0},
        {"patch_size": 0},
        # issue 18: non-finite and meaningless float flags
        {"mask_ratio": 0.0},
        {"blr": float("inf")},
        {"lr": float("nan")},
        {"weight_decay": float("nan")},
        {"min_lr": float("inf")},
        {"warmup_epochs": float("nan")},
        {"clip_grad": float("inf")},
        {"clip_grad": -1.0},
        {"clip_grad": 0.0},
        {"weight_decay": -0.1},
        {"min_lr": 0.5, "lr": 0.1},
        {"max_pixels": 0},
    ],
)
def test_validate_rejects(overrides):
    cfg = PretrainConfig(**{"epochs": 100, **overrides})
    with pytest.raises(MaekitError) as ei:
        cfg.validate()
    assert f"--{next(iter(overrides))}" in str(ei.value)


@pytest.mark.parametrize("mask_ratio", [0.01, 0.75, 0.99])
def test_validate_accepts_mask_ratio_in_range(mask_ratio):
    PretrainConfig(mask_ratio=mask_ratio, num_workers=0).validate()


@pytest.mark.parametrize(
    "cls,field",
    [
        (FinetuneConfig, "layer_decay"),
        (FinetuneConfig, "smoothing"),
        (FinetuneConfig, "cutmix_minmax"),
        (LinprobeConfig, "blr"),
    ],
)
def test_every_float_flag_must_be_finite(cls, field):
    value = [0.1, float("nan")] if field == "cutmix_minmax" else float("inf")
    with pytest.raises(MaekitError, match=f"--{field} must be a finite number"):
        cls(**{field: value}).validate()
