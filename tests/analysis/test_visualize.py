"""Reconstruction grid: layout, exact visible pixels, norm-pix de-normalisation, the command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maekit.analysis.visualize import (
    MASK_GREY,
    denormalize_patches,
    from_uint8,
    grid_columns,
    normalize_patches,
    reconstruct,
    render_grid,
    to_uint8,
)
from maekit.cli import main
from maekit.models import create_model
from maekit.models.masking import patchify, unpatchify
from tests.analysis.conftest import write_finetune_checkpoint, write_mae_checkpoint
from tests.conftest import write_image_folder


def tiny_mae(norm_pix_loss: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "mae_vit_tiny_patch16", img_size=32, patch_size=8, norm_pix_loss=norm_pix_loss
    )


def random_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_grid_size_and_pixel_layout(tmp_path: Path) -> None:
    original = random_images(3)
    recon, mask_px = reconstruct(tiny_mae(), from_uint8(original), mask_ratio=0.75, seed=1)
    columns = grid_columns(original, to_uint8(recon), mask_px.numpy())
    picture, layout = render_grid(columns, "a title", scale=2, pad=4)
    picture.save(tmp_path / "g.png")
    png = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))  # what a user gets back

    cell = 64  # 32 px x scale 2
    assert picture.size == (4 * cell + 5 * 4, layout.top + 3 * cell + 4 * 4)
    assert png.shape == (picture.size[1], picture.size[0], 3) and layout.top > 0
    for r in range(3):
        x0, y0, x1, y1 = layout.cell_box(r, 0)
        cells = [png[y0:y1, x0 + c * (cell + 4) : x1 + c * (cell + 4)] for c in range(4)]
        removed = mask_px[r].numpy().repeat(2, 0).repeat(2, 1)  # at the upscaled size
        # 16 patches of 8x8, 12 removed, each patch removed as a whole
        per_patch = mask_px[r].reshape(4, 8, 4, 8).permute(0, 2, 1, 3).reshape(16, 64)
        assert (per_patch.all(1) | ~per_patch.any(1)).all() and per_patch.all(1).sum() == 12
        assert np.array_equal(cells[0], original[r].repeat(2, 0).repeat(2, 1))
        assert np.array_equal(
            cells[3][~removed], cells[0][~removed]
        )  # visible: the original, exactly
        assert np.array_equal(cells[3][removed], cells[2][removed])  # removed: the reconstruction
        assert (cells[1][removed] == MASK_GREY).all()
        assert np.array_equal(cells[1][~removed], cells[0][~removed])
        assert not np.array_equal(cells[2], cells[0])  # the model's output, not a copy


def test_denormalisation_round_trip() -> None:
    patches = torch.randn(2, 16, 192) * 3 + 1
    assert torch.allclose(
        denormalize_patches(normalize_patches(patches), patches), patches, atol=1e-5
    )
    # normalize_patches is the model's norm-pix target: predicting it gives zero loss.
    model = tiny_mae(norm_pix_loss=True)
    imgs = from_uint8(random_images(2))
    target = normalize_patches(patchify(imgs, 8))
    assert model.forward_loss(imgs, target, torch.ones(2, 16)).item() < 1e-10


class OracleMAE(torch.nn.Module):
    """Predicts the perfect norm-pix target: a correct de-normalisation gives back the input."""

    patch_size = 8

    def __init__(self, norm_pix_loss: bool) -> None:
        super().__init__()
        self.norm_pix_loss = norm_pix_loss

    def patchify(self, imgs):
        return patchify(imgs, 8)

    def unpatchify(self, x):
        return unpatchify(x, 8)

    def forward(self, imgs, mask_ratio, noise):
        mask = (noise > noise.median(dim=1, keepdim=True).values).float()
        return torch.zeros(()), normalize_patches(self.patchify(imgs)), mask


def test_norm_pix_predictions_are_denormalised_with_each_patch_stats() -> None:
    imgs = from_uint8(random_images(2))
    recon, _ = reconstruct(OracleMAE(norm_pix_loss=True), imgs, 0.5, seed=0)
    assert torch.allclose(recon, imgs, atol=1e-4)
    garbled, _ = reconstruct(OracleMAE(norm_pix_loss=False), imgs, 0.5, seed=0)
    assert not torch.allclose(garbled, imgs, atol=0.1)


def write_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(random_images(n, size=40, seed=3)):
        paths.append(str(folder / f"img{i}.{'png' if i % 2 else 'jpg'}"))
        Image.fromarray(arr[:, :36]).save(paths[-1])  # not square: resized and centre-cropped
    return paths


def test_visualize_command_reads_sizes_from_the_checkpoint(
    tmp_path: Path, mae_checkpoint, capsys
) -> None:
    images = write_images(tmp_path / "imgs", 2)
    out2, out3 = tmp_path / "two.png", tmp_path / "three.png"
    assert (
        main(
            [
                "visualize",
                "--checkpoint",
                str(mae_checkpoint),
                "--images",
                *images,
                "--out",
                str(out2),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "de-normalised with each patch's own mean/var" in capsys.readouterr().out
    data = write_image_folder(tmp_path / "data", classes=2, per_class=3)
    assert (
        main(
            [
                "visualize",
                "--checkpoint",
                str(mae_checkpoint),
                "--data_path",
                str(data),
                "--num_images",
                "3",
                "--out",
                str(out3),
                "--device",
                "cpu",
                "--no_norm_pix_loss",
                "--mask_ratio",
                "0.5",
            ]
        )
        == 0
    )
    assert "predictions shown as they are" in capsys.readouterr().out
    w2, h2 = Image.open(out2).size
    w3, h3 = Image.open(out3).size
    cell = 32 * 4  # 32 px from the checkpoint's args, upscaled to at least 112 px
    assert w2 == w3 == 4 * cell + 5 * 4
    assert h3 - h2 == cell + 4  # one more row


@pytest.mark.parametrize("kind", ["finetune", "encoder_only"])
def test_visualize_needs_the_decoder(tmp_path: Path, capsys, kind: str) -> None:
    if kind == "finetune":
        ckpt = write_finetune_checkpoint(tmp_path / "ft.pth")
    else:  # a released-style file: the MAE encoder without decoder weights
        ckpt = write_mae_checkpoint(tmp_path / "full.pth")
        state = torch.load(ckpt, weights_only=True)
        state["model"] = {
            k: v for k, v in state["model"].items() if not k.startswith(("decoder", "mask_token"))
        }
        torch.save(state, ckpt)
    images = write_images(tmp_path / "imgs", 1)
    assert (
        main(
            [
                "visualize",
                "--checkpoint",
                str(ckpt),
                "--images",
                *images,
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith("maekit visualize: error:") and "decoder" in err and "Traceback" not in err
    )
    assert not (tmp_path / "x.png").exists()


def test_visualize_channels_and_window_flags(tmp_path: Path, mae_checkpoint, capsys, monkeypatch):
    """8-bit RGB files: the default grid draws the files' own values (auto = full on 8-bit
    data); --vis_channels 2 1 0 swaps red and blue; a percentile window is said in the title."""
    import maekit.analysis.visualize as vis

    drawn = []

    def capture(columns, title, scale):
        drawn.append(columns)
        return render_grid(columns, title, scale)

    monkeypatch.setattr(vis, "render_grid", capture)
    images = write_images(tmp_path / "imgs", 2)
    base = [
        "visualize",
        "--checkpoint",
        str(mae_checkpoint),
        "--images",
        *images,
        "--device",
        "cpu",
    ]
    out = str(tmp_path / "g.png")
    assert main([*base, "--out", out]) == 0
    assert "; channels 0,1,2, window full = 0..1. Inputs normalised" in capsys.readouterr().out
    files = (vis.load_images(vis.VisualizeConfig(images=images), 32) * 255).round().to(torch.uint8)
    expected = files.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(drawn[0][0], expected)  # the files' own 8-bit values, exactly
    assert main([*base, "--out", out, "--vis_channels", "2", "1", "0"]) == 0
    assert np.array_equal(drawn[1][0], expected[..., ::-1])
    assert "channels 2,1,0, window full" in capsys.readouterr().out
    assert main([*base, "--out", out, "--vis_channels", "1", "--vis_window", "pct", "5", "95"]) == 0
    lo, hi = np.percentile((files[:, 1].float() / 255).numpy(), [5, 95])  # as drawn
    assert f"channels 1, window 5-95th pct = {lo:.3g}..{hi:.3g}" in capsys.readouterr().out
    gray = drawn[2][0]
    assert (gray == gray[..., :1]).all() and gray.min() == 0 and gray.max() == 255


def write_band_checkpoint(path: Path) -> Path:
    """A tiny MAE pre-trained (here: initialised) on 4-band 16-bit files, saved as
    `maekit pretrain` saves one: its args say pixels full, max_value 65535, 4 statistics."""
    from maekit.config import PretrainConfig
    from maekit.engine.train_state import save_checkpoint

    cfg = PretrainConfig(
        model="mae_vit_tiny_patch16", input_size=32, patch_size=8, in_chans=4,
        mean=[0.03] * 4, std=[0.01] * 4, pixels="full", max_value=65535.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model(cfg.model, **cfg.size_overrides())
    save_checkpoint(path, model, None, 0, None, cfg.to_dict())
    return path


def write_twelve_bit_tiffs(folder: Path, n: int) -> list[str]:
    """4-band uint16 TIFFs of a 12-bit sensor (0..4095 of 65535): band b around 800 * (b + 1)."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    paths = []
    for i in range(n):
        bands = 800 * np.arange(1, 5).reshape(1, 1, 4) + rng.integers(-600, 600, (40, 36, 4))
        paths.append(str(folder / f"tile{i}.tif"))
        tifffile.imwrite(
            paths[-1], bands.astype(np.uint16), photometric="minisblack", planarconfig="contig"
        )
    return paths


def test_visualize_reads_full_precision_bands(tmp_path: Path, capsys, monkeypatch) -> None:
    """--images and --data_path at the checkpoint's precision and scale: the model sees
    value / 65535, and the grid stretches the dark 12-bit bands 3, 2, 1 to the full grey range."""
    import maekit.analysis.visualize as vis
    from maekit.data.pixels import read_image

    drawn = []

    def capture(columns, title, scale):
        drawn.append((columns, title))
        return render_grid(columns, title, scale)

    monkeypatch.setattr(vis, "render_grid", capture)
    ckpt = str(write_band_checkpoint(tmp_path / "bands.pth"))
    tiffs = write_twelve_bit_tiffs(tmp_path / "tiles", 3)
    out = str(tmp_path / "g.png")
    common = [
        "--checkpoint",
        ckpt,
        "--out",
        out,
        "--device",
        "cpu",
        "--vis_channels",
        "3",
        "2",
        "1",
    ]
    assert main(["visualize", *common, "--images", *tiffs]) == 0
    said = capsys.readouterr().out
    assert "channels 3,2,1, window 1-99th pct = " in said and "3 images" in said
    columns, title = drawn[0]
    original = columns[0]
    assert original.shape == (3, 32, 32, 3) and len(np.unique(original)) > 100
    means = original.reshape(-1, 3).astype(float).mean(axis=0)
    assert means[0] > means[1] > means[2]  # R = band 3, the brightest; B = band 1
    assert title.splitlines()[-1].startswith("channels 3,2,1, window 1-99th pct")
    # the pixels drawn are the files' own values / 65535, resized and cropped like the 8-bit path
    px = vis.load_images(vis.VisualizeConfig(images=tiffs), 32, 4, vis.Reading("full", 65535.0))
    first = read_image(tiffs[0], 4, 65535.0)
    assert px.shape == (3, 4, 32, 32) and px.dtype == torch.float32
    assert torch.allclose(px[0], vis._fit(first, 32))
    assert 0.0 < px.min() and px.max() < 4096 / 65535
    # the same files as a dataset folder (flat: no val/), through the run's reader
    assert (
        main(["visualize", *common, "--data_path", str(tmp_path / "tiles"), "--num_images", "2"])
        == 0
    )
    assert "2 images" in capsys.readouterr().out
    assert len(np.unique(drawn[1][0][0])) > 100
    # the plain scale, for comparison: almost black
    assert main(["visualize", *common, "--images", *tiffs, "--vis_window", "full"]) == 0
    assert drawn[2][0][0].max() <= 4096 * 255 // 65535 + 1


def test_visualize_refuses_deep_files_for_an_8bit_checkpoint(
    tmp_path: Path, mae_checkpoint, capsys
):
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(deep)  # 16-bit gray PNG
    argv = [
        "visualize",
        "--checkpoint",
        str(mae_checkpoint),
        "--images",
        str(deep),
        "--out",
        str(tmp_path / "x.png"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "holds more than 8 bits per pixel" in err and "pre-trained on 8-bit images" in err
    assert not (tmp_path / "x.png").exists()


def test_reading_follows_the_checkpoint_args() -> None:
    from maekit.analysis.visualize import Reading

    old = Reading.of({"model": "mae_vit_tiny_patch16"}, 3)  # before full precision: 8-bit files
    assert old == Reading("8bit", None, False) and old.eight_bit
    full = Reading.of({"pixels": "full", "max_value": 4095, "gray_to_rgb": True}, 3)
    assert full == Reading("full", 4095.0, True) and not full.eight_bit
    assert Reading.of({"pixels": "full", "max_value": 255.0}, 4).eight_bit  # uint8 bands
    assert Reading.of({"pixels": "auto"}, 4) == Reading("full", None, False)  # N bands: full
    assert Reading.of({"pixels": "auto"}, 1).mode == "8bit"
    assert Reading.of({"pixels": "8bit", "max_value": 255.0}, 3).eight_bit


def test_full_precision_without_a_saved_scale_uses_the_files_type(tmp_path: Path) -> None:
    """A full-precision checkpoint with no max_value saved: uint16 files are scaled by 65535,
    for --images (read_image's default) and --data_path (resolved from the files) alike."""
    from maekit.analysis.visualize import Reading, VisualizeConfig, load_images

    tiffs = write_twelve_bit_tiffs(tmp_path / "tiles", 2)
    saved = load_images(VisualizeConfig(images=tiffs), 32, 4, Reading("full", 65535.0))
    assert torch.equal(load_images(VisualizeConfig(images=tiffs), 32, 4, Reading("full")), saved)
    folder = VisualizeConfig(data_path=str(tmp_path / "tiles"), num_images=2)
    by_type = load_images(folder, 32, 4, Reading("full"))
    assert torch.allclose(by_type, load_images(folder, 32, 4, Reading("full", 65535.0)))
    assert by_type.max() < 4096 / 65535 and by_type.min() > 0
