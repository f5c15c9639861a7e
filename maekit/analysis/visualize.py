"""``maekit visualize``: what the MAE reconstructs, as a PNG grid.

One row per image: original | masked (removed patches grey) | reconstruction | reconstruction
with the visible patches pasted back from the original. A model trained with
``norm_pix_loss`` predicts each patch normalised by its own mean and variance; those
predictions are mapped back with the statistics of the same patch of the input (the official
demo skips this, which is why norm-pix reconstructions look garbled there). The figure title
says which was done. Works for any model with MAE's interface: ``forward(imgs, mask_ratio,
noise) -> loss, pred, mask``, ``patchify``, ``unpatchify`` and ``norm_pix_loss``.

Files are read as the checkpoint's run read its data (:class:`Reading`, from its saved
``pixels``/``max_value``): 8-bit RGB or gray as always, or 16-bit, float and N-band files at
their precision. What is drawn, and in which value window (``--vis_channels``,
``--vis_window``), is :mod:`.display`'s; the title's last line says it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from timm.layers import to_2tuple
from torchvision.transforms import functional as TF

from ..config import VisualizeConfig
from ..config.fields import check_vis_channels, vis_window
from ..data.transforms import resolve_stats
from ..errors import MaekitError, counted
from ..models.family import family_of
from .display import display_set, unnormalize

COLUMNS = ("original", "masked", "reconstruction", "recon. + visible")
MASK_GREY = 128
NORM_PIX_EPS = 1.0e-6  # the model's norm-pix target: (t - mean) / sqrt(var + eps)


# --------------------------------------------------------------------------- pure tensor helpers


def normalize_patches(patches: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """The norm-pix target: each patch (N, L, P) minus its mean, over sqrt(unbiased var + eps)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def denormalize_patches(
    pred: torch.Tensor, patches: torch.Tensor, eps: float = NORM_PIX_EPS
) -> torch.Tensor:
    """Inverse of :func:`normalize_patches` with the statistics of ``patches`` (the input's own
    patches): norm-pix predictions (N, L, P) -> pixel values (N, L, P)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return pred * (var + eps) ** 0.5 + mean


def to_uint8(imgs: torch.Tensor, mean=None, std=None) -> np.ndarray:
    """Normalised (N, C, H, W) -> (N, H, W, C) uint8 (C = 3, or 1 for grayscale models);
    ``mean``/``std``: the model's statistics (default: :func:`normalization`'s)."""
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in resolve_stats(imgs.shape[1], mean, std))
    px = (imgs.float().cpu() * std + mean).clamp(0, 1) * 255
    return px.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(arrays: np.ndarray, mean=None, std=None) -> torch.Tensor:
    """(N, H, W, C) uint8 -> normalised (N, C, H, W) float32, as training feeds the model."""
    x = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).float() / 255
    return TF.normalize(x, *(list(v) for v in resolve_stats(x.shape[1], mean, std)))


@torch.no_grad()
def reconstruct(
    model: torch.nn.Module,
    imgs: torch.Tensor,
    mask_ratio: float,
    seed: int,
    cells: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction (N, C, H, W) in the input's normalised space, pixel mask (N, H, W) bool,
    True = removed). The masking noise comes from ``seed``, so a grid is reproducible.

    ``cells``: how many cells the model's random mask is drawn over (its family's
    ``mask_cells``); None: one per patch, MAE's convention."""
    model.eval()
    patches = model.patchify(imgs)  # (N, L, p*p*C)
    cells = patches.shape[1] if cells is None else cells
    noise = torch.rand((imgs.shape[0], cells), generator=torch.Generator().manual_seed(seed))
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise.to(imgs.device))
    pred = pred.float()
    if model.norm_pix_loss:
        pred = denormalize_patches(pred, patches.float())
    # The patch mask painted onto pixels with the model's own unpatchify (any patch geometry).
    mask_px = model.unpatchify(mask[..., None].expand_as(patches).float())[:, 0] > 0.5
    return model.unpatchify(pred), mask_px


def show_gray(original: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Gray originals (R = G = B, e.g. Fashion-MNIST expanded to 3 channels) get a gray
    reconstruction: the mean of its three channels. The model predicts each channel in the
    ImageNet-normalised space, where one gray level is three different numbers; the channel
    offsets it gets wrong, un-normalised with per-channel statistics, show as a colour cast
    that is not in the data. Colour originals are returned unchanged. (N, H, W, 3) uint8."""
    if original.shape[-1] != 3 or not (original == original[..., :1]).all():
        return recon
    gray = recon.astype(np.float32).mean(axis=-1, keepdims=True).round().astype(np.uint8)
    return np.repeat(gray, 3, axis=-1)


def grid_columns(original: np.ndarray, recon: np.ndarray, mask_px: np.ndarray) -> list[np.ndarray]:
    """The four (N, H, W, 3) uint8 columns. Visible pixels of the last are the original's, exactly."""
    m = mask_px[..., None]
    return [
        original,
        np.where(m, np.uint8(MASK_GREY), original),
        recon,
        np.where(m, recon, original),
    ]


# --------------------------------------------------------------------------- the picture


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # old Pillow / no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


@dataclass(frozen=True)
class GridLayout:
    rows: int
    cell: int  # cell width in pixels (image width x scale)
    pad: int
    top: int  # height of the title and column headers above the first row
    cols: int = len(COLUMNS)
    cell_h: int | None = None  # cell height when the images are not square

    @property
    def height(self) -> int:
        return self.cell if self.cell_h is None else self.cell_h

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole picture."""
        return (
            self.cols * self.cell + (self.cols + 1) * self.pad,
            self.top + self.rows * self.height + (self.rows + 1) * self.pad,
        )

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, upper, right, lower) of one cell, PIL crop order."""
        x = self.pad + col * (self.cell + self.pad)
        y = self.top + self.pad + row * (self.height + self.pad)
        return x, y, x + self.cell, y + self.height


def render_grid(
    columns: list[np.ndarray], title: str, scale: int, pad: int = 4
) -> tuple[Image.Image, GridLayout]:
    """Columns of (N, H, W, 3) uint8 images -> the picture (nearest-neighbour upscaled by
    ``scale``, so pixels stay comparable) with a wrapped title (each of its ``\n``-separated
    parts from a new line) and column headers."""
    n, h, w, _ = columns[0].shape
    cell = w * scale
    width = len(columns) * cell + (len(columns) + 1) * pad
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font, small = _font(13), _font(11)
    lines = [ln for part in title.split("\n") for ln in _wrap(part, font, width - 2 * pad, probe)]
    line_h = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 3
    head_h = int(probe.textbbox((0, 0), "Ag", font=small)[3]) + 6
    layout = GridLayout(
        rows=n,
        cell=cell,
        pad=pad,
        top=pad + line_h * len(lines) + head_h,
        cell_h=None if h == w else h * scale,
    )
    canvas = Image.new("RGB", layout.size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, fill=(0, 0, 0), font=font)
    for c, name in enumerate(COLUMNS[: len(columns)]):
        x0 = layout.cell_box(0, c)[0]
        tw = draw.textlength(name, font=small)
        draw.text(
            (x0 + max(0, (cell - tw) / 2), layout.top - head_h + 2),
            name,
            fill=(60, 60, 60),
            font=small,
        )
    for c, col in enumerate(columns):
        for r in range(n):
            up = col[r].repeat(scale, axis=0).repeat(scale, axis=1)
            canvas.paste(Image.fromarray(up), layout.cell_box(r, c)[:2])
    return canvas, layout


def describe(
    name: str,
    input_size: int | list[int],
    patch_size: int,
    mask_ratio: float,
    seed: int,
    norm_pix: bool,
    shown: str | None = None,
) -> str:
    """The figure title: what was run, how the predictions were turned into pixels, and, on
    a line of its own, ``shown`` (:func:`~.display.display_set`'s caption: which channels, in
    which window, are drawn)."""
    how = (
        "norm_pix_loss model: predictions de-normalised with each patch's own mean/var"
        if norm_pix
        else "pixel-target model: predictions shown as they are"
    )
    size = input_size if isinstance(input_size, int) else "x".join(map(str, input_size))
    title = f"{name} ({size} px, patch {patch_size}), mask ratio {mask_ratio:g}, seed {seed}. {how}"
    return f"{title}\n{shown}" if shown else title


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class Reading:
    """How the checkpoint's run read its files (its saved ``pixels``, ``max_value`` and
    ``gray_to_rgb``), so that visualize feeds the model pixels on the scale it learned."""

    mode: str = "8bit"  # '8bit' (Pillow RGB/gray, / 255) or 'full' (file precision, / max_value)
    max_value: float | None = None  # full: None = each file's type maximum (read_image's)
    gray_to_rgb: bool = False

    @classmethod
    def of(cls, args: dict, in_chans: int) -> Reading:
        """From a checkpoint's ``args``. Checkpoints from before full precision read 8-bit
        images; an unresolved 'auto' is taken as the run would have resolved it without files."""
        scale = args.get("max_value")
        scale = float(scale) if isinstance(scale, int | float) and scale > 0 else None
        mode = args.get("pixels")
        if mode not in ("8bit", "full"):
            mode = "full" if in_chans not in (1, 3) or scale is not None else "8bit"
        return cls(mode, scale, bool(args.get("gray_to_rgb", False)))

    @property
    def eight_bit(self) -> bool:
        """Pixels on the 8-bit scale: what ``--vis_window auto`` draws as they are."""
        return self.mode == "8bit" or self.max_value == 255.0


def _fit(img, input_size: int | list[int]):
    """A PIL image or (C, H, W) tensor resized (shorter side, or to cover H x W; bicubic) and
    centre-cropped to ``input_size``."""
    from ..data.transforms import ResizeToCover

    if isinstance(input_size, int):
        extra = {"antialias": True} if isinstance(img, torch.Tensor) else {}  # as Pillow does
        img = TF.resize(img, input_size, interpolation=TF.InterpolationMode.BICUBIC, **extra)
    else:
        img = ResizeToCover(tuple(input_size))(img)
    return TF.center_crop(img, list(to_2tuple(input_size)))


def load_images(
    cfg: VisualizeConfig,
    input_size: int | list[int],
    in_chans: int = 3,
    reading: Reading = Reading(),
    checkpoint: str = "the checkpoint",
) -> torch.Tensor:
    """(N, C, H, W) float32 pixels on the model's scale, resized (to cover, aspect kept,
    bicubic) and centre-cropped to the model's size. ``reading`` '8bit': Pillow RGB, or gray
    for one-channel models, / 255 (as before full precision); 'full': every file at its own
    precision and band count (:func:`~maekit.data.pixels.read_image`), / max_value."""
    from ..data import BUILTIN, build_dataset
    from ..data.folder import EightBitOnly, UnreadableImage, load_rgb
    from ..data.pixels import PixelReader, read_image, resolve_pixels
    from ..data.sampling import subset_indices
    from ..data.shards.locate import refuse_shards
    from ..data.transforms import image_mode

    full = reading.mode == "full"
    if cfg.images:
        missing = [p for p in cfg.images if not Path(p).is_file()]
        if missing:
            raise MaekitError(f"--images: {', '.join(missing[:4])} not found")
        samples = []
        for p in cfg.images:
            try:
                if full:
                    samples.append(read_image(p, in_chans, reading.max_value, reading.gray_to_rgb))
                else:
                    samples.append(load_rgb(p))
            except EightBitOnly as e:
                raise MaekitError(
                    f"--images: {p} holds more than 8 bits per pixel, but {checkpoint} was "
                    "pre-trained on 8-bit images (--pixels 8bit): give 8-bit images, or a "
                    "checkpoint pre-trained with --pixels full"
                ) from e
            except (OSError, UnreadableImage) as e:
                raise MaekitError(f"--images: cannot read {p} as an image ({e})") from e
    else:
        refuse_shards(cfg.data_path, "maekit visualize")
        has_val = cfg.data_path in BUILTIN or (Path(cfg.data_path) / "val").is_dir()
        reader = None
        if full:  # the run's scale; a checkpoint without one gets it resolved from the files
            scale = reading.max_value
            if scale is None:
                _, scale, _ = resolve_pixels(
                    cfg.data_path, "full", in_chans, None, reading.gray_to_rgb
                )
            reader = PixelReader("full", in_chans, scale, reading.gray_to_rgb)
        split = "val" if has_val else "train"
        ds = build_dataset(cfg.data_path, split, transform=None, reader=reader)
        samples = [ds[i][0] for i in subset_indices(len(ds), cfg.num_images, cfg.seed)]
    h, w = to_2tuple(input_size)
    out = []
    for img in samples:
        img = _fit(img, input_size)
        if isinstance(img, torch.Tensor):  # full precision: already (C, H, W) / max_value
            out.append(img.float())
        else:  # the 8-bit path, exactly as before: Pillow's values / 255
            arr = np.array(img.convert(image_mode(in_chans)), dtype=np.uint8)  # a writable copy
            out.append(torch.from_numpy(arr.reshape(h, w, in_chans)).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def run(cfg: VisualizeConfig) -> Path:
    """``maekit visualize``: write the grid, return its path."""
    from ..engine.distributed import resolve_device
    from .checkpoint_model import load_checkpoint_model

    cfg.validate()
    out = Path(cfg.out)
    if out.suffix.lower() != ".png":
        raise MaekitError(f"--out {out}: give a .png file name")
    if not out.parent.is_dir():
        raise MaekitError(f"--out {out}: folder {out.parent} does not exist")
    loaded = load_checkpoint_model(cfg, norm_pix_loss=cfg.norm_pix_loss, need_decoder=True)
    check_vis_channels(cfg.vis_channels, loaded.in_chans)
    reading = Reading.of(loaded.args, loaded.in_chans)
    pixels = load_images(cfg, loaded.input_size, loaded.in_chans, reading, cfg.checkpoint)
    device = resolve_device(cfg.device)
    model = loaded.model.to(device)
    stats = (loaded.mean, loaded.std)  # the checkpoint's own normalisation
    normalised = TF.normalize(pixels, *(list(v) for v in stats))
    recon, mask_px = reconstruct(
        model, normalised.to(device), cfg.mask_ratio, cfg.seed, family_of(model).mask_cells(model)
    )
    original, (recon_px,), shown = display_set(
        pixels,
        [unnormalize(recon, *stats)],
        cfg.vis_channels,
        vis_window(cfg.vis_window),
        reading.eight_bit,
    )
    columns = grid_columns(original, show_gray(original, recon_px), mask_px.cpu().numpy())
    scale = cfg.scale or max(1, math.ceil(112 / min(to_2tuple(loaded.input_size))))
    title = describe(
        loaded.name,
        loaded.input_size,
        model.patch_size,
        cfg.mask_ratio,
        cfg.seed,
        bool(model.norm_pix_loss),
        shown,
    )
    picture, _ = render_grid(columns, title, scale)
    try:
        picture.save(out)
    except OSError as e:
        raise MaekitError(f"could not write {out}: {e.strerror or e}; choose another --out") from e
    values = lambda v: "/".join(f"{x:g}" for x in v)  # noqa: E731
    one_line = title.replace("\n", "; ")
    print(
        f"wrote {out}: {counted(len(original), 'image')}, {one_line}. Inputs normalised with "
        "mean "
        f"{values(loaded.mean)}, std {values(loaded.std)}."
    )
    return out
