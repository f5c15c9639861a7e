"""--config FILE / recipe:NAME, --print_config, `maekit recipes`: the shipped recipes resolve to
the published numbers, flags override files, bad keys and names get one line and exit 2."""

from __future__ import annotations

import json

import pytest
import yaml

from maekit.cli import COMMANDS, build_parser, main, resolved_view
from maekit.config import FinetuneConfig, PretrainConfig
from maekit.config.flags import config_from_args
from maekit.recipes import load_recipe, recipe_names

# The published rows (recipes.md: MAE PRETRAIN/FINETUNE/LINPROBE, ConvMAE, PLSC), typed in
# independently of the YAML files: command, effective batch, blr, epochs, warm-up, then
# finetune: layer decay, drop path, mixup, cutmix; pretrain: mask ratio; and the reported top-1.
PRE = {"blr": 1.5e-4, "warmup_epochs": 40, "mask_ratio": 0.75, "norm_pix_loss": True}
FT = {"warmup_epochs": 5, "mixup": 0.8, "cutmix": 1.0}
LP = {"blr": 0.1, "epochs": 90, "warmup_epochs": 10, "weight_decay": 0.0}
PUBLISHED = {
    "mae_vit_base_pretrain_800": ("pretrain", 4096, {**PRE, "epochs": 800}, None),
    "mae_vit_base_pretrain_1600": (
        "pretrain",
        4096,
        {**PRE, "epochs": 1600},
        {"finetune": 83.6, "linprobe": 67.8},
    ),
    "mae_vit_large_pretrain_800": ("pretrain", 4096, {**PRE, "epochs": 800}, None),
    "mae_vit_large_pretrain_1600": (
        "pretrain",
        4096,
        {**PRE, "epochs": 1600},
        {"finetune": 85.9, "linprobe": 76.0},
    ),
    "mae_vit_huge_pretrain_800": ("pretrain", 4096, {**PRE, "epochs": 800}, None),
    "mae_vit_huge_pretrain_1600": (
        "pretrain",
        4096,
        {**PRE, "epochs": 1600},
        {"finetune": 86.9, "linprobe": 77.2},
    ),
    "mae_vit_base_finetune": (
        "finetune",
        1024,
        {**FT, "epochs": 100, "blr": 5e-4, "layer_decay": 0.65, "drop_path": 0.1},
        83.6,
    ),
    "mae_vit_large_finetune": (
        "finetune",
        1024,
        {**FT, "epochs": 50, "blr": 1e-3, "layer_decay": 0.75, "drop_path": 0.2},
        85.9,
    ),
    "mae_vit_huge_finetune": (
        "finetune",
        1024,
        {**FT, "epochs": 50, "blr": 1e-3, "layer_decay": 0.75, "drop_path": 0.3},
        86.9,
    ),
    "mae_vit_base_linprobe": ("linprobe", 16384, LP, 67.8),
    "mae_vit_large_linprobe": ("linprobe", 16384, LP, 76.0),
    "mae_vit_huge_linprobe": ("linprobe", 16384, LP, 77.2),
    "convmae_base_pretrain_1600": (
        "pretrain",
        3072,
        {**PRE, "epochs": 1600},
        {"finetune": 85.0, "linprobe": 70.9},
    ),
    "convmae_base_finetune": (
        "finetune",
        1024,
        {
            **FT,
            "epochs": 100,
            "blr": 5e-4,
            "layer_decay": 0.65,
            "drop_path": 0.1,
            "layer_decay_rule": "official",
        },
        85.0,
    ),
    "convmae_base_linprobe": ("linprobe", 16384, LP, 70.9),
    "plsc_mae_vit_base_pretrain_1600": (
        "pretrain",
        4096,
        {**PRE, "epochs": 1600},
        {"finetune": 83.34, "linprobe": 68.08},
    ),
    "plsc_mae_vit_base_finetune": (
        "finetune",
        1024,
        {**FT, "epochs": 100, "blr": 5e-4, "layer_decay": 0.65, "drop_path": 0.1},
        83.34,
    ),
    "plsc_mae_vit_base_linprobe": ("linprobe", 16384, LP, 68.08),
    "plsc_convmae_base_finetune": (
        "finetune",
        1024,
        {
            **FT,
            "epochs": 100,
            "blr": 5e-4,
            "layer_decay": 0.65,
            "drop_path": 0.1,
            "layer_decay_rule": "plsc",
        },
        None,
    ),
    "plsc_convmae_base_linprobe": ("linprobe", 16384, LP, 71.4),
}
MODELS = {
    "pretrain": {
        "vit_base": "mae_vit_base_patch16",
        "vit_large": "mae_vit_large_patch16",
        "vit_huge": "mae_vit_huge_patch14",
        "convmae": "convmae_convvit_base_patch16",
    },
    "other": {
        "vit_base": ("vit_base_patch16", "maevit_base_patch16"),
        "vit_large": ("vit_large_patch16",),
        "vit_huge": ("vit_huge_patch14",),
        "convmae": ("convvit_base_patch16",),
    },
}


def parse(argv: list[str]):
    """What `maekit ARGV` would run with (the CLI's two-step parse), as a config object."""
    ns = build_parser().parse_args(argv)
    if ns.config:
        from maekit.config.files import flag_values, read_mapping

        data, spec = read_mapping(ns.config)
        values = flag_values(data, COMMANDS[ns.command][0], ns.command, spec)
        ns = build_parser({ns.command: values}).parse_args(argv)
    return config_from_args(COMMANDS[ns.command][0], ns)


def test_every_published_row_is_shipped():
    assert sorted(PUBLISHED) == recipe_names()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_recipe_resolves_to_the_published_numbers(name):
    command, eff_batch, numbers, top1 = PUBLISHED[name]
    data = load_recipe(name)
    meta = data["recipe"]
    assert meta["command"] == command and meta["top1"] == top1
    cfg = parse([command, "--config", f"recipe:{name}"])
    cfg.validate()
    # The published run's process count gives the published effective batch and absolute lr.
    resolved = resolved_view(cfg, meta["world_size"], data)["resolved"]
    assert resolved["effective_batch"] == eff_batch
    assert resolved["lr"] == pytest.approx(numbers["blr"] * eff_batch / 256)
    assert "note" not in resolved
    for key, value in numbers.items():
        assert (
            getattr(cfg, key) == pytest.approx(value)
            if isinstance(value, float)
            else getattr(cfg, key) == value
        ), key
    family = (
        "convmae"
        if "convmae" in name
        else next(f"vit_{s}" for s in ("base", "large", "huge") if s in name)
    )
    if command == "pretrain":
        assert cfg.model == MODELS["pretrain"][family]
    else:
        assert cfg.model in MODELS["other"][family]
    if command == "finetune":  # the official fine-tuning defaults the rows do not change
        assert (cfg.smoothing, cfg.reprob, cfg.min_lr, cfg.weight_decay) == (0.1, 0.25, 1e-6, 0.05)
        assert cfg.use_global_pool()
    if command == "linprobe":
        assert cfg.use_global_pool() == ("convmae" in name)  # ConvMAE probes the pooled tokens


def test_vit_huge_finetune_is_the_official_layout():
    """FINETUNE.md's ViT-H script: --nodes 8 (x 8 GPUs) --batch_size 16, not 32 x 32."""
    r = load_recipe("mae_vit_huge_finetune")
    assert (r["batch_size"], r["recipe"]["world_size"]) == (16, 64)
    assert "16 x 64 processes" in r["recipe"]["description"]


def test_print_config_resolves_for_this_launch(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert (
        main(
            [
                "pretrain",
                "--config",
                "recipe:mae_vit_base_pretrain_1600",
                "--accum_iter",
                "4",
                "--print_config",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    view = yaml.safe_load(out)
    assert view["resolved"]["effective_batch"] == 64 * 4 * 8
    assert view["resolved"]["lr"] == pytest.approx(1.5e-4 * 2048 / 256)
    assert view["resolved"]["recipe_effective_batch"] == 4096
    assert "--accum_iter 8" in view["resolved"]["note"]  # how to get the published batch back
    assert view["epochs"] == 1600 and view["accum_iter"] == 4


def test_printed_config_reads_back_to_the_same_config(tmp_path, capsys):
    argv = ["finetune", "--config", "recipe:mae_vit_large_finetune", "--batch_size", "16"]
    assert main([*argv, "--print_config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert parse(["finetune", "--config", str(printed)]) == parse(argv)


def test_command_line_flags_override_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    # YAML 1.1 reads 5e-4 as a string: it still becomes the float flag value
    f.write_text("epochs: 7\nblr: 5e-4\nnorm_pix_loss: true\nmask_ratio: 0.6\n")
    cfg = parse(["pretrain", "--config", str(f), "--epochs", "3", "--no_norm_pix_loss"])
    assert (cfg.epochs, cfg.norm_pix_loss, cfg.mask_ratio) == (3, False, 0.6)
    assert cfg.blr == pytest.approx(5e-4) and isinstance(cfg.blr, float)
    assert cfg.batch_size == PretrainConfig().batch_size  # neither file nor flag: the default


def test_a_runs_config_json_resolves_to_the_same_config(tmp_path):
    """config.json as run.prepare_run writes it (every field + the `resolved` block)."""
    cfg = FinetuneConfig(
        model="vit_small_patch16",
        epochs=3,
        blr=2e-3,
        lr=None,
        cutmix_minmax=[0.2, 0.8],
        mixup=0.8,
        global_pool=True,
        clip_grad=1.0,
        output_dir=str(tmp_path / "run"),
    )
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({**cfg.to_dict(), "resolved": {"lr": 1e-3, "world_size": 1}}, indent=2)
    )
    assert parse(["finetune", "--config", str(path)]) == cfg


def run_main(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_unknown_key_names_the_nearest_valid_one(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nblrr: 1.0e-3\nmask_ration: 0.5\n")
    code, err = run_main(["pretrain", "--config", str(f)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert (
        "'blrr' (did you mean 'blr'?)" in err
        and "'mask_ration' (did you mean 'mask_ratio'?)" in err
    )


def test_unknown_recipe_lists_them(capsys):
    code, err = run_main(["pretrain", "--config", "recipe:mae_vit_giant_pretrain"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "unknown recipe 'mae_vit_giant_pretrain'" in err
    assert all(name in err for name in PUBLISHED)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs: 2.5\n", "epochs: expected int"),
        ("norm_pix_loss: 'yes'\n", "norm_pix_loss: expected bool"),
        ("amp: fp8\n", "amp: 'fp8' is not one of"),
        ("epochs: null\n", "epochs cannot be null"),
        ("- epochs\n", "expected a mapping"),
        ("epochs: [1\n", "not valid YAML"),
    ],
)
def test_bad_values_in_the_file(tmp_path, capsys, text, expected):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    code, err = run_main(["pretrain", "--config", str(f)], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_recipe_of_another_command_and_missing_file(tmp_path, capsys):
    code, err = run_main(["linprobe", "--config", "recipe:mae_vit_base_finetune"], capsys)
    assert code == 2 and "`maekit finetune --config recipe:mae_vit_base_finetune`" in err
    code, err = run_main(["pretrain", "--config", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and "no such file" in err


@pytest.mark.parametrize("val_frac", ["0", "0.6", "-0.1"])
def test_val_frac_out_of_range(capsys, val_frac):
    code, err = run_main(["pretrain", "--val_frac", val_frac, "--print_config"], capsys)
    assert code == 2 and f"--val_frac must be in (0, 0.5], got {float(val_frac)}" in err


def test_recipes_command_lists_names_and_top1(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("mae_vit_large_finetune "))
    assert "1024 (32 procs)" in line and "85.9" in line
    assert len([x for x in out.splitlines() if x.split()[0] in PUBLISHED]) == len(PUBLISHED)


def test_config_works_for_the_tools_too(tmp_path):
    f = tmp_path / "knn.json"
    f.write_text(json.dumps({"k": 5, "max_bank": 100, "pool": "mean"}))
    cfg = parse(["knn", "--config", str(f), "--random_init", "--model", "mae_vit_tiny_patch16"])
    assert (cfg.k, cfg.max_bank, cfg.pool, cfg.random_init) == (5, 100, "mean", True)


def test_knn_baseline_needs_the_knn_monitor(capsys):
    code, err = run_main(["pretrain", "--knn_baseline", "--print_config"], capsys)
    assert code == 2 and "add --knn_eval_freq N" in err
    assert main(["pretrain", "--knn_baseline", "--knn_eval_freq", "4", "--print_config"]) == 0


# The arguments each command needs before --print_config can run (positionals, the checkpoint a
# tool reads: not opened by --print_config). A command missing here fails the test below.
PRINT_CONFIG_ARGS = {
    "pretrain": [],
    "finetune": [],
    "linprobe": [],
    "visualize": ["--checkpoint", "ckpt.pth", "--images", "a.png"],
    "plot": ["run_a", "run_b"],
    "extract": ["--checkpoint", "ckpt.pth", "--out", "features.npy"],
    "knn": ["--checkpoint", "ckpt.pth"],
    "shard": ["src", "dst"],
    "stats": [],
    "bench": [],
}


@pytest.mark.parametrize("command", sorted(__import__("maekit.cli").cli.COMMANDS))
def test_every_command_prints_its_config_as_yaml_that_reads_back(command, capsys, tmp_path):
    """Issue 30: every command's --help offers --print_config; it exits 0 with YAML holding every
    field of the command's config (positionals stay on the command line), and --config reads that YAML back to the same YAML."""
    import dataclasses

    from maekit.cli import COMMANDS

    assert command in PRINT_CONFIG_ARGS, f"add the arguments `maekit {command}` needs"
    argv = [command, *PRINT_CONFIG_ARGS[command], "--print_config"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    view = yaml.safe_load(printed)
    fields = {
        f.name for f in dataclasses.fields(COMMANDS[command][0]) if not f.metadata.get("positional")
    }
    assert fields <= set(view), sorted(fields - set(view))
    (tmp_path / "c.yaml").write_text(printed)
    assert main([*argv, "--config", str(tmp_path / "c.yaml")]) == 0
    again = capsys.readouterr().out
    assert yaml.safe_load(again) == view
