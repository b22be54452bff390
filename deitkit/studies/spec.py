"""What a study is made of: budgets, run and teacher specifications, and the spec helpers
the five studies share (the DeiT students, their augmentation, the teachers)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Budget:
    """How big a study's runs are. `data` None means the user must give --data."""
    name: str
    data: Optional[str]
    epochs: int
    """Student epochs at `train_fraction` (fraction sweeps keep the step count: see
    `epochs_for`)."""
    train_fraction: float
    img_size: int
    patch_size: int
    depth: int
    """Blocks of the DeiT-Tiny students (timm's `depth`)."""
    batch_size: int
    teacher_epochs: int
    eval_train_images: int
    eval_every: int
    num_workers: int
    fractions: tuple
    """Training-set fractions of `teacher-kind`."""
    scale_fractions: tuple
    """Training-set fractions of `data-scale` (log-spaced)."""
    recipe: str
    """Base recipe of the students."""
    amp: str = "auto"

    def epochs_for(self, fraction: float, epochs: Optional[int] = None) -> int:
        """Epochs at another fraction with about the same number of optimiser steps (capped at
        8x), so small-data runs are not also short runs."""
        e = epochs or self.epochs
        return max(1, min(8 * e, round(e * self.train_fraction / fraction)))


BUDGETS = {
    # CI: seconds per run on the embedded digits; checks the plumbing, not the claims
    "tiny": Budget("tiny", "digits", epochs=2, train_fraction=0.25, img_size=32, patch_size=8,
                   depth=2, batch_size=32, teacher_epochs=1, eval_train_images=128,
                   eval_every=1, num_workers=0, fractions=(0.25, 0.5),
                   scale_fractions=(0.125, 0.25, 0.5), recipe="quickstart"),
    # CIFAR-10 on 2 CPU cores, each study within about 45 minutes. teacher-kind gets two
    # fractions: each costs two teachers and two students (about 19 min on 2 cores, measured)
    "quick": Budget("quick", None, epochs=12, train_fraction=0.1, img_size=32, patch_size=8,
                    depth=6, batch_size=64, teacher_epochs=6, eval_train_images=1000,
                    eval_every=3, num_workers=2, fractions=(0.02, 0.1),
                    scale_fractions=(0.01, 0.03, 0.1), recipe="small-data-cpu"),
    # one GPU: full training set, the small-data-cpu recipe's model
    "full": Budget("full", None, epochs=100, train_fraction=1.0, img_size=32, patch_size=4,
                   depth=12, batch_size=128, teacher_epochs=30, eval_train_images=5000,
                   eval_every=5, num_workers=8, fractions=(0.1, 0.25, 0.5, 1.0),
                   scale_fractions=(0.03, 0.1, 0.3, 1.0), recipe="small-data-cpu"),
}


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher that several runs share: a CNN (`deitkit teacher`) or a ViT (a DeiT trained
    on labels only)."""
    model: str
    kind: str                  # "cnn" or "vit"
    recipe: str
    overrides: tuple = ()
    label: str = ""

    def key(self, data: str, seed: int, extra: tuple = ()) -> str:
        text = json.dumps([data, self.model, self.kind, self.recipe, list(self.overrides), seed]
                          + sorted(extra))
        short = hashlib.sha1(text.encode()).hexdigest()[:10]
        return f"{self.kind}-{self.model}-s{seed}-{short}"


@dataclass
class RunSpec:
    """One run of a study. role: `student` (a DeiT via `train`) or `teacher` (report the
    shared teacher `teacher`'s own run, e.g. the CNN line of data-scale)."""
    name: str
    labels: dict
    overrides: list = field(default_factory=list)
    role: str = "student"
    teacher: Optional[TeacherSpec] = None
    recipe: Optional[str] = None


@dataclass
class Study:
    """One study: its claim, the runs it makes at a budget, and the analysis of their results
    (plain data for results.json: tables, plots, findings)."""
    title: str
    claim: str
    runs: Callable[[Budget], list]
    analyze: Callable[[dict, Path], dict]


FULL_DEIT = ["aug.stack=deit", "aug.rand_augment=rand-m9-mstd0.5-inc1", "aug.mixup=0.8",
             "aug.cutmix=1.0", "aug.reprob=0.25", "aug.repeated_aug=3", "model.drop_path=0.1",
             "aug.smoothing=0.1"]


def student_args(b: Budget, distilled: bool) -> list[str]:
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    return [f"model.name={name}", f"model.patch_size={b.patch_size}",
            f"model.overrides={{depth: {b.depth}}}", f"data.train_fraction={b.train_fraction}",
            f"epochs={b.epochs}", f"optim.warmup_epochs={min(2, b.epochs - 1)}"]


def epoch_args(b: Budget, fraction: float, epochs: int) -> list[str]:
    """Epochs scaled to the fraction, and evaluation as often (in epochs) as at the base
    fraction, so a small-data run is not dominated by evaluating the full validation set."""
    e = b.epochs_for(fraction, epochs)
    every = max(b.eval_every, round(b.eval_every * e / epochs))
    return [f"epochs={e}", f"eval_every={every}"]


def cnn_teacher(b: Budget, fraction: float, model: str = "resnet18") -> TeacherSpec:
    return TeacherSpec(model, "cnn", "cnn-teacher", (
        f"data.train_fraction={fraction}", *epoch_args(b, fraction, b.teacher_epochs),
        "model.small_stem=false"), label=f"{model} @ {fraction:g}")


def vit_teacher(b: Budget, fraction: float) -> TeacherSpec:
    # the students' DeiT-Tiny, trained on labels only for twice the students' epochs: the ViT
    # teacher a study budget can afford (the report states how close it came to the CNN)
    return TeacherSpec("deit_tiny_patch16_224", "vit", b.recipe, (
        f"data.train_fraction={fraction}", *epoch_args(b, fraction, 2 * b.epochs),
        f"model.patch_size={b.patch_size}", f"model.overrides={{depth: {b.depth}}}",
        "distill.kind=none", *FULL_DEIT, "optim.warmup_epochs=2"), label=f"DeiT @ {fraction:g}")
