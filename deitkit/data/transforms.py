"""Augmentation stacks: `deit` (timm, as the official code), `v2` (torchvision v2), `light`."""
from __future__ import annotations

from typing import Sequence

import torch
from timm.data import create_transform
from torchvision import transforms as T
from torchvision.transforms import v2

from ..config import AugConfig

_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def _crop(aug: AugConfig, size: int, v: bool = False):
    ns = v2 if v else T
    if aug.crop == "pad":
        return ns.RandomCrop(size, padding=4, pad_if_needed=True)
    return ns.RandomResizedCrop(size, scale=(aug.scale_min, 1.0),
                                interpolation=_INTERP[aug.interpolation])


def ra_magnitude(spec: str) -> int:
    """The magnitude of a timm RandAugment spec (`rand-m9-mstd0.5-inc1` -> 9; 9 when unset)."""
    for part in spec.split("-")[1:]:
        if part.startswith("m") and not part.startswith("mstd") and part[1:].isdigit():
            return int(part[1:])
    return 9


def build_train_transform(aug: AugConfig, size: int, mean: Sequence[float],
                          std: Sequence[float]):
    """Per-image training transform (PIL in, normalised float tensor [3, H, W] out)."""
    if aug.stack == "deit":
        tf = create_transform(
            input_size=size, is_training=True, scale=(aug.scale_min, 1.0), hflip=aug.hflip,
            color_jitter=aug.color_jitter, auto_augment=aug.rand_augment or None,
            interpolation=aug.interpolation, re_prob=aug.reprob, re_mode=aug.remode,
            re_count=1, mean=tuple(mean), std=tuple(std))
        if aug.crop == "pad":  # the official code's replacement for images of 32 px and less
            tf.transforms[0] = T.RandomCrop(size, padding=4, pad_if_needed=True)
        return tf
    if aug.stack == "v2":  # the seed's formulation
        return v2.Compose([
            _crop(aug, size, v=True),
            v2.RandomHorizontalFlip(aug.hflip),
            *([v2.RandAugment(num_ops=2, magnitude=ra_magnitude(aug.rand_augment))]
              if aug.rand_augment else []),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
            v2.RandomErasing(p=aug.reprob),
        ])
    if aug.stack == "light":
        return T.Compose([_crop(aug, size), T.RandomHorizontalFlip(aug.hflip), T.ToTensor(),
                          T.Normalize(mean, std)])
    raise ValueError(f"unknown augmentation stack {aug.stack!r}")


def build_eval_transform(aug: AugConfig, size: int, mean: Sequence[float], std: Sequence[float]):
    """Resize to size / crop_pct, centre-crop `size`, normalise."""
    resize = int(round(size / aug.eval_crop_pct))
    return T.Compose([T.Resize(resize, interpolation=_INTERP[aug.interpolation]),
                      T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


def build_mae_transform(size: int, scale_min: float, hflip: float, mean: Sequence[float],
                        std: Sequence[float], interpolation: str = "bicubic"):
    """The MAE paper's pretraining augmentation: a random resized crop of `scale_min` to all
    of the image, a horizontal flip, normalisation; nothing else."""
    return T.Compose([T.RandomResizedCrop(size, scale=(scale_min, 1.0),
                                          interpolation=_INTERP[interpolation]),
                      T.RandomHorizontalFlip(hflip), T.ToTensor(), T.Normalize(mean, std)])
