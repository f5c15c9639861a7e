"""Write tests/golden/pixels/: scientific image files made by the tools that write them in the
wild (tifffile, GDAL's gdal_translate, Pillow), each beside ``<name>.expected.npy``: the pixel
values numpy put into the tool, (H, W, C) in their own type. tests/data/test_pixels_golden.py
checks that maekit reads every file to exactly those values.

    apt-get install gdal-bin   # gdal_translate, only for this
    python3 tests/golden/make_pixel_golden.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
import tifffile
from PIL import Image

OUT = Path(__file__).parent / "pixels"
H, W = 12, 20  # non-square, small: the files stay a few KB


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(27)
    made = {}

    # 12-bit camera data in 16-bit files (0..4095 of 0..65535), gray, by tifffile and Pillow
    gray12 = rng.integers(0, 4096, (3 * H, 3 * W, 1), dtype=np.uint16)  # > 256 pixels: levels
    tifffile.imwrite(OUT / "gray12_tifffile.tif", gray12[..., 0], photometric="minisblack")
    made["gray12_tifffile.tif"] = gray12
    Image.fromarray(gray12[..., 0]).save(OUT / "gray12_pillow.png")  # Pillow's 16-bit gray PNG
    made["gray12_pillow.png"] = gray12

    # uint16 4-band GeoTIFF by gdal_translate (band-interleaved), from an ENVI raw file
    bands4 = rng.integers(0, 65536, (H, W, 4), dtype=np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "scene.img"
        np.ascontiguousarray(bands4.transpose(2, 0, 1)).astype("<u2").tofile(raw)  # BSQ
        raw.with_suffix(".hdr").write_text(
            f"ENVI\nsamples = {W}\nlines = {H}\nbands = 4\nheader offset = 0\n"
            "file type = ENVI Standard\ndata type = 12\ninterleave = bsq\nbyte order = 0\n"
        )
        subprocess.run(
            [
                "gdal_translate",
                "-q",
                "-of",
                "GTiff",
                "-co",
                "INTERLEAVE=BAND",
                str(raw),
                str(OUT / "bands4_gdal.tif"),
            ],
            check=True,
        )
    made["bands4_gdal.tif"] = bands4

    # float32 13-band (Sentinel-2-like reflectances), pixel-interleaved, by tifffile
    bands13 = (rng.random((H, W, 13)) * 0.6).astype(np.float32)
    tifffile.imwrite(
        OUT / "bands13_float.tif", bands13, photometric="minisblack", planarconfig="contig"
    )
    made["bands13_float.tif"] = bands13

    # float32 gray with negative values (e.g. a difference image, dB), by tifffile
    neg = (rng.standard_normal((H, W, 1)) * 3).astype(np.float32)
    tifffile.imwrite(OUT / "gray_negative_float.tif", neg[..., 0])
    made["gray_negative_float.tif"] = neg

    for name, arr in made.items():
        np.save(OUT / f"{name}.expected.npy", arr)
    gdal = subprocess.run(["gdal_translate", "--version"], capture_output=True, text=True).stdout
    versions = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "tifffile": tifffile.__version__,
        "pillow": PIL.__version__,
        "gdal_translate": gdal.strip(),
        "files": {n: {"dtype": a.dtype.name, "shape_hwc": list(a.shape)} for n, a in made.items()},
    }
    (OUT / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")


if __name__ == "__main__":
    main()
