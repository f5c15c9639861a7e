"""The 8-bit RGB path is unchanged by the full-precision one: today's pipelines give, bit for
bit, the tensors maekit gave before it existed (tests/golden/rgb_pipeline/, written at commit
24a47e7 by tests/golden/make_rgb_pipeline_golden.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from maekit.data.folder import decode_rgb
from maekit.data.pixels import PixelReader
from tests.golden.make_rgb_pipeline_golden import images, pipelines, seed_all

REFERENCE = Path(__file__).parents[1] / "golden" / "rgb_pipeline" / "reference.npz"


@pytest.mark.parametrize("name", [n for n, _ in pipelines()])
def test_8bit_pipelines_give_the_tensors_they_gave_before(name):
    ref = np.load(REFERENCE)
    tf = dict(pipelines())[name]
    reader = PixelReader("8bit")  # what a resolved 8-bit run reads files with
    checked = 0
    for fname, data in images().items():
        for seed in (0, 1):
            seed_all(seed)
            img = reader.decode(io.BytesIO(data), fname)
            out = tf(img).numpy()
            want = ref[f"{name}/{fname}/{seed}"]
            assert out.dtype == want.dtype and out.shape == want.shape
            np.testing.assert_array_equal(out, want)
            checked += 1
    assert checked == 8  # 2 images x JPEG/PNG x 2 seeds


def test_the_reader_and_the_old_decoder_agree_on_8bit_files():
    for fname, data in images().items():
        a = np.asarray(PixelReader("8bit").decode(io.BytesIO(data), fname))
        b = np.asarray(decode_rgb(io.BytesIO(data), fname))
        np.testing.assert_array_equal(a, b)
