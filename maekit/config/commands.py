"""Configs of the commands around the phases: looking at a trained model (``visualize``,
``extract``, ``knn``), ``plot``, ``shard``, ``stats`` and ``bench``."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MaekitError
from .fields import (
    GRAY_TO_RGB_HELP,
    IN_CHANS_HELP,
    MAX_VALUE_HELP,
    PIXELS_HELP,
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
from .phases import PHASE_NAMES


@dataclass(frozen=True)
class CheckpointModelConfig:
    """What ``visualize``, ``extract`` and ``knn`` share: a model restored from a checkpoint.

    Model name and sizes default to the ``args`` saved in the checkpoint; flags override them.
    """

    checkpoint: str = opt(
        "", "checkpoint: pre-training (MAE / ConvMAE) or fine-tuning/linear-probe .pth"
    )
    model: str | None = opt(None, "model name (none: the one saved in the checkpoint)")
    input_size: int | list[int] | None = opt(
        None,
        "image size in pixels, one number or height width (none: from the checkpoint)",
        nargs="+",
    )
    patch_size: int | None = opt(None, "patch size (none: from the checkpoint)")
    in_chans: int | None = opt(None, "input channels (none: from the checkpoint)")
    mean: list[float] | None = opt(
        None, "normalisation mean per channel (none: from the checkpoint)"
    )
    std: list[float] | None = opt(None, "normalisation std per channel (none: from the checkpoint)")
    device: str = opt("auto", "'auto' (cuda if available), 'cuda', 'cuda:N' or 'cpu'")
    seed: int = opt(0, "random seed (masking, image/subset choice, --random_init weights)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", image_size_value(self.input_size))

    def validate(self) -> None:
        check_finite(self)
        check_image_size(self.input_size)
        check_stats(self.mean, self.std, self.in_chans)
        for name in ("patch_size", "in_chans"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise MaekitError(f"--{name} must be a positive integer, got {value}")


@dataclass(frozen=True)
class VisualizeConfig(CheckpointModelConfig):
    """``maekit visualize``: a pre-training checkpoint's reconstructions (it needs the decoder,
    so fine-tuned and linear-probe checkpoints are refused; there is no --random_init)."""

    # the shared fields, with help true for this command (same names and defaults)
    checkpoint: str = opt("", "pre-training (MAE / ConvMAE) checkpoint with its decoder")
    seed: int = opt(0, "random seed (masking, the --data_path images chosen)")
    images: list[str] = opt([], "image files to reconstruct (or use --data_path)")
    data_path: str | None = opt(
        None, "pick --num_images images from this dataset (val/ if present, else train)"
    )
    num_images: int = opt(8, "how many images to take from --data_path")
    mask_ratio: float = opt(0.75, "fraction of patches removed, in [0, 1)")
    norm_pix_loss: bool | None = opt(
        None, "the model predicts per-patch normalised pixels (none: from the checkpoint)"
    )
    scale: int | None = opt(None, "integer upscaling of each cell (none: cells of at least 112 px)")
    out: str = opt("reconstruction.png", "where to write the PNG grid")
    vis_channels: list[int] | None = opt(None, VIS_CHANNELS_HELP)
    vis_window: list[str] | None = opt(None, VIS_WINDOW_HELP)  # None: auto

    def validate(self) -> None:
        super().validate()
        if not self.checkpoint:
            raise MaekitError(
                "--checkpoint is required: a pre-training checkpoint with its decoder"
            )
        if bool(self.images) == bool(self.data_path):
            raise MaekitError("give either --images PATH... or --data_path DIR (with --num_images)")
        if self.num_images <= 0:
            raise MaekitError(f"--num_images must be positive, got {self.num_images}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise MaekitError(f"--mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.scale is not None and self.scale <= 0:
            raise MaekitError(f"--scale must be a positive integer, got {self.scale}")
        check_vis_channels(self.vis_channels, self.in_chans)  # the checkpoint's count: run()
        vis_window(self.vis_window)


@dataclass(frozen=True)
class FeatureConfig(CheckpointModelConfig):
    """Encoder features of a dataset: shared by ``extract`` and ``knn``."""

    data_path: str = opt("fashion-mnist", "ImageNet-style folder (train/, val/) or 'fashion-mnist'")
    pool: str = opt(
        "cls",
        "feature: the cls token, the mean of the patch tokens, or all tokens",
        choices=("cls", "mean", "all"),
    )
    batch_size: int = opt(128, "images per forward pass (per process)")
    num_workers: int = opt(4, "data-loading worker processes per rank (capped at the CPU count)")
    amp: str = opt(
        "none",
        "autocast: none = fp32 (exact); bf16/fp16 faster on GPUs; auto as in training",
        choices=("auto", "bf16", "fp16", "none"),
    )
    random_init: bool = opt(
        False, "no checkpoint: a freshly initialised --model (seeded), as a baseline"
    )

    def validate(self) -> None:
        super().validate()
        if self.random_init and self.checkpoint:
            raise MaekitError("--random_init and --checkpoint exclude each other; give one")
        if not self.random_init and not self.checkpoint:
            raise MaekitError(
                "--checkpoint is required (or --random_init --model NAME for a baseline)"
            )
        if self.random_init and not self.model:
            raise MaekitError("--random_init needs --model NAME (see `maekit models`)")
        if self.batch_size <= 0:
            raise MaekitError(f"--batch_size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise MaekitError(f"--num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class ExtractConfig(FeatureConfig):
    split: str = opt("train", "which split to encode", choices=("train", "val"))
    max_images: int | None = opt(
        None, "encode a fixed random subset (--seed) of this many images, in dataset order"
    )
    out: str = opt("features.safetensors", "output: .safetensors, or .npy (+ a .json sidecar)")

    def validate(self) -> None:
        super().validate()
        if self.max_images is not None and self.max_images <= 0:
            raise MaekitError(f"--max_images must be positive, got {self.max_images}")
        if not self.out.endswith((".safetensors", ".npy")):
            raise MaekitError(
                f"--out {self.out}: use a .safetensors or .npy file name (the suffix picks the format)"
            )


@dataclass(frozen=True)
class KnnConfig(FeatureConfig):
    pool: str = opt(
        "cls", "feature: the cls token or the mean of the patch tokens", choices=("cls", "mean")
    )
    k: int = opt(20, "neighbours that vote")
    temperature: float = opt(0.07, "votes are weighted exp(cosine similarity / temperature)")
    max_bank: int | None = opt(
        None, "bank: a fixed random subset (--seed) of this many train images (none: all)"
    )
    max_query: int | None = opt(
        None, "queries: a fixed random subset (--seed) of this many val images (none: all)"
    )

    def validate(self) -> None:
        super().validate()
        if self.k <= 0:
            raise MaekitError(f"--k must be positive, got {self.k}")
        if self.temperature <= 0:
            raise MaekitError(f"--temperature must be positive, got {self.temperature}")
        for name in ("max_bank", "max_query"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise MaekitError(f"--{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class PlotConfig:
    output_dirs: list[str] = opt(
        [], "run folders holding log.txt (several are overlaid)", positional=True
    )
    metrics: list[str] = opt(
        [], "metrics to plot (none given: every logged metric but epoch and timings)"
    )
    out: str | None = opt(
        None, "PNG to write (none: DIR/curves.png for one run, else ./curves.png)"
    )

    def validate(self) -> None:
        if not self.output_dirs:
            raise MaekitError("give at least one run folder: maekit plot OUTPUT_DIR...")


@dataclass(frozen=True)
class ShardConfig:
    """``maekit shard SRC DST``: an image folder as WebDataset tar shards."""

    src: str = opt(
        "",
        "image folder: train/ and val/ class folders, class folders, or plain images",
        positional=True,
    )
    dst: str = opt("", "folder for DST/<split>/shard-NNNNNN.tar and shards.json", positional=True)
    shard_size: int = opt(1000, "samples per shard")
    seed: int = opt(
        0, "seed of the order the samples are written in (shuffled once, so a shard mixes classes)"
    )
    force: bool = opt(False, "replace the shards (and only them) already in DST")

    def validate(self) -> None:
        if self.shard_size <= 0:
            raise MaekitError(
                f"--shard_size must be a positive number of samples, got {self.shard_size}"
            )


@dataclass(frozen=True)
class StatsConfig:
    """``maekit stats``: per-channel mean/std of a dataset, printed as --mean/--std flags."""

    data_path: str = opt(
        "fashion-mnist",
        "ImageNet-style folder (train/ is used), a plain image folder, or 'fashion-mnist'",
    )
    in_chans: int = opt(3, "channels as training reads them: " + IN_CHANS_HELP)
    pixels: str = opt("auto", PIXELS_HELP, choices=("auto", "8bit", "full"))
    max_value: float | None = opt(None, MAX_VALUE_HELP)
    gray_to_rgb: bool = opt(False, GRAY_TO_RGB_HELP)
    max_images: int = opt(1000, "measure a fixed random sample (--seed) of this many images")
    seed: int = opt(0, "random seed of the sample")
    num_workers: int = opt(2, "image-decoding worker processes (capped at the CPU count)")

    def validate(self) -> None:
        if self.in_chans <= 0:
            raise MaekitError(f"--in_chans must be a positive integer, got {self.in_chans}")
        check_pixels(self.pixels, self.max_value, None, False)
        if self.max_images <= 0:
            raise MaekitError(f"--max_images must be positive, got {self.max_images}")
        if self.num_workers < 0:
            raise MaekitError(f"--num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class BenchConfig:
    """``maekit bench``: training-step speed on synthetic batches, or the input pipeline."""

    model: str = opt("mae_vit_base_patch16", "registered model name (see `maekit models`)")
    phase: str = opt(
        "pretrain",
        "whose training step to build (its model kind, optimizer, loss)",
        choices=PHASE_NAMES,
    )
    batch_size: int = opt(64, "images per step")
    input_size: int = opt(224, "image size in pixels (square)")
    patch_size: int | None = opt(None, "override the model's patch size")
    in_chans: int = opt(3, "input channels")
    nb_classes: int = opt(1000, "classes of the synthetic labels (finetune / linprobe)")
    mask_ratio: float = opt(0.75, "pretrain: fraction of patches removed")
    device: str = opt("auto", "'auto' (cuda if available), 'cuda', 'cuda:N' or 'cpu'")
    amp: str = opt(
        "auto",
        "precision of the measured run (the reference is always fp32)",
        choices=("auto", "bf16", "fp16", "none"),
    )
    compile: bool = opt(False, "torch.compile the model (compilation happens in the warm-up)")
    grad_ckpt: bool = opt(False, "activation checkpointing of the transformer blocks")
    steps: int = opt(10, "timed training steps")
    warmup: int = opt(3, "untimed steps first (allocator, cuDNN/compile, optimizer state)")
    reference: bool = opt(
        False,
        "also run the plain way (fp32, eager, unfused attention, torch's default AdamW, loss read "
        "every step) in the same process, and report the speed-up",
    )
    rounds: int = opt(
        1,
        "measure each mode this many times, alternating the modes (fast, reference, ablations), "
        "and report each mode's median round (on a shared machine drift hits all modes alike)",
    )
    ablate: bool = opt(
        False,
        "also run the fast mode with each of its fast paths switched off in turn (autocast, fused "
        "attention, fused AdamW, the deferred loss read, --compile, --grad_ckpt), in the same "
        "rounds, and report each path's gain",
    )
    peak_tflops: float | None = opt(
        None, "device peak (TFLOP/s) for MFU (default: a table for A100/H100/H200 bf16/fp16)"
    )
    seed: int = opt(0, "random seed (weights, batch, masking)")
    json: bool = opt(False, "print one JSON object instead of the table")
    # input pipeline
    pipeline: bool = opt(
        False, "measure the input pipeline (decode + the phase's augmentation) instead"
    )
    data_path: str = opt("fashion-mnist", "pipeline: image folder or 'fashion-mnist'")
    num_workers: int = opt(2, "pipeline: loader worker processes (0: in the main process)")
    gpu_decode: bool = opt(
        False,
        "pipeline: decode JPEGs and crop/flip on the GPU (pretrain transform); with "
        "--device cpu, the same loader decoding on the CPU (measures its transport)",
    )
    images: int = opt(512, "pipeline: images to load after the warm-up batch")
    float_batches: bool = opt(
        False,
        "pipeline: workers normalise and hand float32 batches (the transport before uint8 "
        "batches; for comparison)",
    )

    def validate(self) -> None:
        check_finite(self)
        positive = {
            "batch_size": self.batch_size,
            "input_size": self.input_size,
            "in_chans": self.in_chans,
            "nb_classes": self.nb_classes,
            "steps": self.steps,
            "images": self.images,
            "rounds": self.rounds,
        }
        for name, value in positive.items():
            if value <= 0:
                raise MaekitError(f"--{name} must be a positive integer, got {value}")
        if self.patch_size is not None and self.patch_size <= 0:
            raise MaekitError(f"--patch_size must be positive, got {self.patch_size}")
        if self.warmup < 0:
            raise MaekitError(f"--warmup must be >= 0, got {self.warmup}")
        if self.num_workers < 0:
            raise MaekitError(f"--num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise MaekitError(f"--mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise MaekitError(f"--peak_tflops must be positive, got {self.peak_tflops}")
