"""Augmentation pipelines of the official recipes.

Every pipeline is a :class:`CheckedCompose`: when a step raises (a bug in augmentation code, not
an unreadable file: those fail earlier, in the loader), the run stops with one line naming the
step -- and the RandAugment op -- and the flag that turns it off.
"""

from __future__ import annotations

import torch
from PIL import Image
from timm.layers import to_2tuple
from torchvision import transforms as T
from torchvision.transforms import v2

from ..errors import MaekitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAIN_SCALE = (0.2, 1.0)  # RandomResizedCrop area range of MAE pre-training


def normalization(in_chans: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per input channel: ImageNet's for RGB; for grayscale (``--in_chans 1``) one
    value each, the mean of ImageNet's three (0.449, 0.226). Other channel counts have no
    default: their statistics are the data's own (``maekit stats`` prints the flags).

    The one place the normalisation statistics are chosen: training pipelines, evaluation,
    visualisation and the GPU decoder all ask here.
    """
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if in_chans == 1:
        return (round(sum(IMAGENET_MEAN) / 3, 4),), (round(sum(IMAGENET_STD) / 3, 4),)
    raise MaekitError(
        f"--in_chans {in_chans} has no default normalisation: give --mean and --std, "
        f"{in_chans} values each (`maekit stats --in_chans {in_chans} --data_path DIR` prints them)"
    )


def resolve_stats(
    in_chans: int, mean=None, std=None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """--mean/--std where given (one value per channel), :func:`normalization` otherwise."""
    if mean and std:
        return tuple(mean), tuple(std)
    default_mean, default_std = normalization(in_chans)
    return (tuple(mean) if mean else default_mean), (tuple(std) if std else default_std)


def image_mode(in_chans: int) -> str:
    """The PIL mode the pipelines turn every image into: 'L' for one channel, else 'RGB'."""
    normalization(in_chans)  # rejects unsupported channel counts
    return "L" if in_chans == 1 else "RGB"


class ToMode:
    """Convert a PIL image to ``mode`` (loaders return RGB; ``--in_chans 1`` wants 'L').
    Grayscale files round-trip exactly: RGB made from 'L' has R = G = B, whose luma is the value."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToMode({self.mode!r})"


class RandomRot90:
    """Rotate by 0, 90, 180 or 270 degrees, drawn uniformly (``--rot90``): with flips, the
    eight symmetries of a square, for images that have no "up" (microscopy, satellites).
    PIL images or (C, H, W) tensors; square inputs only (a quarter turn swaps H and W)."""

    def __call__(self, img):
        k = int(torch.randint(4, ()))
        if isinstance(img, torch.Tensor):
            return torch.rot90(img, k, dims=(-2, -1)) if k else img
        ops = (
            None,
            Image.Transpose.ROTATE_90,
            Image.Transpose.ROTATE_180,
            Image.Transpose.ROTATE_270,
        )
        return img.transpose(ops[k]) if k else img

    def __repr__(self) -> str:
        return "RandomRot90()"


def symmetry_steps(vflip: bool, rot90: bool, tensors: bool = False) -> list:
    """--vflip (a vertical flip, p 0.5) and --rot90 (a random quarter turn), after the crop."""
    flip = v2.RandomVerticalFlip() if tensors else T.RandomVerticalFlip()
    return [flip] * vflip + [RandomRot90()] * rot90


# Full-precision pipelines (``full=True``): (C, H, W) float32 tensors from
# :class:`~.pixels.PixelReader`, any channel count, transformed by torchvision's v2 ops (bicubic
# with antialiasing, as Pillow's resize), normalised by (x - mean) / std. What needs 8-bit RGB
# (RandAugment, colour jitter) is refused by the phase, naming the flag that turns it off.


def refuse_8bit_augment(auto_augment: str | None, color_jitter: float | None) -> None:
    """RandAugment and colour jitter are defined on 8-bit RGB (posterize, solarize, hue): on
    full-precision or N-band data they are refused, not approximated."""
    if auto_augment not in (None, "", "none"):
        raise MaekitError(
            f"--aa {auto_augment}: RandAugment works on 8-bit RGB images, and this run reads "
            "full-precision pixels (--pixels full); pass --aa none (flips, --vflip/--rot90, "
            "random erasing and mixup/cutmix still apply)"
        )
    if color_jitter:
        raise MaekitError(
            f"--color_jitter {color_jitter}: colour jitter works on 8-bit RGB images, and this run "
            "reads full-precision pixels (--pixels full); drop --color_jitter"
        )


def _full_pipeline(steps: list, in_chans: int, mean=None, std=None) -> CheckedCompose:
    mean, std = resolve_stats(in_chans, mean, std)
    return CheckedCompose([*steps, v2.Normalize(list(mean), list(std))])


def _crop_and_flips(
    input_size, scale: tuple[float, float], tensors: bool, vflip: bool, rot90: bool
) -> list:
    """RandomResizedCrop(scale, bicubic) + horizontal flip + --vflip/--rot90: the geometric
    head every training pipeline shares (PIL ops, or v2 ops on tensors)."""
    if tensors:
        crop = v2.RandomResizedCrop(
            input_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC, antialias=True
        )
        return [crop, v2.RandomHorizontalFlip(), *symmetry_steps(vflip, rot90, True)]
    crop = T.RandomResizedCrop(input_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)
    return [crop, T.RandomHorizontalFlip(), *symmetry_steps(vflip, rot90)]


class TransformFailed(MaekitError):
    """An augmentation step raised: a bug in code (ours, timm's, Pillow's), not bad data."""


# Flags that turn a step off, by the step's class name.
OFF_FLAGS = {
    "RandAugment": "--aa none",
    "AutoAugment": "--aa none",
    "AugMixAugment": "--aa none",
    "RandomErasing": "--reprob 0",
    "ColorJitter": "--color_jitter 0 (or drop --color_jitter)",
}


def _failing_op(error: BaseException) -> str | None:
    """The name of the innermost timm augmentation op (``PosterizeIncreasing``...) in the
    traceback of ``error``, if any."""
    name, tb = None, error.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if type(owner).__name__ == "AugmentOp" and isinstance(getattr(owner, "name", None), str):
            name = owner.name
        tb = tb.tb_next
    return name


def describe_failure(step: object, error: BaseException) -> str:
    """One line: which step failed, how, and what turns it off."""
    kind = type(step).__name__
    op = _failing_op(error)
    where = f"{kind} (op {op})" if op else kind
    detail = (str(error).strip().splitlines() or [""])[0]
    fix = OFF_FLAGS.get(kind)
    fix = f"{fix} turns it off" if fix else "please report it; no flag turns this step off"
    return (
        f"the data transform {where} failed on an image ({type(error).__name__}: {detail}); "
        f"this is a bug in the augmentation code, not in the data: {fix}"
    )


class CheckedCompose(T.Compose):
    """``T.Compose`` that turns an exception of a step into :class:`TransformFailed` (one line)."""

    def __call__(self, img):
        from .folder import UnreadableImage

        for t in self.transforms:
            try:
                img = t(img)
            except (MaekitError, UnreadableImage):  # one line already, or a file to skip
                raise
            except Exception as e:  # noqa: BLE001 - any failure of a step is reported the same way
                raise TransformFailed(describe_failure(t, e)) from None
        return img


def posterize(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize op, defined for every level its RandAugment draws.

    ``PosterizeIncreasing`` keeps ``4 - 4 * level / 10`` bits, i.e. 0 bits at the maximum
    magnitude. In the TensorFlow reference and with Pillow < 13 that maps every pixel to 0
    (``x >> 8 << 8``); Pillow 13's ``ImageOps.posterize`` refuses 0 bits with a ValueError,
    which killed the default fine-tuning recipe about once per 500 images.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)  # all bits dropped: black, in the same mode
    from PIL import ImageOps

    return ImageOps.posterize(img, bits_to_keep)


POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def fix_posterize(transform: T.Compose) -> T.Compose:
    """Point the posterize ops of timm's RandAugment / AutoAugment / AugMix inside ``transform``
    at :func:`posterize` (per instance: timm's global op table is left alone)."""
    for step in transform.transforms:
        ops = list(getattr(step, "ops", None) or ())
        for sub in getattr(step, "policy", None) or ():  # AutoAugment: a list of sub-policies
            ops.extend(sub)
        for op in ops:
            if getattr(op, "name", None) in POSTERIZE_OPS:
                op.aug_fn = posterize
    return transform


def _pipeline(
    steps: list, in_chans: int, mean=None, std=None, uint8: bool = False
) -> CheckedCompose:
    mean, std = resolve_stats(in_chans, mean, std)
    head = [ToMode("L")] if in_chans == 1 else []
    if uint8:  # the loop converts and normalises on its device (:func:`normalize_uint8`)
        tf = CheckedCompose([*head, *steps, T.PILToTensor()])
        tf.device_normalize = (mean, std)
        return tf
    return CheckedCompose([*head, *steps, T.ToTensor(), T.Normalize(mean, std)])


def device_normalize(transform) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) when ``transform`` hands uint8 images for the loop to normalise, else None."""
    return getattr(transform, "device_normalize", None)


def as_float(transform: CheckedCompose) -> CheckedCompose:
    """A uint8 pipeline with ToTensor + Normalize at its end instead (the same random draws,
    so the same images for the same seed, normalised in the worker)."""
    mean, std = transform.device_normalize
    return CheckedCompose([*transform.transforms[:-1], T.ToTensor(), T.Normalize(mean, std)])


def normalize_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, ToTensor + Normalize's arithmetic: x / 255, - mean, / std
    (``mean``, ``std``: float32 (1, C, 1, 1) on ``x``'s device). The same operations in the same
    order, so the same numbers as normalising in the worker."""
    return x.float().div_(255).sub_(mean).div_(std)


def pretrain_transform(
    input_size: int | list[int],
    in_chans: int = 3,
    mean=None,
    std=None,
    uint8: bool = False,
    *,
    full: bool = False,
    vflip: bool = False,
    rot90: bool = False,
) -> T.Compose:
    """RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + normalisation.

    ``uint8``: end at the uint8 crop instead (4x fewer bytes from the loader workers); the
    training loop normalises it on its device (:class:`~maekit.data.device.NormalizeOnDevice`).
    ``full``: the same steps on full-precision tensors (``uint8`` does not apply).
    """
    steps = _crop_and_flips(input_size, PRETRAIN_SCALE, full, vflip, rot90)
    if full:
        return _full_pipeline(steps, in_chans, mean, std)
    return _pipeline(steps, in_chans, mean, std, uint8)


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
    *,
    full: bool = False,
    vflip: bool = False,
    rot90: bool = False,
) -> T.Compose:
    """timm's training transform: RandomResizedCrop(0.08-1, bicubic), flip, RandAugment, RandomErasing.

    ``full``: on full-precision tensors: the crop, the flips, normalisation and timm's
    RandomErasing (any channel count); RandAugment and colour jitter are refused."""
    from timm.data import create_transform

    mean, std = resolve_stats(in_chans, mean, std)
    if full:
        from timm.data.random_erasing import RandomErasing

        refuse_8bit_augment(auto_augment, color_jitter)
        steps = [
            *_crop_and_flips(input_size, (crop_min, 1.0), True, vflip, rot90),
            v2.Normalize(list(mean), list(std)),
        ]
        if reprob > 0:  # timm's, after normalisation as in its pipeline
            steps.append(RandomErasing(reprob, mode=remode, max_count=recount, device="cpu"))
        return CheckedCompose(steps)
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
    head = [ToMode("L")] if in_chans == 1 else []
    steps = list(tf.transforms)
    if vflip or rot90:  # after timm's crop and horizontal flip, before RandAugment
        at = next(i for i, t in enumerate(steps) if isinstance(t, T.RandomHorizontalFlip)) + 1
        steps[at:at] = symmetry_steps(vflip, rot90)
    return fix_posterize(CheckedCompose([*head, *steps]))


def eval_crop_pct(input_size: int | list[int]) -> float:
    """The official rule: crop 224/256 of the resized image up to 224 px input, full image above
    (for height x width inputs: by the longer side)."""
    return 224 / 256 if max(to_2tuple(input_size)) <= 224 else 1.0


MAX_RESIZED_PIXELS = 50_000_000  # an evaluation resize above this is a sliver image, not a photo


class ResizeBound:
    """Refuse, before any allocation, an image whose evaluation resize would be enormous: a
    5 x 100000 strip resized to a shorter side of 256 px is 256 x 5.12 M pixels (6.3 GB and
    38 s). Raised as :class:`~.folder.UnreadableImage`, so the loaders skip and count it like a
    file that cannot be decoded; ``size``: the shorter side (int) or the (H, W) to cover."""

    def __init__(self, size: int | tuple[int, int], limit: int = MAX_RESIZED_PIXELS) -> None:
        self.size, self.limit = size, limit

    def __call__(self, img):
        h, w = img.shape[-2:] if isinstance(img, torch.Tensor) else (img.height, img.width)
        if isinstance(self.size, int):
            scale = self.size / min(h, w)
        else:
            scale = max(self.size[0] / h, self.size[1] / w)
        pixels = round(h * scale) * round(w * scale)
        if pixels > self.limit:
            from .folder import UnreadableImage

            raise UnreadableImage(
                f"a {w}x{h} image would be resized to {round(w * scale)}x{round(h * scale)} "
                f"pixels for evaluation (aspect {max(h, w) / max(1, min(h, w)):.0f}:1), more than "
                f"{self.limit}: crop it to a usual aspect ratio or leave it out"
            )
        return img

    def __repr__(self) -> str:
        return f"ResizeBound({self.size})"


class ResizeToCover:
    """Bicubic resize keeping the aspect ratio, just large enough to cover (height, width).

    The non-square counterpart of Resize(shorter side): a following CenterCrop(height, width)
    then takes a crop without distorting the image.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, img):
        h, w = img.shape[-2:] if isinstance(img, torch.Tensor) else (img.height, img.width)
        scale = max(self.size[0] / h, self.size[1] / w)
        new = (max(self.size[0], round(h * scale)), max(self.size[1], round(w * scale)))
        return T.functional.resize(
            img, list(new), interpolation=T.InterpolationMode.BICUBIC, antialias=True
        )


def eval_transform(
    input_size: int | list[int], in_chans: int = 3, mean=None, std=None, *, full: bool = False
) -> T.Compose:
    """Resize(int(input / crop_pct), bicubic) + CenterCrop(input) + normalise (``full``: the
    same on full-precision tensors)."""
    crop_pct = eval_crop_pct(input_size)
    if isinstance(input_size, int):
        target = int(input_size / crop_pct)
        resize = (v2.Resize if full else T.Resize)(
            target, interpolation=T.InterpolationMode.BICUBIC, antialias=True
        )
    else:  # (height, width): cover (h / crop_pct, w / crop_pct), aspect kept
        target = tuple(int(s / crop_pct) for s in input_size)
        resize = ResizeToCover(target)
    bound = ResizeBound(target)
    steps = [bound, resize, (v2.CenterCrop if full else T.CenterCrop)(to_2tuple(input_size))]
    if full:
        return _full_pipeline(steps, in_chans, mean, std)
    return _pipeline(steps, in_chans, mean, std)


def eval_transform_of(cfg) -> T.Compose:
    """:func:`eval_transform` for a resolved phase config (its size, channels, statistics and
    pixel path)."""
    return eval_transform(
        cfg.input_size,
        cfg.in_chans,
        getattr(cfg, "mean", None),
        getattr(cfg, "std", None),
        full=getattr(cfg, "pixels", "8bit") == "full",
    )


def linprobe_transform(
    input_size: int | list[int],
    crop_min: float = 0.08,
    in_chans: int = 3,
    mean=None,
    std=None,
    *,
    full: bool = False,
    vflip: bool = False,
    rot90: bool = False,
) -> T.Compose:
    """RandomResizedCrop(0.08-1, bicubic) + flip + normalise (no RandAugment, no erasing)."""
    steps = _crop_and_flips(input_size, (crop_min, 1.0), full, vflip, rot90)
    if full:
        return _full_pipeline(steps, in_chans, mean, std)
    return _pipeline(steps, in_chans, mean, std)
