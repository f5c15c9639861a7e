"""``maekit pretrain``: MAE pre-training, the official recipe."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset

from ..analysis.watch import ReconstructionWatch, validation_split
from ..config import PretrainConfig
from ..data import build_dataset, build_train_loader, limit_train_set
from ..data.device import NormalizeOnDevice
from ..data.gpu_decode import GpuDecodeLoader, collate_encoded, encoded_folder
from ..data.pixels import reader_for, resolve_for
from ..data.transforms import PRETRAIN_SCALE, pretrain_transform, resolve_stats
from ..engine import run as runner
from ..engine.optim import build_adamw, weight_decay_groups
from ..engine.recipe import Monitors, Recipe
from ..engine.trainer import LossFn
from ..errors import MaekitError, counted
from ..models import create_model, get_entry, list_models
from ..models.family import family_of, family_of_name


def build_model(cfg: PretrainConfig) -> torch.nn.Module:
    entry = get_entry(cfg.model)
    if entry.kind != "pretrain":
        raise MaekitError(
            f"{cfg.model!r} is not a pre-training model; `maekit pretrain` takes one of: "
            + ", ".join(list_models("pretrain"))
        )
    kw = {}
    if cfg.dense_stages:
        option = family_of_name(cfg.model).dense_option
        if option is None:
            raise MaekitError(
                f"--dense_stages selects ConvMAE's dense conv stages; {cfg.model!r} has none, "
                "drop the flag"
            )
        kw[option] = True
    return create_model(cfg.model, norm_pix_loss=cfg.norm_pix_loss, **kw, **cfg.size_overrides())


def build_optimizer(
    cfg: PretrainConfig, model: torch.nn.Module, lr: float
) -> torch.optim.Optimizer:
    """AdamW(0.9, 0.95), no decay for biases and 1-D params (fused kernel where available)."""
    groups = weight_decay_groups(model, cfg.weight_decay)
    return build_adamw(groups, lr, betas=(0.9, 0.95), device=next(model.parameters()).device)


def build_loss(cfg: PretrainConfig) -> LossFn:
    """loss_fn(model, imgs, targets): the MAE reconstruction loss (labels unused)."""
    mask_ratio = cfg.mask_ratio

    def loss_fn(m: torch.nn.Module, imgs: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
        return m(imgs, mask_ratio=mask_ratio)[0]

    return loss_fn


def gpu_dataset(cfg: PretrainConfig, dataset):
    """--gpu_decode: the folder's files as bytes + crop/flip draws (decoded on the GPU)."""
    from ..engine.distributed import resolve_device

    if resolve_device(cfg.device).type != "cuda":
        raise MaekitError("--gpu_decode needs a CUDA device (nvJPEG); drop it to decode on the CPU")
    return encoded_folder(dataset, PRETRAIN_SCALE)


def knn_datasets(cfg: PretrainConfig) -> tuple:
    """(bank, queries, number of classes) for --knn_eval_freq: train/ and val/ at the eval transform,
    capped by --knn_max_bank / --knn_max_query (fixed random subsets)."""
    from torch.utils.data import Subset

    from ..analysis.knn import labeled_splits
    from ..data.sampling import subset_indices
    from ..data.transforms import eval_transform_of

    try:
        bank, queries, num_classes = labeled_splits(
            cfg.data_path, eval_transform_of(cfg), reader_for(cfg)
        )
    except MaekitError as e:
        raise MaekitError(f"--knn_eval_freq: {e} (or drop --knn_eval_freq)") from e
    bank = Subset(bank, subset_indices(len(bank), cfg.knn_max_bank, cfg.seed))
    queries = Subset(queries, subset_indices(len(queries), cfg.knn_max_query, cfg.seed))
    return bank, queries, num_classes


def init_weights(cfg: PretrainConfig, model: torch.nn.Module) -> str:
    """--init: load the weights into ``model`` (adapted to its channels and grid) and return the
    line to print; a run folder with progress is auto-resumed instead (said in the line)."""
    from ..checkpoint.pretrained import init_from_checkpoint
    from ..checkpoint.rundir import find_resume_checkpoint

    found = find_resume_checkpoint(cfg.output_dir) if cfg.auto_resume else None
    if found:
        return (
            f"--init {cfg.init} not used: {cfg.output_dir} already has progress ({found[0].name}), "
            "auto-resuming from it (give a new --output_dir to start over from --init)"
        )
    return init_from_checkpoint(model, cfg.init)


@dataclass(frozen=True)
class KnnData:
    """--knn_eval_freq's fixed subsets: the bank (train/), the queries (val/), the class count."""

    bank: Dataset
    queries: Dataset
    num_classes: int


@dataclass(frozen=True)
class PretrainData:
    """What a pre-training run reads, opened and checked before anything starts."""

    train_set: Dataset
    val_set: Dataset | None  # val_loss and the grids (val/ or --val_frac); None when off
    val_note: str  # where val_loss comes from
    knn: KnnData | None  # --knn_eval_freq


@dataclass
class PretrainMonitors(Monitors):
    """The watch and the k-NN of the initial weights, for the closing lines."""

    watch: ReconstructionWatch | None = None
    knn_baseline: dict | None = None


class PretrainRecipe(Recipe):
    """MAE / ConvMAE pre-training: the reconstruction loss on masked images, AdamW(0.9, 0.95);
    watched by a validation reconstruction loss, grids and (optionally) k-NN."""

    cfg: PretrainConfig
    data: PretrainData

    def resolve(self, cfg: PretrainConfig) -> tuple[PretrainConfig, list[str]]:
        # How files are read (8-bit or full precision, the scale), then the statistics in use:
        # saved as values in config.json and every checkpoint's args.
        cfg, line = resolve_for(cfg)
        if cfg.gpu_decode and cfg.pixels == "full":
            raise MaekitError(
                "--gpu_decode decodes 8-bit JPEGs; these files are read at full precision "
                "(--pixels full): drop --gpu_decode"
            )
        mean, std = (list(v) for v in resolve_stats(cfg.in_chans, cfg.mean, cfg.std))
        return replace(cfg, mean=mean, std=std), [line] if line else []

    def train_transform(self):
        cfg = self.cfg
        # 8-bit: uint8 crops from the workers, normalised on the device by the loader
        # (train_loader); full precision: float tensors normalised in the workers
        return pretrain_transform(
            cfg.input_size,
            cfg.in_chans,
            cfg.mean,
            cfg.std,
            uint8=True,
            full=cfg.pixels == "full",
            vflip=cfg.vflip,
            rot90=cfg.rot90,
        )

    def load_data(self, cfg: PretrainConfig) -> PretrainData:
        family = family_of_name(cfg.model)
        if cfg.knn_eval_freq and cfg.knn_pool == "cls" and not family.cls_token:
            from ..analysis.features import cls_pool_refusal

            raise MaekitError(cls_pool_refusal(family))
        dataset = build_dataset(
            cfg.data_path, "train", self.train_transform(), cfg.max_pixels, reader_for(cfg)
        )
        dataset, val_set, val_note = validation_split(cfg, dataset)  # val/ or --val_frac
        if cfg.gpu_decode:
            dataset = gpu_dataset(cfg, dataset)
        train_set = limit_train_set(dataset, cfg.max_train_images, cfg.seed)
        knn = KnnData(*knn_datasets(cfg)) if cfg.knn_eval_freq else None  # labels checked now
        return PretrainData(train_set, val_set, val_note, knn)

    def build_model(self) -> torch.nn.Module:
        model = build_model(self.cfg)
        cells = family_of(model).mask_cells(model)
        if int(cells * (1 - self.cfg.mask_ratio)) < 1:  # draw_mask keeps int(L * (1 - ratio))
            raise MaekitError(
                f"--mask_ratio {self.cfg.mask_ratio:g} leaves no visible cell of the {cells} "
                f"this model masks (at --input_size {self.cfg.input_size}); lower it to at most "
                f"{1 - 1 / cells:.4g}"
            )
        if self.cfg.init:
            self.notes.append(init_weights(self.cfg, model))
        return model

    def train_loader(self, ctx):
        cfg, env = self.cfg, ctx.env
        loader = build_train_loader(
            self.data.train_set,
            cfg.batch_size,
            env.rank,
            env.world_size,
            cfg.seed,
            ctx.num_workers,
            ctx.pin_memory,
            collate_fn=collate_encoded if cfg.gpu_decode else None,
        )
        if cfg.gpu_decode:
            return GpuDecodeLoader(loader, env.device, cfg.input_size)
        if cfg.pixels == "full":  # float batches, already normalised
            return loader
        return NormalizeOnDevice(loader, env.device, cfg.mean, cfg.std)

    def data_lines(self, loader, model) -> list[str]:
        return [
            f"data: {self.cfg.data_path} ({counted(len(self.data.train_set), 'image')}), "
            f"{len(loader)} steps/epoch per process",
            self.data.val_note,
        ]

    def build_optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        return build_optimizer(self.cfg, model, lr)

    def build_loss(self) -> LossFn:
        return build_loss(self.cfg)

    def monitors(self, ctx, model) -> PretrainMonitors:
        cfg, env, data = self.cfg, ctx.env, self.data
        out = PretrainMonitors()
        if data.val_set is not None:
            out.watch = ReconstructionWatch(
                cfg,
                model.bare,
                data.val_set,
                env,
                ctx.precision,
                ctx.recorder,
                ctx.output_dir,
                ctx.num_workers,
            )
            out.each.append(out.watch)
        if data.knn is not None:
            from ..analysis.knn import knn_evaluate, knn_monitor

            knn = (data.knn.bank, data.knn.queries, data.knn.num_classes)
            if cfg.knn_baseline:  # the initial (random) weights, before any step: same subsets
                out.knn_baseline = knn_evaluate(
                    model.bare,
                    *knn,
                    env,
                    ctx.precision,
                    cfg.knn_pool,
                    batch_size=cfg.batch_size,
                    num_workers=ctx.num_workers,
                    progress=False,
                )
                if env.is_main:
                    print(
                        f"k-NN top-1 of the initial ({'--init' if cfg.init else 'random'}) weights: "
                        f"{out.knn_baseline['acc1']:.2f}%",
                        flush=True,
                    )
            out.each.append(
                knn_monitor(
                    model.bare,
                    *knn,
                    cfg.knn_eval_freq,
                    cfg.epochs,
                    env,
                    ctx.precision,
                    cfg.knn_pool,
                    cfg.batch_size,
                    ctx.num_workers,
                )
            )
        return out

    def finish(self, history: list[dict], monitors: PretrainMonitors) -> None:
        """The run's closing lines: the last reconstruction grid, and the k-NN top-1 of the
        trained encoder beside its initial weights (--knn_baseline)."""
        cfg = self.cfg
        watch, baseline = monitors.watch, monitors.knn_baseline
        if watch is not None and watch.last_grid is not None:
            print(f"reconstructions of fixed validation images: {watch.last_grid}")
        knn = [h["knn_acc1"] for h in history if "knn_acc1" in h]
        if baseline is not None and knn:
            bank, queries = self.data.knn.bank, self.data.knn.queries
            print(
                f"k-NN top-1 on {cfg.data_path} ({len(queries)} val images, bank of {len(bank)} train images, "
                f"k=20): pre-trained encoder {knn[-1]:.2f}%, random-init encoder {baseline['acc1']:.2f}%"
            )


RECIPE = PretrainRecipe


def run(cfg: PretrainConfig) -> list[dict]:
    """Pre-train and return the per-epoch log records."""
    return runner.run(PretrainRecipe(cfg))
