"""Fine-tuning / linear-probing recipe pieces: transforms, Mixup and the loss, pooling flags."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torchvision import transforms as T

from maekit.config import FinetuneConfig, LinprobeConfig
from maekit.data.transforms import (
    eval_crop_pct,
    eval_transform,
    finetune_transform,
    linprobe_transform,
)
from maekit.errors import MaekitError
from maekit.phases.finetune import build_criterion, build_mixup

BICUBIC = T.InterpolationMode.BICUBIC


@pytest.fixture(scope="module")
def image() -> Image.Image:
    g = torch.Generator().manual_seed(0)
    arr = (torch.rand(400, 500, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)  # 500 wide, 400 high


def _find(compose, cls):
    return [t for t in compose.transforms if isinstance(t, cls)]


# --------------------------------------------------------------------------- eval


@pytest.mark.parametrize(
    "size, pct", [(28, 224 / 256), (32, 224 / 256), (224, 224 / 256), (225, 1.0), (384, 1.0)]
)
def test_eval_crop_pct(size, pct):
    assert eval_crop_pct(size) == pytest.approx(pct)


@pytest.mark.parametrize("size, resize", [(224, 256), (384, 384), (32, 36)])
def test_eval_transform_resize_then_center_crop(image, size, resize):
    tf = eval_transform(size)
    (rs,) = _find(tf, T.Resize)
    (cc,) = _find(tf, T.CenterCrop)
    assert rs.size in (resize, [resize], (resize,))  # shorter side -> resize
    assert rs.interpolation == BICUBIC
    assert tuple(cc.size) == (size, size)
    assert tf.transforms.index(rs) < tf.transforms.index(cc)
    assert _find(tf, T.Normalize)[0].mean == pytest.approx((0.485, 0.456, 0.406))
    out = tf(image)
    assert out.shape == (3, size, size)


def test_eval_transform_is_a_center_crop_of_the_resized_image(image):
    """The 224 crop is the centre of the image resized so that its short side is 256."""
    out = eval_transform(224)(image)
    resized = T.functional.resize(image, 256, interpolation=BICUBIC)  # 320 x 256
    assert resized.size == (320, 256)
    ref = T.functional.center_crop(resized, 224)
    ref = T.functional.normalize(
        T.functional.to_tensor(ref), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    torch.testing.assert_close(out, ref)


# --------------------------------------------------------------------------- train


def test_finetune_transform_default(image):
    tf = finetune_transform(28)
    torch.manual_seed(0)
    out = tf(image)
    assert out.shape == (3, 28, 28)
    assert len(_find(tf, RandAugment)) == 1
    (er,) = _find(tf, RandomErasing)
    assert er.probability == pytest.approx(0.25)
    assert er.mode == "pixel"
    crop = tf.transforms[0]
    assert tuple(crop.scale) == (0.08, 1.0)
    assert "bicubic" in repr(crop)
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in tf.transforms)


def test_finetune_transform_without_autoaugment_or_erasing(image):
    tf = finetune_transform(28, auto_augment="none", reprob=0.0)
    assert not _find(tf, RandAugment)
    assert not _find(tf, RandomErasing)
    assert tf(image).shape == (3, 28, 28)


def test_finetune_transform_erasing_probability_follows_reprob():
    tf = finetune_transform(32, auto_augment=None, reprob=0.6, remode="rand", recount=2)
    assert not _find(tf, RandAugment)
    (er,) = _find(tf, RandomErasing)
    assert er.probability == pytest.approx(0.6)
    assert er.mode == "rand"
    assert er.max_count == 2


def test_linprobe_transform(image):
    tf = linprobe_transform(32)
    (crop,) = _find(tf, T.RandomResizedCrop)
    assert tuple(crop.scale) == (0.08, 1.0)
    assert crop.interpolation == BICUBIC
    assert tuple(crop.size) == (32, 32)
    (flip,) = _find(tf, T.RandomHorizontalFlip)
    assert flip.p == 0.5
    assert not _find(tf, RandAugment) and not _find(tf, RandomErasing)
    assert tf(image).shape == (3, 32, 32)


# --------------------------------------------------------------------------- loss / mixup


@pytest.mark.parametrize(
    "kw",
    [
        dict(mixup=0.8),
        dict(cutmix=1.0),
        dict(cutmix_minmax=[0.2, 0.8]),
        dict(mixup=0.8, cutmix=1.0),
    ],
)
def test_mixup_or_cutmix_gives_soft_target_ce(kw):
    cfg = FinetuneConfig(
        **kw, mixup_prob=0.7, mixup_switch_prob=0.3, mixup_mode="pair", smoothing=0.2
    )
    assert isinstance(build_criterion(cfg), SoftTargetCrossEntropy)
    mix = build_mixup(cfg, 7)
    assert isinstance(mix, Mixup)
    assert mix.mixup_alpha == kw.get("mixup", 0.0)
    assert mix.cutmix_minmax == kw.get("cutmix_minmax")
    if "cutmix_minmax" not in kw:  # timm sets the alpha to 1.0 itself when minmax is given
        assert mix.cutmix_alpha == kw.get("cutmix", 0.0)
    assert mix.mix_prob == 0.7
    assert mix.switch_prob == 0.3
    assert mix.mode == "pair"
    assert mix.label_smoothing == 0.2
    assert mix.num_classes == 7
    assert mix.mixup_enabled


def test_mixup_output_is_soft_and_smoothed():
    cfg = FinetuneConfig(mixup=0.8, cutmix=1.0, smoothing=0.1)
    mix = build_mixup(cfg, 4)
    x = torch.randn(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    _, soft = mix(x, y)
    assert soft.shape == (4, 4)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(4))
    assert soft.min() > 0  # label smoothing off the target classes


def test_smoothing_without_mixup_gives_label_smoothing_ce():
    cfg = FinetuneConfig(smoothing=0.1)
    crit = build_criterion(cfg)
    assert isinstance(crit, LabelSmoothingCrossEntropy)
    assert crit.smoothing == pytest.approx(0.1)
    assert build_mixup(cfg, 10) is None


def test_no_smoothing_gives_plain_ce():
    cfg = FinetuneConfig(smoothing=0.0)
    assert type(build_criterion(cfg)) is torch.nn.CrossEntropyLoss
    assert build_mixup(cfg, 10) is None


def test_defaults_match_the_official_fine_tuning_script():
    cfg = FinetuneConfig()
    assert (cfg.layer_decay, cfg.drop_path, cfg.smoothing, cfg.reprob) == (0.75, 0.1, 0.1, 0.25)
    assert (cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob) == (0.0, 0.0, 1.0, 0.5)
    assert cfg.aa == "rand-m9-mstd0.5-inc1"
    assert not cfg.mixup_active()


# --------------------------------------------------------------------------- pooling flags


def test_pooling_defaults_and_flags():
    assert LinprobeConfig().use_global_pool() is False
    assert FinetuneConfig().use_global_pool() is True
    assert LinprobeConfig(global_pool=True).use_global_pool() is True
    assert FinetuneConfig(cls_token=True).use_global_pool() is False


@pytest.mark.parametrize("cls", [FinetuneConfig, LinprobeConfig])
def test_both_pooling_flags_are_an_error(cls):
    cfg = cls(global_pool=True, cls_token=True)
    with pytest.raises(MaekitError, match="mutually exclusive"):
        cfg.use_global_pool()
    with pytest.raises(MaekitError):
        cfg.validate()
