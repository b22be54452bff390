"""Batch-level Mixup/CutMix: timm's `Mixup` for the DeiT stack, v2's for the seed's stack."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from timm.data import Mixup
from torchvision.transforms import v2

from ..config import AugConfig

Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def build_mixer(aug: AugConfig, num_classes: int) -> Optional[Mixer]:
    """A function (images, labels) -> (mixed images, soft targets [B, C]), or None."""
    if aug.stack == "light" or (aug.mixup <= 0 and aug.cutmix <= 0) or aug.mix_prob <= 0:
        return None
    if aug.stack == "deit":
        return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mix_prob,
                     switch_prob=aug.switch_prob, mode="batch",
                     label_smoothing=aug.smoothing, num_classes=num_classes)
    ops = []
    if aug.mixup > 0:
        ops.append(v2.MixUp(alpha=aug.mixup, num_classes=num_classes))
    if aug.cutmix > 0:
        ops.append(v2.CutMix(alpha=aug.cutmix, num_classes=num_classes))
    choice = v2.RandomChoice(ops)

    def v2_mix(x: torch.Tensor, y: torch.Tensor):
        if torch.rand(()) >= aug.mix_prob:
            return x, F.one_hot(y, num_classes).float()
        return choice(x, y)
    return v2_mix
