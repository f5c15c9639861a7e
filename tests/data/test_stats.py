"""``maekit stats``: per-channel mean/std equal numpy's over the same pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from maekit.cli import main


def write_folder(root, n: int = 9, seed: int = 0) -> list[np.ndarray]:
    """PNG images of different sizes with per-channel offsets (so the channels differ)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    arrays = []
    for i in range(n):
        h, w = 20 + 3 * i, 31 - 2 * i
        arr = (rng.random((h, w, 3)) * np.array([120, 200, 60]) + np.array([100, 0, 30])).astype(
            np.uint8
        )
        Image.fromarray(arr).save(root / f"{i:02d}.png")  # sorted = created order
        arrays.append(arr)
    return arrays


def flags(out: str) -> tuple[list[float], list[float]]:
    (line,) = [ln.split() for ln in out.splitlines() if ln.startswith("--mean ")]
    assert "--std" in line
    k = line.index("--std")
    return [float(v) for v in line[1:k]], [float(v) for v in line[k + 1 :]]


def test_stats_equal_numpy_on_a_folder(tmp_path, capsys):
    arrays = write_folder(tmp_path / "imgs")
    assert main(["stats", "--data_path", str(tmp_path / "imgs"), "--num_workers", "0"]) == 0
    mean, std = flags(capsys.readouterr().out)
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(std, pixels.std(0), atol=1e-3)
    # grayscale: one value each, of the luma that --in_chans 1 trains on
    assert (
        main(
            [
                "stats",
                "--data_path",
                str(tmp_path / "imgs"),
                "--in_chans",
                "1",
                "--num_workers",
                "0",
            ]
        )
        == 0
    )
    mean1, std1 = flags(capsys.readouterr().out)
    gray = (
        np.concatenate([np.asarray(Image.fromarray(a).convert("L")).ravel() for a in arrays]) / 255
    )
    assert len(mean1) == len(std1) == 1
    np.testing.assert_allclose(mean1, [gray.mean()], atol=1e-3)
    np.testing.assert_allclose(std1, [gray.std()], atol=1e-3)


def test_stats_sample_is_bounded_and_seeded(tmp_path, capsys):
    arrays = write_folder(tmp_path / "imgs", n=12)
    args = [
        "stats",
        "--data_path",
        str(tmp_path / "imgs"),
        "--num_workers",
        "0",
        "--max_images",
        "4",
    ]
    assert main([*args, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "4 of 12 images" in out
    assert main([*args, "--seed", "3"]) == 0
    assert flags(capsys.readouterr().out) == flags(out)  # the same sample again
    from maekit.data.sampling import subset_indices

    picked = np.concatenate([arrays[i].reshape(-1, 3) for i in subset_indices(12, 4, 3)]) / 255
    np.testing.assert_allclose(flags(out)[0], picked.mean(0), atol=1e-3)
    assert main([*args[:-2], "--max_images", "0"]) == 2


def test_16_bit_png_and_tiff_keep_their_range(tmp_path, capsys):
    """16-bit grayscale (0..65535) is read at full precision (--pixels auto), not clipped at
    255 nor rounded to 8 bits: the statistics are those of value / 65535, to float32."""
    rng = np.random.default_rng(0)
    root = tmp_path / "deep"
    root.mkdir()
    arrays = []
    for i, suffix in enumerate(["png", "tif", "png", "tif"]):
        arr = (rng.random((24, 30)) * 40000 + 20000).astype(np.uint16)  # mostly above 255 * 257
        Image.fromarray(arr).save(root / f"{i:02d}.{suffix}")
        assert Image.open(root / f"{i:02d}.{suffix}").mode.startswith("I")
        arrays.append(arr)
    assert main(["stats", "--data_path", str(root), "--in_chans", "1", "--num_workers", "0"]) == 0
    mean, std = flags(capsys.readouterr().out)
    values = np.concatenate([a.ravel() for a in arrays]) / 65535
    np.testing.assert_allclose(mean, [values.mean()], atol=6e-5)  # printed to 4 decimals
    np.testing.assert_allclose(std, [values.std()], atol=6e-5)
    assert 0.45 < mean[0] < 0.65  # clipping at 255 would give 1.0, no scaling ~0.004
