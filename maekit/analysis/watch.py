"""Watching a pre-training learn, without labels: ``val_loss`` and reconstruction grids.

Every ``--val_freq`` epochs the reconstruction loss of held-out images is logged as
``val_loss`` (log.txt, TensorBoard ``epoch/val_loss``, wandb). The images are ``val/`` when the
data has one (Fashion-MNIST's test set, an ImageNet-style ``val/`` folder), else, with
``--val_frac F``, a fixed fraction F of the training images, then kept out of training (never
without the flag: the official recipes train on every image). Each image is seen at the eval
transform (resize + centre crop) under its own fixed mask, so the numbers of two epochs (and
of two runs on the same data) differ only because the model did. Every ``--vis_freq``
epochs the first ``--vis_images`` of them are drawn as a reconstruction grid,
``reconstruction-{epoch}.png`` in the run folder, and logged as an image.

The held-out choice and the masks come from fixed seeds, not ``--seed``, so runs with
different seeds are measured on the same images and masks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import PretrainConfig
from ..config.fields import vis_window
from ..data import BUILTIN, FixedSubset, build_dataset
from ..data.pixels import reader_for
from ..data.robust import SkipUnreadable, collate_readable
from ..data.sampling import subset_indices
from ..data.shards.locate import is_shard_path
from ..data.transforms import eval_transform_of
from ..data.workers import make_loader
from ..engine.distributed import DistEnv, all_reduce_sum
from ..engine.evaluate import RankSplitSampler
from ..engine.fsdp import gathered
from ..engine.precision import Precision
from ..engine.progress import RunRecorder
from ..errors import counted
from ..models.family import family_of
from .display import display_set, is_eight_bit, unnormalize
from .visualize import describe, grid_columns, reconstruct, render_grid, show_gray

HOLDOUT_SEED = 0  # which training images --val_frac keeps out
VAL_SEED = 0  # which validation images are used, and their masks


def holdout_indices(n: int, frac: float) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices) of ``n`` images: a fixed random ``frac`` held out
    (at least one image, at most n - 1), both in dataset order."""
    k = min(max(1, round(n * frac)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED)).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


def validation_split(
    cfg: PretrainConfig, train_set: Dataset
) -> tuple[Dataset, Dataset | None, str]:
    """(training set, validation set or None, a line saying where val_loss comes from).

    Called before ``--gpu_decode`` wraps the training set: a held-out split is a Subset of it.
    """
    if not cfg.val_freq and not cfg.vis_freq:
        return train_set, None, "validation: off (--val_freq 0 --vis_freq 0)"
    if is_shard_path(cfg.data_path):
        return train_set, None, "validation: off for tar shards (val_loss needs indexable images)"
    transform, reader = eval_transform_of(cfg), reader_for(cfg)
    if cfg.data_path in BUILTIN or Path(cfg.data_path, "val").is_dir():
        val_set = build_dataset(cfg.data_path, "val", transform, cfg.max_pixels, reader)
        noun, where, flags = "image", " of val/", []
    elif cfg.val_frac is None:  # the official recipe trains on every image: no silent hold-out
        return (
            train_set,
            None,
            (
                "validation: off, no val/ folder; --val_frac 0.01 holds out 1% of the "
                "training images for val_loss and the reconstruction grids"
            ),
        )
    elif cfg.gpu_decode:
        return train_set, None, "validation: off (--gpu_decode without a val/ folder)"
    else:
        train_idx, held = holdout_indices(len(train_set), cfg.val_frac)
        val_set = FixedSubset(
            build_dataset(cfg.data_path, "train", transform, cfg.max_pixels, reader), held
        )
        train_set = FixedSubset(train_set, train_idx)
        noun, where, flags = "training image", " held out", [f"--val_frac {cfg.val_frac}"]
    available = len(val_set)
    val_set = FixedSubset(val_set, subset_indices(available, cfg.val_max_images, VAL_SEED))
    # "16 training images held out (...)", "256 of 10000 images of val/ (--val_max_images 256)"
    text = counted(available, noun) + where
    if len(val_set) < available:
        text = f"{len(val_set)} of {text}"
        flags.append(f"--val_max_images {cfg.val_max_images}")
    text += f" ({'; '.join(flags)})" if flags else ""
    return train_set, val_set, f"validation: {text}, fixed masks"


class _Indexed(Dataset):
    """(image, index): the index picks the image's fixed mask."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i][0], i


class ReconstructionWatch:
    """epoch -> {'val_loss': ...} on the epochs it runs; writes the grids. Every rank calls it
    (the loss is summed over ranks); ``model`` is the bare module, not the DDP wrapper."""

    def __init__(
        self,
        cfg: PretrainConfig,
        model: torch.nn.Module,
        val_set: Dataset,
        env: DistEnv,
        precision: Precision,
        recorder: RunRecorder,
        output_dir: Path,
        num_workers: int,
    ) -> None:
        self.cfg, self.model, self.val_set, self.env = cfg, model, val_set, env
        self.precision, self.recorder, self.output_dir = precision, recorder, output_dir
        sampler = RankSplitSampler(
            len(val_set), env.rank, env.world_size
        )  # exact shares, no padding
        self.loader = make_loader(
            SkipUnreadable(_Indexed(val_set)),
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_readable,
        )
        self.noise: torch.Tensor | None = None  # (N_val, L) uniform noise: the fixed masks
        self.last_grid: Path | None = None

    def _due(self, every: int, epoch: int) -> bool:
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.epochs)

    def __call__(self, epoch: int) -> dict[str, float]:
        out = {}
        if self._due(self.cfg.val_freq, epoch):
            out["val_loss"] = self.val_loss()
            if self.env.is_main:
                print(
                    f"epoch {epoch}: val_loss {out['val_loss']:.4f} "
                    f"({counted(len(self.val_set), 'image')}, fixed masks)",
                    flush=True,
                )
        if self._due(self.cfg.vis_freq, epoch):
            self.grid(epoch)
        return out

    def _masks(self, n_cells: int) -> torch.Tensor:
        """One fixed noise row per validation image, over the cells the family masks."""
        if self.noise is None or self.noise.shape[1] != n_cells:
            g = torch.Generator().manual_seed(VAL_SEED)
            self.noise = torch.rand((len(self.val_set), n_cells), generator=g)
        return self.noise

    @torch.no_grad()
    def val_loss(self) -> float:
        """Mean reconstruction loss per image (each image has the same number of masked patches)."""
        device = self.env.device
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss x images, images
        self.model.eval()
        with gathered(self.model):
            for batch in self.loader:
                if batch is None:
                    continue
                imgs, idx = batch
                imgs = imgs.to(device, non_blocking=True)
                noise = self._masks(family_of(self.model).mask_cells(self.model))[idx].to(device)
                with self.precision.autocast():
                    loss = self.model(imgs, mask_ratio=self.cfg.mask_ratio, noise=noise)[0]
                sums[0] += loss.double() * imgs.shape[0]
                sums[1] += imgs.shape[0]
        self.model.train()
        all_reduce_sum(sums)
        return (sums[0] / sums[1]).item() if sums[1].item() > 0 else float("nan")

    @torch.no_grad()
    def grid(self, epoch: int) -> Path | None:
        """reconstruction-{epoch}.png of the first --vis_images validation images; logged as an image."""
        k = min(self.cfg.vis_images, len(self.val_set))
        readable = SkipUnreadable(self.val_set)
        shown = []  # the first k readable validation images (a bad file must not end the run)
        for i in range(len(readable)):
            if len(shown) == k:
                break
            sample = readable[i]
            if sample is not None:
                shown.append(sample[0])
        if not shown:
            return None
        imgs = torch.stack(shown)  # (k, C, H, W), eval transform
        with gathered(self.model):
            recon, mask_px = reconstruct(
                self.model,
                imgs.to(self.env.device),
                self.cfg.mask_ratio,
                VAL_SEED,
                family_of(self.model).mask_cells(self.model),
            )
        self.model.train()
        if not self.env.is_main:
            return None
        stats = (getattr(self.cfg, "mean", None), getattr(self.cfg, "std", None))  # the run's
        original, (recon_px,), shown = display_set(
            unnormalize(imgs, *stats),
            [unnormalize(recon, *stats)],
            getattr(self.cfg, "vis_channels", None),
            vis_window(getattr(self.cfg, "vis_window", None)),
            is_eight_bit(getattr(self.cfg, "max_value", None)),
        )
        columns = grid_columns(original, show_gray(original, recon_px), mask_px.cpu().numpy())
        h, w = imgs.shape[-2:]
        size = h if h == w else [h, w]
        title = f"epoch {epoch}: " + describe(
            self.cfg.model,
            size,
            self.model.patch_size,
            self.cfg.mask_ratio,
            VAL_SEED,
            bool(self.model.norm_pix_loss),
            shown,
        )
        picture, _ = render_grid(columns, title, max(1, -(-112 // min(h, w))))
        path = self.output_dir / f"reconstruction-{epoch}.png"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        picture.save(tmp, format="PNG")
        tmp.replace(path)  # a viewer never sees half a file
        self.recorder.image("reconstruction", np.asarray(picture), epoch)
        self.last_grid = path
        return path
