"""Batch-level Mixup/CutMix (timm's `Mixup` for the DeiT stack, v2's for the seed's stack),
seeded per batch so that every mixed view can be replayed."""
from __future__ import annotations

import zlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from timm.data import Mixup
from torch.profiler import record_function
from torchvision.transforms import v2

from ..config import AugConfig
from .sources import ForkRng

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


def batch_seed(run_seed: int, epoch: int, rank: int, step: int) -> int:
    """The seed of one batch's Mixup/CutMix draw: a hash of (run seed, epoch, rank, step)."""
    return zlib.crc32(f"mix/{run_seed}/{epoch}/{rank}/{step}".encode())


def mix_batch(mixer: Optional[Mixer], images: torch.Tensor, labels: torch.Tensor, seed: int):
    """Mixup/CutMix under a per-batch seed, so the mixed view can be replayed exactly (the
    per-image augmentation is seeded per item by the dataset). Without a mixer: as given."""
    if mixer is None:
        return images, labels
    with ForkRng(seed):
        return mixer(images, labels)                               # targets: [B, C] soft


def student_views(loader, mixer: Optional[Mixer], device: torch.device, seed: int, epoch: int,
                  rank: int = 0):
    """The views a student sees in `epoch`, batch by batch: (step, views, labels, targets),
    on `device`, each batch mixed under its own seed (`batch_seed`). The one definition of
    "what the student sees": the training loop and the teacher store both iterate it, so a
    stored teacher output belongs to exactly the view it is used with."""
    for step, (images, labels) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with record_function("mix"):
            views, targets = mix_batch(mixer, images, labels, batch_seed(seed, epoch, rank, step))
        yield step, views, labels, targets
