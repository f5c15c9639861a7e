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
    line = out.strip().splitlines()[-1].split()
    assert line[0] == "--mean" and "--std" in line
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
    from maekit.analysis.features import subset_indices

    picked = np.concatenate([arrays[i].reshape(-1, 3) for i in subset_indices(12, 4, 3)]) / 255
    np.testing.assert_allclose(flags(out)[0], picked.mean(0), atol=1e-3)
    assert main([*args[:-2], "--max_images", "0"]) == 2
