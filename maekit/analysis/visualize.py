"""``maekit visualize``: what the MAE reconstructs, as a PNG grid.

One row per image: original | masked (removed patches grey) | reconstruction | reconstruction
with the visible patches pasted back from the original. A model trained with
``norm_pix_loss`` predicts each patch normalised by its own mean and variance; those
predictions are mapped back with the statistics of the same patch of the input (the official
demo skips this, which is why norm-pix reconstructions look garbled there). The figure title
says which was done. Works for any model with MAE's interface: ``forward(imgs, mask_ratio,
noise) -> loss, pred, mask``, ``patchify``, ``unpatchify`` and ``norm_pix_loss``.
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
from ..errors import MaekitError
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


def load_images(
    cfg: VisualizeConfig, input_size: int | list[int], in_chans: int = 3
) -> torch.Tensor:
    """(N, C, H, W) float32 pixels on the model's scale (8-bit images / 255): resized (to
    cover, aspect kept, bicubic) and centre-cropped to the model's size; C = 1 (grayscale) for
    one-channel models."""
    from ..data import BUILTIN, build_dataset
    from ..data.folder import UnreadableImage, load_rgb
    from ..data.sampling import subset_indices
    from ..data.shards.locate import refuse_shards
    from ..data.transforms import ResizeToCover, image_mode

    if cfg.images:
        missing = [p for p in cfg.images if not Path(p).is_file()]
        if missing:
            raise MaekitError(f"--images: {', '.join(missing[:4])} not found")
        pils = []
        for p in cfg.images:
            try:
                pils.append(load_rgb(p))
            except (OSError, UnreadableImage) as e:
                raise MaekitError(f"--images: cannot read {p} as an image ({e})") from e
    else:
        refuse_shards(cfg.data_path, "maekit visualize")
        has_val = cfg.data_path in BUILTIN or (Path(cfg.data_path) / "val").is_dir()
        ds = build_dataset(cfg.data_path, "val" if has_val else "train", transform=None)
        pils = [ds[i][0] for i in subset_indices(len(ds), cfg.num_images, cfg.seed)]
    out = []
    for img in pils:
        if isinstance(input_size, int):
            img = TF.resize(img, input_size, interpolation=TF.InterpolationMode.BICUBIC)
        else:
            img = ResizeToCover(tuple(input_size))(img)
        h, w = to_2tuple(input_size)
        img = TF.center_crop(img, [h, w]).convert(image_mode(in_chans))
        out.append(np.asarray(img, dtype=np.uint8).reshape(h, w, in_chans))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


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
    pixels = load_images(cfg, loaded.input_size, loaded.in_chans)
    device = resolve_device(cfg.device)
    model = loaded.model.to(device)
    stats = (loaded.mean, loaded.std)  # the checkpoint's own normalisation
    normalised = TF.normalize(pixels, *(list(v) for v in stats))
    recon, mask_px = reconstruct(
        model, normalised.to(device), cfg.mask_ratio, cfg.seed, family_of(model).mask_cells(model)
    )
    original, (recon_px,), shown = display_set(
        pixels, [unnormalize(recon, *stats)], cfg.vis_channels, vis_window(cfg.vis_window), True
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
        f"wrote {out}: {len(original)} images, {one_line}. Inputs normalised with mean "
        f"{values(loaded.mean)}, std {values(loaded.std)}."
    )
    return out
