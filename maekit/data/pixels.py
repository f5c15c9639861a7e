"""Images at the precision of the file: 16-bit, float and N-band input (``--pixels``).

Two ways of reading, chosen once per run (:func:`resolve_pixels`) and saved in config.json:

- ``8bit``: Pillow decodes every file to 8-bit RGB or gray, and the official pipelines run on
  PIL images (uint8 crops, ToTensor's / 255): ImageNet's JPEGs, byte for byte as before. A file
  that holds more than 8 bits (16-bit PNG/TIFF, float) is refused in one line, never rounded
  down to 8 bits.
- ``full``: every file is read at its own precision into a float32 (C, H, W) tensor and scaled
  by one number, ``max_value``: ``x / max_value``. The transforms then run on tensors
  (:mod:`.transforms`, ``full=True``).
- ``auto`` (the default): ``full`` when a probe of the first files finds more than 8 bits, a
  float type, a ``.npy`` array or a band count other than 1 and 3, or when ``--in_chans`` is
  not 1 or 3 or ``--max_value`` is given; else ``8bit``.

Readers of the full path, by suffix:

- ``.tif``/``.tiff``: tifffile (any integer or float type, any band count, either interleave).
  Bands are the TIFF's samples (``S``) or an ImageJ channel axis (``C``); a file with more than
  one image along another axis (pages ``I``, depth ``Z``, time ``T``...) is refused: write
  one image per file.
- ``.npy``: ``numpy.load(allow_pickle=False)``: (H, W), or (H, W, C) channels-last; (C, H, W)
  is taken when its first axis, not its last, equals ``--in_chans``.
- ``.png`` holding 16 bits per sample: imagecodecs' PNG decoder (Pillow reads 48/64-bit RGB
  PNG as 8 bits). Everything else (JPEG, 8-bit PNG, BMP, PGM, WebP...): Pillow; its 16-bit
  gray modes stay 16-bit, its float mode stays float.

The value scale: ``--max_value`` if given; else the maximum of the files' integer type (255
for uint8, 65535 for uint16: a 12-bit camera in 16-bit files uses a sixteenth of the range
unless ``--max_value 4095`` says so); floats are taken as they are (1.0). One number for the
whole dataset, resolved from the probed files, so that every image of a run is on one scale.
Non-finite pixels are an error naming the file.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from ..errors import MaekitError
from .folder import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, UnreadableImage, decode_rgb, open_regular

PIXEL_MODES = ("auto", "8bit", "full")
PROBE_FILES = 32  # files whose headers `auto` reads (a few per folder, in walking order)
TIFF_SUFFIXES = (".tif", ".tiff")
CHANNEL_AXES = ("S", "C")  # tifffile's axes that are bands: samples, ImageJ channels


class BandMismatch(MaekitError):
    """A file's band count differs from --in_chans: the run stops (skipping would train on
    part of the data without saying so)."""


@dataclass(frozen=True)
class FileKind:
    """What a file's header says: its sample type and its band count."""

    dtype: np.dtype
    bands: int
    reader: str  # 'tifffile', 'numpy', 'png16' (imagecodecs), 'pillow'

    @property
    def eight_bit(self) -> bool:
        return self.dtype == np.uint8 and self.reader == "pillow"

    @property
    def describe(self) -> str:
        return f"{self.dtype.name} {self.reader}, {self.bands} band{'s' * (self.bands != 1)}"


def type_max(dtype: np.dtype) -> float:
    """The scale of a sample type: its integer maximum, 1.0 for floats (taken as they are)."""
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise MaekitError(f"pixels of type {dtype} cannot be read as an image")


# --------------------------------------------------------------------------- reading arrays


def _png16(head: bytes) -> bool:
    """A PNG whose IHDR says 16 bits per sample (byte 24 of the file)."""
    return head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 24 and head[24] == 16


def _check_size(name: str, h: int, w: int, max_pixels: int | None) -> None:
    if max_pixels is not None and h * w > max_pixels:
        raise UnreadableImage(
            f"{name}: {w}x{h} = {w * h} pixels, more than --max_pixels {max_pixels}"
        )


def _tiff_layout(series, name: str) -> tuple[list[int], str]:
    """The transpose that puts tifffile's axes in (Y, X, bands) order, and the band axis."""
    axes, shape = series.axes, series.shape
    extra = [
        a
        for a, n in zip(axes, shape, strict=True)
        if a not in "YX" + "".join(CHANNEL_AXES) and n > 1
    ]
    bands = [a for a, n in zip(axes, shape, strict=True) if a in CHANNEL_AXES and n > 1]
    if extra or len(bands) > 1 or "Y" not in axes or "X" not in axes:
        raise MaekitError(
            f"{name}: a TIFF of {' x '.join(map(str, shape))} ({axes}) holds more than one image; "
            "maekit reads one image (Y, X and bands) per file: write each image to its own file"
        )
    order = [axes.index("Y"), axes.index("X")] + [axes.index(a) for a in bands]
    order += [i for i, a in enumerate(axes) if i not in order]  # size-1 axes, squeezed after
    return order, bands[0] if bands else ""


def _read_tiff(f: BinaryIO, name: str, max_pixels: int | None, header_only: bool):
    import tifffile

    try:
        with tifffile.TiffFile(f, name=os.path.basename(name)) as tif:
            series = tif.series[0]
            order, band_axis = _tiff_layout(series, name)
            dims = dict(zip(series.axes, series.shape, strict=True))
            if header_only:
                return FileKind(np.dtype(series.dtype), dims.get(band_axis, 1), "tifffile")
            _check_size(name, dims["Y"], dims["X"], max_pixels)
            arr = series.asarray()
    except MaekitError:
        raise
    except (ValueError, OSError, KeyError, IndexError, tifffile.TiffFileError) as e:
        if "imagecodecs" in str(e):
            raise MaekitError(f"{name}: {e}; pip install imagecodecs") from e
        raise UnreadableImage(f"{name}: {e}") from e
    arr = np.transpose(arr, order).reshape(dims["Y"], dims["X"], -1)
    return arr


def _orient_npy(shape: tuple[int, ...], in_chans: int, name: str) -> tuple[int, ...] | None:
    """The transpose to (H, W, C) of an array of ``shape`` (None: it already is)."""
    if len(shape) == 2:
        return None
    if len(shape) == 3:
        if shape[-1] == in_chans or shape[0] != in_chans:
            return None  # channels-last, the image convention (and what a mismatch names)
        return (1, 2, 0)
    raise MaekitError(
        f"{name}: a .npy array of shape {shape}; maekit reads (H, W), (H, W, C) or (C, H, W)"
    )


def _read_npy(f: BinaryIO, name: str, max_pixels: int | None, in_chans: int, header_only: bool):
    try:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0  # 2.0 and 3.0 (a UTF-8 header)
        )
        shape, fortran, dtype = read_header(f)
    except (ValueError, OSError) as e:
        raise UnreadableImage(f"{name}: not a .npy array ({e})") from e
    if dtype.hasobject:
        raise MaekitError(
            f"{name}: a .npy array of Python objects; save numbers (allow_pickle=False)"
        )
    order = _orient_npy(shape, in_chans, name)
    hwc = tuple(shape[i] for i in order) if order else (*shape, 1)[:3]
    if header_only:
        return FileKind(np.dtype(dtype), hwc[2] if len(shape) == 3 else 1, "numpy")
    _check_size(name, hwc[0], hwc[1], max_pixels)
    f.seek(0)
    try:
        arr = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UnreadableImage(f"{name}: {e}") from e
    if order:
        arr = np.transpose(arr, order)
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def _read_png16(f: BinaryIO, name: str, max_pixels: int | None, header_only: bool):
    import imagecodecs

    head = f.read(26)
    w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    color = head[25]  # 0 gray, 2 RGB, 4 gray + alpha, 6 RGBA
    bands = {0: 1, 2: 3, 4: 2, 6: 4}.get(color, 0)
    if header_only:
        return FileKind(np.dtype(np.uint16), bands, "png16")
    _check_size(name, h, w, max_pixels)
    f.seek(0)
    try:
        arr = imagecodecs.png_decode(f.read())  # (H, W) or (H, W, C) uint16
    except (imagecodecs.PngError, ValueError) as e:
        raise UnreadableImage(f"{name}: {e}") from e
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


# Pillow's modes, as (numpy view, how): kept as they are, or converted (as the 8-bit path does).
_PIL_CONVERT = {
    "1": "L",
    "LA": "L",
    "P": "RGB",
    "PA": "RGB",
    "RGBA": "RGB",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
    "La": "L",
    "RGBa": "RGB",
}


def _pil_kind(img: Image.Image) -> FileKind:
    mode = _PIL_CONVERT.get(img.mode, img.mode)
    if mode in ("L", "RGB"):
        return FileKind(np.dtype(np.uint8), 1 if mode == "L" else 3, "pillow")
    if mode.startswith("I;16") or mode == "I":
        return FileKind(np.dtype(np.uint16), 1, "pillow")
    if mode == "F":
        return FileKind(np.dtype(np.float32), 1, "pillow")
    raise MaekitError(f"{img.mode!r} images (Pillow) are not read; convert it to TIFF")


def _read_pil(f: BinaryIO, name: str, max_pixels: int | None, header_only: bool):
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # our own cap, below, is the one that applies
            img = Image.open(f)
            if header_only:
                return _pil_kind(img)
            _check_size(name, img.height, img.width, max_pixels)
            img.load()
    except MaekitError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(f"{name}: {e}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    if img.mode in _PIL_CONVERT:
        img = img.convert(_PIL_CONVERT[img.mode])
    arr = np.asarray(img)
    if img.mode == "I":  # Pillow's 32-bit integers (16-bit PGM, some PNG): 16-bit content
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise MaekitError(
                f"{name}: 32-bit integer pixels ({arr.min()}..{arr.max()}) through Pillow; "
                "save it as a TIFF, which tifffile reads at its type"
            )
        arr = arr.astype(np.uint16)
    elif img.mode.startswith("I;16"):
        arr = arr.astype(np.uint16)  # big-endian I;16B to native
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def read_array(
    f: BinaryIO,
    name: str,
    in_chans: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    header_only: bool = False,
) -> np.ndarray | FileKind:
    """The pixels of one file as an (H, W, C) array of its own type (or, ``header_only``, its
    :class:`FileKind`, reading only the header). ``name`` picks the reader by its suffix and
    labels errors; ``in_chans`` orients a (C, H, W) ``.npy``."""
    suffix = os.path.splitext(name)[1].lower()
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(f, name, max_pixels, header_only)
    if suffix == ".npy":
        return _read_npy(f, name, max_pixels, in_chans, header_only)
    head = f.read(26)
    f.seek(0)
    if _png16(head):
        return _read_png16(f, name, max_pixels, header_only)
    return _read_pil(f, name, max_pixels, header_only)


def check_bands(bands: int, name: str, in_chans: int, gray_to_rgb: bool = False) -> bool:
    """Refuse (:class:`BandMismatch`, naming the file) a band count other than ``in_chans``;
    True when a gray file is to be repeated to 3 channels (``gray_to_rgb``)."""
    if bands == in_chans:
        return False
    if gray_to_rgb and bands == 1 and in_chans == 3:
        return True
    hint = " (or --gray_to_rgb to repeat a gray band)" if bands == 1 and in_chans == 3 else ""
    raise BandMismatch(
        f"{name}: {bands} band{'s' * (bands != 1)}, but --in_chans is {in_chans}; "
        f"give --in_chans {bands}{hint} or remove the file"
    )


def to_tensor(
    arr: np.ndarray, name: str, in_chans: int, max_value: float, gray_to_rgb: bool = False
) -> torch.Tensor:
    """(H, W, C) array -> float32 (C, H, W) ``x / max_value``, checked: the band count is
    ``in_chans`` (a gray file repeated to 3 bands only with ``gray_to_rgb``) and every pixel
    is finite."""
    if check_bands(arr.shape[2], name, in_chans, gray_to_rgb):
        arr = np.repeat(arr, 3, axis=2)
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))
    if np.issubdtype(arr.dtype, np.floating):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise MaekitError(
                f"{name}: {bad} non-finite pixels (NaN or inf); replace them (e.g. with "
                "numpy.nan_to_num) or remove the file"
            )
    if max_value != 1.0:
        x = x / max_value  # a division, as numpy's x / max_value (the documented scale)
    return x


@dataclass(frozen=True)
class PixelReader:
    """How a run reads its files: picklable, so every loader worker gets a copy.

    ``mode`` '8bit' returns Pillow RGB images (the official path, :func:`decode_rgb`);
    'full' returns float32 (C, H, W) tensors scaled by ``max_value``."""

    mode: str = "8bit"
    in_chans: int = 3
    max_value: float = 255.0
    gray_to_rgb: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def decode(self, f: BinaryIO, name: str):
        if self.mode == "8bit":
            return decode_rgb(f, name, self.max_pixels)
        arr = read_array(f, name, self.in_chans, self.max_pixels)
        return to_tensor(arr, name, self.in_chans, self.max_value, self.gray_to_rgb)

    def __call__(self, path: str):
        with open_regular(path) as f:
            return self.decode(f, str(path))


def read_image(
    path: str | Path,
    in_chans: int,
    max_value: float | None = None,
    gray_to_rgb: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """One file at full precision: float32 (C, H, W), ``x / max_value`` (default: the file's
    type maximum, 1.0 for floats)."""
    with open_regular(path) as f:
        arr = read_array(f, str(path), in_chans, max_pixels)
    scale = type_max(arr.dtype) if max_value is None else max_value
    return to_tensor(arr, str(path), in_chans, scale, gray_to_rgb)


def probe_file(path: str | Path, in_chans: int = 3) -> FileKind:
    """The :class:`FileKind` of one file, from its header."""
    with open_regular(path) as f:
        return read_array(f, str(path), in_chans, header_only=True)


# --------------------------------------------------------------------------- choosing the path


def probe_paths(root: str | Path, limit: int = PROBE_FILES, per_folder: int = 4) -> list[str]:
    """Up to ``limit`` image files under ``root`` (``train/`` if it has one), a few from each
    folder in walking order: what ``--pixels auto`` looks at, without listing a whole dataset."""
    root = Path(root)
    if (root / "train").is_dir():
        root = root / "train"
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        picked = [
            n
            for n in sorted(filenames)
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES
        ][:per_folder]
        found += [os.path.join(dirpath, n) for n in picked]
        if len(found) >= limit:
            break
    return found[:limit]


def resolve_pixels(
    data_path: str,
    pixels: str,
    in_chans: int,
    max_value: float | None,
    gray_to_rgb: bool = False,
    eight_bit_only: str | None = None,
) -> tuple[str, float, str | None]:
    """(mode, max_value, the line saying what was chosen) for a run's data: ``--pixels auto``
    decided from the first files' headers, the scale resolved to one number; refusals (a band
    count, a mix of types, an 8-bit run over 16-bit files) in one line, before anything starts.

    ``eight_bit_only``: the data source reads 8-bit images only (Fashion-MNIST, tar shards),
    named in the refusal."""
    if pixels not in PIXEL_MODES:
        raise MaekitError(f"--pixels must be one of {', '.join(PIXEL_MODES)}, got {pixels!r}")
    wants_full = pixels == "full" or max_value is not None or in_chans not in (1, 3)
    if eight_bit_only is not None:
        if wants_full:
            raise MaekitError(
                f"{eight_bit_only} holds 8-bit images, read as 1 or 3 channels: drop "
                "--pixels full / --max_value, and give --in_chans 1 or 3"
            )
        return "8bit", 255.0, None
    if pixels == "8bit" and wants_full:
        raise MaekitError(
            "--pixels 8bit reads 8-bit RGB or gray images: --max_value and --in_chans other "
            "than 1 or 3 need --pixels full (or auto)"
        )
    kinds = []
    for path in probe_paths(data_path):
        try:
            kinds.append((path, probe_file(path, in_chans)))
        except UnreadableImage:
            continue  # counted and skipped when read, as before
    deep = [(p, k) for p, k in kinds if not k.eight_bit]
    if pixels == "8bit" and deep:
        path, kind = deep[0]
        raise MaekitError(
            f"{path}: {kind.describe} pixels, but --pixels 8bit would round them to 8 bits; "
            "drop --pixels 8bit (auto reads them at full precision)"
        )
    if pixels == "auto" and not deep and not wants_full:
        return "8bit", 255.0, None
    for path, kind in kinds:  # a wrong band count is refused now, not in a loader worker
        check_bands(kind.bands, path, in_chans, gray_to_rgb)
    if max_value is not None:
        if not max_value > 0 or not np.isfinite(max_value):
            raise MaekitError(f"--max_value must be a positive number, got {max_value}")
        scale, why = float(max_value), "--max_value"
    else:
        scales = {type_max(k.dtype): (p, k) for p, k in kinds}
        if len(scales) > 1:
            (p1, k1), (p2, k2) = list(scales.values())[:2]
            raise MaekitError(
                f"the files mix pixel types ({k1.dtype.name} in {p1}, {k2.dtype.name} in {p2}), "
                "which scale differently: give --max_value (the value of full brightness)"
            )
        scale = next(iter(scales), 1.0)
        types = sorted({k.dtype.name for _, k in kinds}) or ["no files probed"]
        why = (
            f"the maximum of {'/'.join(types)}"
            if scale != 1.0
            else f"{'/'.join(types)} as they are"
        )
    line = (
        f"pixels: full precision (--pixels {pixels}: {len(deep)} of {len(kinds)} probed files "
        f"hold more than 8 bits), {in_chans} channel{'s' * (in_chans != 1)}, scaled by 1/{scale:g} ({why})"
    )
    return "full", scale, line


def resolve_for(cfg):
    """A phase config with ``pixels`` and ``max_value`` resolved (``dataclasses.replace``) and
    the line that says so (None on the 8-bit path): the one place a run's reading is chosen."""
    from dataclasses import replace

    from . import BUILTIN_ALIASES
    from .shards.locate import is_shard_path

    source = None
    if cfg.data_path in BUILTIN_ALIASES:
        source = f"--data_path {cfg.data_path}"
    elif is_shard_path(cfg.data_path):
        source = "tar shards (maekit shard)"
    mode, scale, line = resolve_pixels(
        cfg.data_path, cfg.pixels, cfg.in_chans, cfg.max_value, cfg.gray_to_rgb, source
    )
    return replace(cfg, pixels=mode, max_value=scale), line


def reader_for(cfg) -> PixelReader:
    """The :class:`PixelReader` of a resolved config (see :func:`resolve_for`)."""
    return PixelReader(
        cfg.pixels if cfg.pixels in ("8bit", "full") else "8bit",
        cfg.in_chans,
        cfg.max_value or 255.0,
        cfg.gray_to_rgb,
        getattr(cfg, "max_pixels", DEFAULT_MAX_PIXELS),
    )


def reader_for_checkpoint(args: dict, in_chans: int, data_path: str) -> PixelReader:
    """How to read ``data_path`` for a model trained by the run whose ``args`` (config) were
    saved with it: its ``pixels`` path and ``max_value`` scale, so that ``knn`` and ``extract``
    feed the model pixels on the scale it learned. Checkpoints from before full precision (no
    ``pixels``) read 8-bit images, unless their channel count needs full precision; a full
    precision run without a saved scale gets the files' type maximum (:func:`resolve_pixels`)."""
    scale = args.get("max_value")
    scale = float(scale) if isinstance(scale, int | float) and scale > 0 else None
    mode = args.get("pixels")
    gray_to_rgb = bool(args.get("gray_to_rgb", False))
    if mode not in ("8bit", "full"):
        mode = "full" if in_chans not in (1, 3) else "8bit"
    if mode == "8bit":
        return PixelReader("8bit", in_chans)
    if scale is None:
        scale = resolve_pixels(data_path, "full", in_chans, None, gray_to_rgb)[1]
    return PixelReader("full", in_chans, scale, gray_to_rgb)
