"""What a study is made of: budgets, run and teacher specifications, and the spec helpers
the five studies share (the DeiT students, their augmentation, the teachers)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional


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
    minutes_target: Optional[float] = None
    """Wall minutes a study should take at 3 seeds with `--jobs 2` (the report says whether
    its runs fit); None: no target."""
    overfit_fraction: Optional[float] = None
    """aug-strength and aug-ablation: the training fraction at which weakly augmented
    students over-fit (their claims are about curing over-fitting); None: `train_fraction`."""
    overfit_epochs: Optional[int] = None
    """Their epochs at `overfit_fraction` (None: `epochs`)."""
    overfit_eval_every: Optional[int] = None
    """Their evaluation interval (None: `eval_every`)."""
    pretrain_fraction: Optional[float] = None
    """recipe-rescue: the training fraction its self-supervised pretraining reads, labels
    unused (a user with more images than labels; None: `train_fraction`)."""
    pretrain_epochs: int = 1
    """recipe-rescue: epochs of that pretraining (MAE, the mae-cpu recipe)."""
    teacher_fraction: Optional[float] = None
    """teacher-kind: the training fraction both its teachers learn from (None: each student's
    own fraction). The ViT teacher is the students' DeiT-Tiny, which on the students' own
    images cannot stand the 10 points above the same ViT trained without a teacher that the
    claims need; on more images it can. `stratified_subset` draws nested subsets, so the
    teachers' images contain the students'."""
    teacher_kind_epochs: Optional[int] = None
    """teacher-kind: its students' epochs at `train_fraction` (scaled to each fraction as
    `epochs_for` does; the ViT teacher gets twice as many steps); None: `epochs`."""
    head_runs: Optional[tuple] = None
    """distill-heads: the settings it trains (names in `distill_heads.HEAD_RUNS`); None: all
    five. Its three claims read only the class-only, both-hard and both-soft runs (the
    class-only run's class head is also the student trained without a teacher); the
    no-distillation and distillation-token-only runs add findings and table rows."""
    distill_stack: Literal["full", "light"] = "full"
    """Augmentation of the distillation studies' students and ViT teachers (distill-heads,
    teacher-kind, data-scale): `full` (FULL_DEIT) or `light` (LIGHT_DEIT: RandAugment m9 on
    flips and crops, label smoothing; the stack that converges within the quick budget)."""

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
                   scale_fractions=(0.125, 0.25, 0.5), recipe="quickstart",
                   pretrain_fraction=0.5, pretrain_epochs=1),
    # CIFAR-10 on 2 CPU cores, target: each study within 60 minutes at 3 seeds with --jobs 2
    # (docs/studies/README.md has the measured times and regimes). The augmentation studies run
    # where weak augmentation over-fits (500 images, 160 epochs). The others need converged students
    # (validation moving under 1 point over the last quarter): with the full DeiT stack, 2,500
    # images x 120 epochs still moved 2.5 points and the full stack under-fit 500 images x 160
    # epochs (clean training 32.7 %), while RandAugment m9 on flips and crops settled there (moved
    # 0.7-1.0): measured. So they run the light stack on 1,000 images x 160 epochs, evaluated every
    # 20 (the last quarter starts at an evaluation). Fraction sweeps keep the steps, so larger
    # fractions get fewer epochs: at 3 % (107 epochs) students still moved 2.16 points over the last
    # quarter, at 1 % (320 epochs) 0.35 (measured), so the sweeps stop at 2 %. teacher-kind stops at
    # 1 %: its students of the matched (weaker, ~38 %) CNN teacher still moved 1.23 points at 2 %
    # (measured), so it compares 0.5 and 1 %. Teachers 100 epochs (at 6 the ResNet-18 reached 29.2 %
    # on 2,500 images, below its students, and hard distillation from it cost 4 points; 60 reached
    # 58.8 %: measured). data-scale's quick sweep has its two ends only, 0.5 and 2 %: its claims
    # read the smallest and the largest size, and a middle fraction (three more runs per seed)
    # put 3 seeds at about 100 minutes with --jobs 2 against about 67 for the two ends (estimated
    # from the runs' measured wall times on 2 cores, 2026-12-07). distill-heads trains the three
    # settings its claims read: all five came to about 79 minutes at 3 seeds (its runs' measured
    # wall times, 466-655 s two at a time, plus its teachers), the three 49.5 (measured end to end).
    # teacher-kind's teachers learn from 5,000 images (both shared by its two fractions): trained
    # on the students' own 250 and 500 images the ViT teacher stood 0-2 points above the students
    # (measured, 2 seeds), too little to hand on; its students run half the steps (with a teacher
    # pair per fraction and full steps, 3 seeds came to about 120 minutes; the new shape about 45:
    # both estimated from measured runs, not yet run)
    "quick": Budget("quick", None, epochs=160, train_fraction=0.02, img_size=32, patch_size=8,
                    depth=6, batch_size=64, teacher_epochs=100, eval_train_images=1000,
                    eval_every=20, num_workers=2, fractions=(0.005, 0.01),
                    scale_fractions=(0.005, 0.02), recipe="small-data-cpu",
                    overfit_fraction=0.01, overfit_epochs=160, overfit_eval_every=20,
                    distill_stack="light", pretrain_fraction=0.2, pretrain_epochs=10,
                    head_runs=("class-only", "both-hard", "both-soft"), teacher_fraction=0.1,
                    teacher_kind_epochs=80, minutes_target=60),
    # one GPU, each study within about 5 minutes with 3 seeds (--seeds 3), the data on the
    # device (data.on_device=auto picks it for CIFAR-10). Planned from issue 13's step
    # measurements (DeiT-Tiny at 32 px: 6,000-30,000 images/s on an H100); not yet run. The
    # distillation studies use the light stack, as at quick: the full one under-fits runs
    # this short (measured on the CPU)
    "gpu": Budget("gpu", None, epochs=40, train_fraction=0.1, img_size=32, patch_size=4,
                  depth=6, batch_size=256, teacher_epochs=20, eval_train_images=2000,
                  eval_every=10, num_workers=8, fractions=(0.02, 0.1),
                  scale_fractions=(0.01, 0.1, 0.3), recipe="small-data-cpu",
                  overfit_fraction=0.05, overfit_epochs=100, overfit_eval_every=25,
                  distill_stack="light", pretrain_fraction=1.0, pretrain_epochs=20,
                  minutes_target=5),
    # one GPU: full training set, the small-data-cpu recipe's model
    "full": Budget("full", None, epochs=100, train_fraction=1.0, img_size=32, patch_size=4,
                   depth=12, batch_size=128, teacher_epochs=30, eval_train_images=5000,
                   eval_every=5, num_workers=8, fractions=(0.1, 0.25, 0.5, 1.0),
                   scale_fractions=(0.03, 0.1, 0.3, 1.0), recipe="small-data-cpu",
                   pretrain_fraction=1.0, pretrain_epochs=50),
}


@dataclass(frozen=True)
class TeacherSpec:
    """A model that several runs share: a teacher, a CNN (`deitkit teacher`) or a ViT (a
    DeiT trained on labels only), or a student's starting weights, an encoder pretrained
    without labels (`deitkit pretrain`)."""
    model: str
    kind: str                  # "cnn", "vit" or "mae"
    recipe: str
    overrides: tuple = ()
    label: str = ""
    match: Optional["TeacherSpec"] = None
    """Use the evaluated checkpoint of this teacher (trained with `keep_eval_checkpoints`)
    whose validation top-1 is closest to `match`'s best: teachers of matched accuracy."""

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
    weights: Optional[TeacherSpec] = None
    """A pretraining run (kind `mae`) whose encoder the student starts from (`model.weights`)."""


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
# the full stack without the mixing, erasing, repeated augmentation and stochastic depth: the
# weakly regularised base of aug-strength, and the distillation studies' light stack
WEAK_BASE = ["aug.mixup=0", "aug.cutmix=0", "aug.reprob=0", "aug.repeated_aug=1",
             "model.drop_path=0"]
LIGHT_DEIT = [*FULL_DEIT, *WEAK_BASE]
# RandAugment off and nothing in its place: timm applies colour jitter when RandAugment is off,
# which would swap one augmentation for another (and, CPU-only, move the run to the worker
# loader at twice the wall time: measured in aug-ablation)
RA_OFF = ("aug.rand_augment=", "aug.color_jitter=0")


def distill_aug(b: Budget) -> list[str]:
    """The augmentation of the distillation studies' students and ViT teachers at `b`."""
    return LIGHT_DEIT if b.distill_stack == "light" else FULL_DEIT


# No study reads the EMA copy's accuracy (teachers are loaded from their own weights, not the
# EMA's), and the EMA copy changes nothing else in a run (same seed, same numbers: tested);
# evaluating it doubled each validation pass, a large share of a quick run (docs/performance.md)
NO_EMA = "ema.enabled=false"


def student_args(b: Budget, distilled: bool) -> list[str]:
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    return [f"model.name={name}", f"model.patch_size={b.patch_size}",
            f"model.overrides={{depth: {b.depth}}}", f"data.train_fraction={b.train_fraction}",
            f"epochs={b.epochs}", f"optim.warmup_epochs={min(2, b.epochs - 1)}", NO_EMA]


def overfit_args(b: Budget) -> list[str]:
    """The data size and length of the augmentation studies (see Budget.overfit_fraction)."""
    f = b.overfit_fraction or b.train_fraction
    e = b.overfit_epochs or b.epochs
    return [f"data.train_fraction={f}", f"epochs={e}",
            f"eval_every={b.overfit_eval_every or b.eval_every}",
            f"optim.warmup_epochs={min(5, max(1, e // 20))}"]


def epoch_args(b: Budget, fraction: float, epochs: int) -> list[str]:
    """Epochs scaled to the fraction, and evaluation as often (in epochs) as at the base
    fraction, so a small-data run is not dominated by evaluating the full validation set."""
    e = b.epochs_for(fraction, epochs)
    every = max(b.eval_every, round(b.eval_every * e / epochs))
    return [f"epochs={e}", f"eval_every={every}"]


def cnn_teacher(b: Budget, fraction: float, model: str = "resnet18",
                overrides: tuple = ()) -> TeacherSpec:
    return TeacherSpec(model, "cnn", "cnn-teacher", (
        f"data.train_fraction={fraction}", *epoch_args(b, fraction, b.teacher_epochs),
        "model.small_stem=false", *overrides), label=f"{model} @ {fraction:g}")


def matched_cnn_teacher(b: Budget, fraction: float, other: TeacherSpec) -> TeacherSpec:
    """A CNN teacher evaluated about 50 times and kept at each new half-point high, used at
    the checkpoint whose accuracy is closest to `other`'s (the ViT teacher): a comparison at
    matched teacher accuracy."""
    t = cnn_teacher(b, fraction)
    # about 50 evaluations (of the whole validation set) per teacher run, whatever its length
    every = max(1, round(b.epochs_for(fraction, b.teacher_epochs) / 50))
    return TeacherSpec(t.model, t.kind, t.recipe, (*t.overrides, f"eval_every={every}",
                                                   "keep_eval_checkpoints=true"),
                       label=f"{t.label}, matched", match=other)


def vit_teacher(b: Budget, fraction: float, epochs: Optional[int] = None) -> TeacherSpec:
    # the students' DeiT-Tiny, trained on labels only for twice the students' epochs (`epochs`,
    # default the budget's): the ViT teacher a study budget can afford (the report states how
    # close it came to the CNN)
    return TeacherSpec("deit_tiny_patch16_224", "vit", b.recipe, (
        f"data.train_fraction={fraction}", *epoch_args(b, fraction, 2 * (epochs or b.epochs)),
        f"model.patch_size={b.patch_size}", f"model.overrides={{depth: {b.depth}}}",
        "distill.kind=none", *distill_aug(b), "optim.warmup_epochs=2", NO_EMA),
        label=f"DeiT @ {fraction:g}")


def mae_encoder(b: Budget) -> TeacherSpec:
    """Self-supervised pretraining (MAE, the mae-cpu recipe) of the distilled students' encoder
    on `b.pretrain_fraction` of the training images, their labels unused."""
    f = b.pretrain_fraction or b.train_fraction
    return TeacherSpec("deit_tiny_distilled_patch16_224", "mae", "mae-cpu", (
        f"data.train_fraction={f}", f"epochs={b.pretrain_epochs}",
        f"optim.warmup_epochs={min(5, max(0, b.pretrain_epochs - 1))}",
        f"model.patch_size={b.patch_size}", f"model.overrides={{depth: {b.depth}}}",
        ), label=f"MAE @ {f:g}")
