"""Augmentation pipelines of the official recipes."""

from __future__ import annotations

from timm.layers import to_2tuple
from torchvision import transforms as T

from ..errors import MaekitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAIN_SCALE = (0.2, 1.0)  # RandomResizedCrop area range of MAE pre-training


def normalization(in_chans: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per input channel: ImageNet's for RGB; for grayscale (``--in_chans 1``) one
    value each, the mean of ImageNet's three (0.449, 0.226)."""
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if in_chans == 1:
        return (round(sum(IMAGENET_MEAN) / 3, 4),), (round(sum(IMAGENET_STD) / 3, 4),)
    raise MaekitError(
        f"--in_chans {in_chans}: images are read as 3 (RGB) or 1 (grayscale) channels; "
        "give --in_chans 3 or --in_chans 1"
    )


def channel_steps(in_chans: int) -> list:
    """Loaders return RGB; ``--in_chans 1`` trains on one grayscale channel (luma)."""
    return [T.Grayscale(1)] if in_chans == 1 else []


def resolve_stats(
    in_chans: int, mean=None, std=None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """--mean/--std where given (one value per channel), :func:`normalization` otherwise."""
    if mean and std:
        return tuple(mean), tuple(std)
    default_mean, default_std = normalization(in_chans)
    return (tuple(mean) if mean else default_mean), (tuple(std) if std else default_std)


def pretrain_transform(
    input_size: int | list[int], in_chans: int = 3, mean=None, std=None
) -> T.Compose:
    """RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + ImageNet normalisation."""
    return T.Compose([
        *channel_steps(in_chans),
        T.RandomResizedCrop(input_size, scale=PRETRAIN_SCALE, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(*resolve_stats(in_chans, mean, std)),
    ])  # fmt: skip


def finetune_transform(
    input_size: int | list[int],
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float | None = None,
    reprob: float = 0.25,
    remode: str = "pixel",
    recount: int = 1,
    crop_min: float = 0.08,
    in_chans: int = 3,
    mean=None,
    std=None,
) -> T.Compose:
    """timm's training transform: RandomResizedCrop(0.08-1, bicubic), flip, RandAugment, RandomErasing."""
    from timm.data import create_transform

    mean, std = resolve_stats(in_chans, mean, std)
    tf = create_transform(
        input_size=input_size,
        is_training=True,
        scale=(crop_min, 1.0),
        color_jitter=color_jitter,
        auto_augment=auto_augment if auto_augment not in (None, "", "none") else None,
        interpolation="bicubic",
        re_prob=reprob,
        re_mode=remode,
        re_count=recount,
        mean=mean,
        std=std,
    )
    return T.Compose([*channel_steps(in_chans), *tf.transforms])


def eval_crop_pct(input_size: int | list[int]) -> float:
    """The official rule: crop 224/256 of the resized image up to 224 px input, full image above
    (for height x width inputs: by the longer side)."""
    return 224 / 256 if max(to_2tuple(input_size)) <= 224 else 1.0


class ResizeToCover:
    """Bicubic resize keeping the aspect ratio, just large enough to cover (height, width).

    The non-square counterpart of Resize(shorter side): a following CenterCrop(height, width)
    then takes a crop without distorting the image.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, img):
        w, h = img.size
        scale = max(self.size[0] / h, self.size[1] / w)
        new = (max(self.size[0], round(h * scale)), max(self.size[1], round(w * scale)))
        return T.functional.resize(img, list(new), interpolation=T.InterpolationMode.BICUBIC)


def eval_transform(
    input_size: int | list[int], in_chans: int = 3, mean=None, std=None
) -> T.Compose:
    """Resize(int(input / crop_pct), bicubic) + CenterCrop(input) + normalise."""
    crop_pct = eval_crop_pct(input_size)
    if isinstance(input_size, int):
        resize = T.Resize(int(input_size / crop_pct), interpolation=T.InterpolationMode.BICUBIC)
    else:  # (height, width): cover (h / crop_pct, w / crop_pct), aspect kept
        resize = ResizeToCover(tuple(int(s / crop_pct) for s in input_size))
    return T.Compose([
        *channel_steps(in_chans),
        resize,
        T.CenterCrop(to_2tuple(input_size)),
        T.ToTensor(),
        T.Normalize(*resolve_stats(in_chans, mean, std)),
    ])  # fmt: skip


def linprobe_transform(
    input_size: int | list[int], crop_min: float = 0.08, in_chans: int = 3, mean=None, std=None
) -> T.Compose:
    """RandomResizedCrop(0.08-1, bicubic) + flip + normalise (no RandAugment, no erasing)."""
    return T.Compose([
        *channel_steps(in_chans),
        T.RandomResizedCrop(input_size, scale=(crop_min, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(*resolve_stats(in_chans, mean, std)),
    ])  # fmt: skip
