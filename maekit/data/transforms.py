"""Augmentation pipelines of the official recipes."""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAIN_SCALE = (0.2, 1.0)  # RandomResizedCrop area range of MAE pre-training


def pretrain_transform(input_size: int) -> T.Compose:
    """RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + ImageNet normalisation."""
    return T.Compose([
        T.RandomResizedCrop(input_size, scale=PRETRAIN_SCALE, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


def finetune_transform(
    input_size: int,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float | None = None,
    reprob: float = 0.25,
    remode: str = "pixel",
    recount: int = 1,
    crop_min: float = 0.08,
) -> T.Compose:
    """timm's training transform: RandomResizedCrop(0.08-1, bicubic), flip, RandAugment, RandomErasing."""
    from timm.data import create_transform

    return create_transform(
        input_size=input_size,
        is_training=True,
        scale=(crop_min, 1.0),
        color_jitter=color_jitter,
        auto_augment=auto_augment if auto_augment not in (None, "", "none") else None,
        interpolation="bicubic",
        re_prob=reprob,
        re_mode=remode,
        re_count=recount,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def eval_crop_pct(input_size: int) -> float:
    """The official rule: crop 224/256 of the resized image up to 224 px input, full image above."""
    return 224 / 256 if input_size <= 224 else 1.0


def eval_transform(input_size: int) -> T.Compose:
    """Resize(int(input / crop_pct), bicubic) + CenterCrop(input) + normalise."""
    resize = int(input_size / eval_crop_pct(input_size))
    return T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(input_size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


def linprobe_transform(input_size: int, crop_min: float = 0.08) -> T.Compose:
    """RandomResizedCrop(0.08-1, bicubic) + flip + normalise (no RandAugment, no erasing)."""
    return T.Compose([
        T.RandomResizedCrop(input_size, scale=(crop_min, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip
