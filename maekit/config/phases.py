"""The three phases' configs: pre-training, fine-tuning, linear probing.

Field names are the official MAE / PLSC flag names, so existing command lines work unchanged.
Shared fields live in :class:`CommonConfig` (and :class:`SupervisedConfig` for the two
supervised phases); a phase subclass only adds its own fields and overrides defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..errors import MaekitError
from .fields import (
    GRAY_TO_RGB_HELP,
    IN_CHANS_HELP,
    INPUT_SIZE_HELP,
    MAX_VALUE_HELP,
    MEAN_HELP,
    PIXELS_HELP,
    ROT90_HELP,
    STD_HELP,
    VFLIP_HELP,
    VIS_CHANNELS_HELP,
    VIS_WINDOW_HELP,
    check_finite,
    check_image_size,
    check_pixels,
    check_stats,
    check_vis_channels,
    image_size_value,
    opt,
    vis_window,
)


@dataclass(frozen=True)
class CommonConfig:
    # --- optimisation ---
    batch_size: int = opt(
        64, "batch size per process (effective = batch_size * accum_iter * world size)"
    )
    epochs: int = opt(400, "total training epochs", resumable=True)
    accum_iter: int = opt(1, "gradient accumulation steps per optimizer update")
    lr: float | None = opt(None, "absolute learning rate; default blr * effective_batch / 256")
    blr: float = opt(1e-3, "base learning rate, scaled by effective_batch / 256")
    min_lr: float = opt(0.0, "lower lr bound of the cosine schedule")
    warmup_epochs: float = opt(40, "epochs of linear lr warm-up")
    weight_decay: float = opt(0.05, "AdamW weight decay (not applied to biases and 1-D params)")
    clip_grad: float | None = opt(
        None, "clip the gradient norm to this value (default: no clipping)"
    )
    amp: str = opt(
        "auto",
        "mixed precision: auto = bf16 where the device runs it fast, else fp32",
        choices=("auto", "bf16", "fp16", "none"),
        resumable=True,
    )
    # --- model ---
    model: str = opt("mae_vit_large_patch16", "registered model name (see `maekit models`)")
    input_size: int | list[int] = opt(224, INPUT_SIZE_HELP, nargs="+")
    patch_size: int | None = opt(
        None, "override the model's patch size (e.g. 4 for 28-32 px images)"
    )
    in_chans: int = opt(3, IN_CHANS_HELP)
    mean: list[float] | None = opt(None, MEAN_HELP)
    std: list[float] | None = opt(None, STD_HELP)
    pixels: str = opt("auto", PIXELS_HELP, choices=("auto", "8bit", "full"))
    max_value: float | None = opt(None, MAX_VALUE_HELP)
    gray_to_rgb: bool = opt(False, GRAY_TO_RGB_HELP)
    vflip: bool = opt(False, VFLIP_HELP)
    rot90: bool = opt(False, ROT90_HELP)
    # --- data ---
    data_path: str = opt(
        "fashion-mnist",
        "ImageNet-style folder (train/, val/), a plain image folder, 'fashion-mnist', or tar "
        "shards: a folder/URL with train/shards.json, or a pattern such as "
        "DIR/{split}/shard-{000000..000127}.tar",
        resumable=True,
    )
    download: bool = opt(
        False,
        "fetch Fashion-MNIST with torchvision if it is not found (needs a network)",
        resumable=True,
    )
    num_workers: int = opt(
        10, "data-loading worker processes per rank (capped at the CPU count)", resumable=True
    )
    pin_mem: bool = opt(True, "pin host memory for faster GPU copies", resumable=True)
    # --- speed (see `maekit bench`) ---
    compile: bool = opt(
        False, "torch.compile the model for the training step (first steps compile)", resumable=True
    )
    grad_ckpt: bool = opt(
        False,
        "activation checkpointing of the transformer blocks: less memory, ~1/3 more compute",
        resumable=True,
    )
    # --- distributed training ---
    dist_mode: str = opt(
        "ddp",
        "multi-process training: ddp (replicated weights) or fsdp (FSDP2: "
        "weights, gradients and optimizer state sharded per block; ViT-L/H)",
        choices=("ddp", "fsdp"),
        resumable=True,
    )
    # --- run ---
    output_dir: str = opt(
        "./output_dir", "where checkpoints, log.txt and config.json go", resumable=True
    )
    log_dir: str | None = opt(None, "TensorBoard directory (default: output_dir)", resumable=True)
    device: str = opt(
        "auto", "'auto' (cuda if available), 'cuda', 'cuda:N' or 'cpu'", resumable=True
    )
    seed: int = opt(0, "random seed (each rank uses seed + rank)")
    resume: str = opt(
        "", "checkpoint to resume from (model, optimizer, scaler, epoch)", resumable=True
    )
    auto_resume: bool = opt(
        True,
        "without --resume, continue from the newest checkpoint in --output_dir that loads "
        "cleanly; --no_auto_resume always starts fresh",
        resumable=True,
    )
    keep_last: int | None = opt(
        None,
        "keep only the newest K checkpoint-{epoch}.pth files (last and best always kept)",
        resumable=True,
    )
    max_nonfinite: int = opt(
        0,
        "skip up to N steps whose loss or gradient is not finite (0: stop at the first)",
        resumable=True,
    )
    on_nonfinite: str = opt(
        "stop",
        "on a non-finite loss or update (or, with --spike_factor, a loss spike): stop cleanly, "
        "or roll back to the last good state in memory (checked every --print_freq steps), "
        "skip the batches since it and go on (docs/fault-tolerance.md)",
        choices=("stop", "rollback"),
        resumable=True,
    )
    spike_factor: float | None = opt(
        None,
        "with --on_nonfinite rollback: a step whose loss is above this many times the mean of "
        "the recent good losses is a spike, rolled back too (default: spikes are not checked)",
        resumable=True,
    )
    max_recoveries: int = opt(
        3,
        "with --on_nonfinite rollback: stop after more than this many recoveries within "
        "--recovery_window steps",
        resumable=True,
    )
    recovery_window: int = opt(
        1000,
        "steps (batches) over which --max_recoveries counts, and for which "
        "--recovery_lr_scale applies after a recovery",
        resumable=True,
    )
    recovery_lr_scale: float = opt(
        1.0,
        "with --on_nonfinite rollback: multiply the lr by this for --recovery_window steps "
        "after a recovery (1: unchanged)",
        resumable=True,
    )
    max_bad_frac: float = opt(
        0.01,
        "stop when more than this fraction of an epoch's images cannot be read",
        resumable=True,
    )
    max_pixels: int = opt(
        120_000_000,
        "skip (and count as unreadable) images with more pixels than this, before decoding them",
        resumable=True,
    )
    start_epoch: int = opt(0, "first epoch (overwritten by --resume)", resumable=True)
    save_freq: int = opt(
        20, "save checkpoint-{epoch}.pth every N epochs (and at the last epoch)", resumable=True
    )
    print_freq: int = opt(
        20, "log every N steps (the loss is read from the device only then)", resumable=True
    )
    max_train_step: int | None = opt(
        None, "stop each epoch after this many steps (smoke tests, benchmarks)", resumable=True
    )
    max_train_images: int | None = opt(
        None,
        "train on a fixed random subset (--seed) of this many training images, the same "
        "every epoch and run (none: all), e.g. 5000 of fashion-mnist; not for tar shards",
    )
    # --- distributed (torchrun's environment takes precedence; kept for compatibility) ---
    world_size: int = opt(1, "number of processes (set by torchrun)", resumable=True)
    local_rank: int = opt(-1, "local rank (set by torchrun)", resumable=True)
    dist_url: str = opt(
        "env://", "rendezvous URL (torchrun sets the environment instead)", resumable=True
    )
    dist_on_itp: bool = opt(
        False,
        "accepted for compatibility with the official script; torchrun's environment is used",
        resumable=True,
    )
    # --- Weights & Biases (optional: pip install maekit[wandb]) ---
    log_wandb: bool = opt(
        False,
        "also log the scalars and images to Weights & Biases (WANDB_MODE=offline works)",
        resumable=True,
    )
    wandb_project: str = opt(
        "maekit", "Weights & Biases project (with --log_wandb)", resumable=True
    )
    wandb_name: str | None = opt(
        None, "Weights & Biases run name (default: the output folder's name)", resumable=True
    )

    def __post_init__(self) -> None:
        # frozen: the one normalisation a config makes of its own value
        object.__setattr__(self, "input_size", image_size_value(self.input_size))

    def validate(self) -> None:
        """Raise MaekitError naming the bad value and the fix."""
        check_image_size(self.input_size)
        check_stats(self.mean, self.std, self.in_chans)
        check_finite(self)
        positive = {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "accum_iter": self.accum_iter,
            "save_freq": self.save_freq,
            "print_freq": self.print_freq,
            "in_chans": self.in_chans,
        }
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise MaekitError(f"--{name} must be a positive integer, got {value}")
        check_pixels(self.pixels, self.max_value, self.input_size, self.rot90)
        if self.patch_size is not None and self.patch_size <= 0:
            raise MaekitError(f"--patch_size must be positive, got {self.patch_size}")
        if self.warmup_epochs < 0:
            raise MaekitError(f"--warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.lr is not None and self.lr <= 0 or self.blr <= 0:
            raise MaekitError("--lr/--blr must be positive")
        if self.max_train_step is not None and self.max_train_step <= 0:
            raise MaekitError(f"--max_train_step must be positive, got {self.max_train_step}")
        if self.max_train_images is not None and self.max_train_images <= 0:
            raise MaekitError(f"--max_train_images must be positive, got {self.max_train_images}")
        if self.keep_last is not None and self.keep_last < 1:
            raise MaekitError(f"--keep_last must be at least 1, got {self.keep_last}")
        if self.max_nonfinite < 0:
            raise MaekitError(f"--max_nonfinite must be >= 0, got {self.max_nonfinite}")
        self._validate_recovery()
        if not 0.0 <= self.max_bad_frac <= 1.0:
            raise MaekitError(f"--max_bad_frac must be in [0, 1], got {self.max_bad_frac}")
        if self.num_workers < 0:
            raise MaekitError(f"--num_workers must be >= 0, got {self.num_workers}")
        if self.weight_decay < 0 or self.min_lr < 0:
            raise MaekitError(
                f"--weight_decay and --min_lr must be >= 0, got {self.weight_decay} "
                f"and {self.min_lr}"
            )
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise MaekitError(
                f"--clip_grad must be a positive gradient norm, got {self.clip_grad} "
                "(leave it out for no clipping)"
            )
        if self.lr is not None and self.min_lr > self.lr:
            raise MaekitError(
                f"--min_lr {self.min_lr} is above --lr {self.lr}; the cosine schedule "
                "decays from --lr to --min_lr"
            )
        if self.max_pixels <= 0:
            raise MaekitError(f"--max_pixels must be positive, got {self.max_pixels}")

    def _validate_recovery(self) -> None:
        rollback = self.on_nonfinite == "rollback"
        if self.spike_factor is not None and not rollback:
            raise MaekitError(
                "--spike_factor needs --on_nonfinite rollback (a spike is rolled back, never "
                "stopped at); add --on_nonfinite rollback or leave --spike_factor out"
            )
        if self.spike_factor is not None and not self.spike_factor > 1.0:
            raise MaekitError(
                f"--spike_factor must be above 1 (a multiple of the recent mean loss), got "
                f"{self.spike_factor}"
            )
        if self.max_recoveries < 0:
            raise MaekitError(f"--max_recoveries must be >= 0, got {self.max_recoveries}")
        if self.recovery_window <= 0:
            raise MaekitError(
                f"--recovery_window must be a positive number of steps, got {self.recovery_window}"
            )
        if not 0.0 < self.recovery_lr_scale <= 1.0:
            raise MaekitError(
                f"--recovery_lr_scale must be in (0, 1], got {self.recovery_lr_scale}"
            )

    def size_overrides(self) -> dict:
        """create_model arguments for the input geometry (--input_size, --in_chans, --patch_size)."""
        # None (fine-tuning: not resolved from a checkpoint yet) means the defaults
        kw = {"img_size": self.input_size or 224, "in_chans": self.in_chans or 3}
        if self.patch_size is not None:
            kw["patch_size"] = self.patch_size
        return kw

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PretrainConfig(CommonConfig):
    command: ClassVar[str] = "pretrain"  # the phase's name: its CLI command and --phase choice
    summary: ClassVar[str] = "MAE pre-training (official recipe)"

    init: str = opt(
        "",
        "start from these weights at epoch 0 with a fresh optimizer and schedule: any checkpoint "
        "maekit reads (official .pth, encoder-only .pth, PLSC .pd/.pdparams, maekit, safetensors, "
        "a Hugging Face folder); channels and position tables are adapted to this run",
        resumable=True,
    )
    mask_ratio: float = opt(0.75, "fraction of patches removed, in (0, 1)")
    norm_pix_loss: bool = opt(
        False, "use per-patch normalised pixels as the target (published recipe)"
    )
    dense_stages: bool = opt(
        False,
        "ConvMAE: compute conv stages 1-2 on every cell, masked, as the official code does, "
        "instead of at the visible cells only (same loss and gradients, 1.4x the FLOPs)",
        resumable=True,
    )

    # k-NN monitoring of the encoder while pre-training (needs labels; an addition)
    knn_eval_freq: int = opt(
        0,
        "every N epochs (and at the last) log the k-NN top-1/top-5 of the encoder (0 = off)",
        resumable=True,
    )
    knn_max_bank: int | None = opt(
        None,
        "k-NN bank: a fixed random subset of this many training images (none: all)",
        resumable=True,
    )
    knn_max_query: int | None = opt(
        None,
        "k-NN queries: a fixed random subset of this many val images (none: all)",
        resumable=True,
    )
    knn_pool: str = opt(
        "cls",
        "k-NN feature: the cls token or the mean of the patch tokens",
        choices=("cls", "mean"),
        resumable=True,
    )
    gpu_decode: bool = opt(
        False,
        "decode JPEGs and crop/flip on the GPU (nvJPEG): image folders on CUDA only",
        resumable=True,
    )
    knn_baseline: bool = opt(
        False,
        "with --knn_eval_freq: also k-NN the initial (random) weights on the same subsets "
        "before training, and print both top-1s at the end",
        resumable=True,
    )

    # Watching the reconstruction (label-free; an addition)
    val_freq: int = opt(
        1,
        "every N epochs (and at the last) log val_loss: the reconstruction loss of held-out "
        "images under a fixed mask (0 = off, nothing held out)",
        resumable=True,
    )
    val_frac: float | None = opt(
        None,
        "without a val/ folder: hold out this fraction of the training images (a fixed "
        "choice) for val_loss and the grids, in (0, 0.5] (none: no hold-out, the official data)",
    )
    val_max_images: int | None = opt(
        1000,
        "val_loss on a fixed subset of this many validation images (none: all)",
        resumable=True,
    )
    vis_freq: int = opt(
        20,
        "every N epochs (and at the last) save reconstruction-{epoch}.png of fixed validation "
        "images and log it to TensorBoard (0 = off)",
        resumable=True,
    )
    vis_images: int = opt(8, "rows of the reconstruction grid")
    vis_channels: list[int] | None = opt(None, VIS_CHANNELS_HELP, resumable=True)
    vis_window: list[str] | None = opt(None, VIS_WINDOW_HELP, resumable=True)  # None: auto

    def validate(self) -> None:
        super().validate()
        if self.init and self.resume:
            raise MaekitError(
                "--init starts a new run from weights (epoch 0, fresh optimizer) and --resume "
                "continues a run; give one of them"
            )
        if self.gpu_decode and (self.mean is not None or self.std is not None):
            raise MaekitError(
                "--gpu_decode normalises with the default statistics; drop it to use --mean/--std"
            )
        if self.gpu_decode and not isinstance(self.input_size, int):
            raise MaekitError("--gpu_decode crops square images; drop it for --input_size H W")
        if self.val_frac is not None and not 0.0 < self.val_frac <= 0.5:
            raise MaekitError(f"--val_frac must be in (0, 0.5], got {self.val_frac}")
        for name in ("val_freq", "vis_freq"):
            if getattr(self, name) < 0:
                raise MaekitError(f"--{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if self.val_max_images is not None and self.val_max_images <= 0:
            raise MaekitError(f"--val_max_images must be positive, got {self.val_max_images}")
        if self.vis_images <= 0:
            raise MaekitError(f"--vis_images must be positive, got {self.vis_images}")
        if self.knn_baseline and not self.knn_eval_freq:
            raise MaekitError(
                "--knn_baseline compares with the trained encoder's k-NN: add --knn_eval_freq N"
            )
        if self.gpu_decode and self.data_path in ("fashion-mnist", "fashion_mnist", "fmnist"):
            raise MaekitError(
                "--gpu_decode decodes JPEG folders; drop it for --data_path fashion-mnist"
            )
        if self.gpu_decode and self.in_chans != 3:
            raise MaekitError(
                f"--gpu_decode decodes JPEGs to RGB; drop it for --in_chans {self.in_chans}"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise MaekitError(
                f"--mask_ratio must be in (0, 1), got {self.mask_ratio}: the loss is "
                "computed on the masked patches, so some must be masked"
            )
        if self.knn_eval_freq < 0:
            raise MaekitError(f"--knn_eval_freq must be >= 0 (0 = off), got {self.knn_eval_freq}")
        for name in ("knn_max_bank", "knn_max_query"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise MaekitError(f"--{name} must be positive, got {getattr(self, name)}")
        check_vis_channels(self.vis_channels, self.in_chans)
        vis_window(self.vis_window)


@dataclass(frozen=True)
class SupervisedConfig(CommonConfig):
    """Fields shared by fine-tuning and linear probing (labels, evaluation, pre-trained init)."""

    # None: the encoder named in the --resume (or --finetune) checkpoint's saved args, else
    # default_model; so `--eval --resume` of maekit's own checkpoint needs no --model
    model: str | None = opt(None, "registered encoder name (see `maekit models`)")
    finetune: str = opt(
        "", "pre-training checkpoint to initialise the encoder from", resumable=True
    )
    # None: the value saved in the --finetune (or --resume) checkpoint, else the default
    input_size: int | list[int] | None = opt(
        None,
        "image size in pixels, one number or height width (none: the checkpoint's, else 224)",
        nargs="+",
    )
    in_chans: int | None = opt(None, "input channels (none: the checkpoint's, else 3)")
    mean: list[float] | None = opt(
        None, MEAN_HELP.replace("(default:", "(default: the checkpoint's, else")
    )
    std: list[float] | None = opt(
        None, "normalisation std, one value per input channel (default: as --mean)"
    )
    nb_classes: int | None = opt(
        None, "number of classes (default: taken from the dataset; checked against it)"
    )
    # One choice stored as two switches (both off: the phase's default); on the command line the
    # later of --global_pool / --cls_token wins, and --no_X picks the other pooling.
    global_pool: bool = opt(
        False,
        "classify the mean of the patch tokens (fc_norm -> head); --no_global_pool: the cls token",
        opposite="cls_token",
    )
    cls_token: bool = opt(
        False,
        "classify the cls token (norm -> cls -> head); --no_cls_token: the global pool",
        opposite="global_pool",
    )
    dist_eval: bool = opt(
        False, "shard evaluation across processes (exact: no padded samples)", resumable=True
    )
    eval: bool = opt(
        False,
        "only evaluate the checkpoint given by --resume (or --finetune) on val/",
        resumable=True,
    )
    crop_min: float = opt(
        0.08, "smallest RandomResizedCrop area fraction (official: 0.08; addition)"
    )

    default_global_pool = True  # class attribute, not a field: the phase's pooling default
    default_model: ClassVar[str] = "vit_large_patch16"  # the official fine-tune / probe encoder

    @classmethod
    def help_default(cls, name: str) -> str | None:
        """--help: the pooling default is the phase's (fine-tuning: global pool; linear probe:
        cls token), not the False both switches are stored with; the model's is the
        checkpoint's."""
        if name == "model":
            return (
                f"the encoder named in the --resume/--finetune checkpoint, else {cls.default_model}"
            )
        if name == "global_pool":
            return "on" if cls.default_global_pool else "off: the cls token"
        if name == "cls_token":
            return "off: global pool" if cls.default_global_pool else "on"
        return None

    def use_global_pool(self) -> bool:
        """--global_pool / --cls_token resolved against the phase default."""
        if self.global_pool and self.cls_token:
            raise MaekitError(
                "--global_pool and --cls_token are mutually exclusive; give one of them"
            )
        if self.global_pool or self.cls_token:
            return self.global_pool
        return self.default_global_pool

    def validate(self) -> None:
        super().validate()
        self.use_global_pool()
        if not 0.0 < self.crop_min <= 1.0:
            raise MaekitError(f"--crop_min must be in (0, 1], got {self.crop_min}")
        if self.nb_classes is not None and self.nb_classes <= 0:
            raise MaekitError(f"--nb_classes must be positive, got {self.nb_classes}")


@dataclass(frozen=True)
class FinetuneConfig(SupervisedConfig):
    command: ClassVar[str] = "finetune"
    summary: ClassVar[str] = "end-to-end fine-tuning (official recipe)"

    epochs: int = opt(50, "total training epochs", resumable=True)
    warmup_epochs: float = opt(5, "epochs of linear lr warm-up")
    min_lr: float = opt(1e-6, "lower lr bound of the cosine schedule")
    layer_decay: float = opt(
        0.75, "layer-wise lr decay: block i gets lr * layer_decay ** (L + 1 - i)"
    )
    layer_decay_rule: str = opt(
        "official",
        "ConvViT layer ids for --layer_decay: 'official' (ConvMAE: patch embeds and stage-1/2 "
        "conv blocks are layer 0) or 'plsc' (blocks1.i/blocks2.i are layer i+1); no effect on ViTs",
        choices=("official", "plsc"),
    )
    drop_path: float = opt(0.1, "stochastic depth rate")
    # augmentation (timm create_transform)
    color_jitter: float | None = opt(None, "color jitter factor (only when --aa is off)")
    aa: str = opt("rand-m9-mstd0.5-inc1", "RandAugment policy, or 'none'")
    smoothing: float = opt(0.1, "label smoothing")
    reprob: float = opt(0.25, "random erasing probability")
    remode: str = opt("pixel", "random erasing mode", choices=("pixel", "rand", "const"))
    recount: int = opt(1, "random erasing count")
    resplit: bool = opt(
        False, "do not random-erase the first augmentation split (accepted; no effect)"
    )
    # mixup / cutmix (timm Mixup)
    mixup: float = opt(0.0, "mixup alpha; mixup is on when > 0")
    cutmix: float = opt(0.0, "cutmix alpha; cutmix is on when > 0")
    cutmix_minmax: list[float] | None = opt(None, "cutmix min/max area ratio (overrides alpha)")
    mixup_prob: float = opt(1.0, "probability of applying mixup or cutmix per batch")
    mixup_switch_prob: float = opt(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_mode: str = opt("batch", "how mixup params are drawn", choices=("batch", "pair", "elem"))

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.smoothing < 1.0:
            raise MaekitError(f"--smoothing must be in [0, 1), got {self.smoothing}")
        if self.layer_decay <= 0:
            raise MaekitError(f"--layer_decay must be positive, got {self.layer_decay}")
        if self.cutmix_minmax is not None and len(self.cutmix_minmax) != 2:
            raise MaekitError(
                f"--cutmix_minmax takes two numbers (min max), got {self.cutmix_minmax}"
            )
        if self.mixup_active() and self.batch_size % 2:
            raise MaekitError(f"mixup/cutmix needs an even --batch_size, got {self.batch_size}")

    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


@dataclass(frozen=True)
class LinprobeConfig(SupervisedConfig):
    command: ClassVar[str] = "linprobe"
    summary: ClassVar[str] = "linear probing of a frozen encoder (official recipe)"

    batch_size: int = opt(
        512, "batch size per process (effective = batch_size * accum_iter * world size)"
    )
    epochs: int = opt(90, "total training epochs", resumable=True)
    blr: float = opt(0.1, "base learning rate, scaled by effective_batch / 256")
    weight_decay: float = opt(0.0, "LARS weight decay (weight matrices only)")
    warmup_epochs: float = opt(10, "epochs of linear lr warm-up")

    default_global_pool = False


# The phases, in CLI order: the one list of them (maekit/phases builds its table from it, with
# each phase's recipe in maekit/phases/<command>.py).
PHASE_CONFIGS: tuple[type[CommonConfig], ...] = (PretrainConfig, FinetuneConfig, LinprobeConfig)
PHASE_NAMES: tuple[str, ...] = tuple(c.command for c in PHASE_CONFIGS)
