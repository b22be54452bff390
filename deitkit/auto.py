"""`deitkit train --data DIR` without a recipe: a configuration picked from the data.

The rules read only what any data set has (the training images' sizes, how many there are,
how many classes) and the device, and every pick says why. They come from the measurements
behind the `quickstart` recipe (docs/recipes.md) generalised by size, not from one data set:

* image size: the median short side of a sample of training images, rounded to 32, 48 or 64
  px on a CPU (up to 224 on a GPU); never upscaled beyond 2x the median;
* patch grid: 4x4 patches (16 tokens) below 10,000 training images on a CPU, else 8x8 (64):
  the token count sets a ViT's cost, and small data cannot feed a larger grid in a CPU budget;
* student: DeiT-Tiny width (192) with 4 blocks below 5,000 images, 6 below 50,000, else 12;
* augmentation: crop (+ flip) below 5,000 images, where the measured DeiT stack left the
  student under-fitting; the DeiT stack without Mixup/CutMix up to 50,000; the full stack
  above. Stochastic depth and label smoothing only with the heavier stacks;
* batch 16 below 2,000 images, 32 below 10,000, else 64; AdamW at 5e-4 (measured best for
  batches of 16 to 64 on the digits; the linear rule over-shot at these batch sizes);
* teacher: a ResNet-10-T (its deep ImageNet stem; cheap: 99.4 % on the digits at 32 px in
  8 epochs, measured) below 50,000 images on a CPU, else ResNet-18 with the CIFAR stem (3x3,
  no max-pool) at 32 px and below, the ImageNet stem above;
* fusion: from 2,000 training images, 5 % are held out (per class) and the heads' fusion
  weight is chosen on them (`data.holdout`, `distill.fusion_weight`);
* student shape: with images held out, raced inside the budget (`deitkit.race`: this shape,
  a patch grid twice as fine, and that grid at half the depth; successive halving);
* epochs: from the time budget (default 10 minutes on a CPU, 30 on a GPU), measured on the
  first steps, split between teacher and student as 8 : 20 (the quickstart's split), then
  revised after every epoch from the epochs measured (`plan.Deadline`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from .config import TrainConfig, apply_overrides, build_config, replace_keys, validate
from .data import DataError

DEFAULT_BUDGET_MINUTES = {"cpu": 10.0, "cuda": 30.0}


@dataclass
class DataFacts:
    train_images: int
    val_images: int
    classes: int
    median_side: int
    """Median short side (px) of up to 200 training images, evenly spread over the classes."""


def data_facts(path: str | Path, sample: int = 200) -> DataFacts:
    """Count a train/ ImageFolder's images and classes; read a sample's sizes (headers only)."""
    train = Path(path).expanduser() / "train"
    if not train.is_dir():
        raise DataError(f"'{path}' is not an ImageFolder tree (no train/ folder)")
    per_class = {d.name: sorted(f for f in d.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
                 for d in sorted(train.iterdir()) if d.is_dir()}
    files = [f for fs in per_class.values() for f in fs]
    if not files:
        raise DataError(f"'{train}' holds no images")
    step = max(1, len(files) // sample)
    sides = []
    for f in files[::step][:sample]:
        try:
            with Image.open(f) as img:
                sides.append(min(img.size))
        except OSError:
            continue  # a bad file: `deitkit data check` and the run's on_bad_image handle it
    if not sides:
        raise DataError(f"no readable image among {len(files)} in '{train}'")
    val = next((train.parent / s for s in ("val", "test") if (train.parent / s).is_dir()), None)
    n_val = sum(1 for f in val.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS) if val else 0
    return DataFacts(len(files), n_val, len(per_class), int(statistics.median(sides)))


def auto_config(data: str, device: str = "cpu", overrides: list[str] | None = None
                ) -> tuple[TrainConfig, list[str], float]:
    """(config, the reasons for each pick, the default time budget in minutes)."""
    facts = data_facts(data)
    n, gpu = facts.train_images, device.startswith("cuda")
    why = [f"data: {n:,} training images, {facts.classes} classes, median short side "
           f"{facts.median_side} px"]
    sizes = (32, 48, 64, 96, 128, 160, 224) if gpu else (32, 48, 64)
    fit = [s for s in sizes if s <= 2 * facts.median_side] or [sizes[0]]
    img = min(fit, key=lambda s: abs(s - facts.median_side))
    why.append(f"image size {img} px: the size nearest the median short side"
               + ("" if gpu else " among 32, 48, 64 (a CPU budget)"))
    grid = 4 if (n < 10_000 and not gpu) else 8
    patch = img // grid
    why.append(f"patch {patch} ({grid}x{grid} = {grid * grid} tokens): "
               + ("small data on a CPU" if grid == 4 else "enough data or a GPU for 64 tokens"))
    depth = 4 if n < 5_000 else 6 if n < 50_000 else 12
    band = {4: "under 5,000", 6: "under 50,000", 12: "50,000 or more"}[depth]
    why.append(f"student DeiT-Tiny width, {depth} blocks ({band} images)")
    if n < 5_000:
        aug = ["aug.stack=light", "aug.crop=pad" if img <= 32 else "aug.crop=rrc",
               "aug.scale_min=0.35", "aug.smoothing=0", "model.drop_path=0", "aug.repeated_aug=1"]
        why.append("augmentation: crop and flip only (with under 5,000 images the DeiT stack "
                   "left the student under-fitting in a CPU budget, measured)")
    elif n < 50_000:
        aug = ["aug.stack=deit", "aug.crop=pad" if img <= 32 else "aug.crop=rrc", "aug.mixup=0",
               "aug.cutmix=0", "aug.repeated_aug=1", "model.drop_path=0.05"]
        why.append("augmentation: the DeiT stack without Mixup/CutMix and repeated augmentation")
    else:
        aug = ["aug.stack=deit", "aug.crop=pad" if img <= 32 else "aug.crop=rrc"]
        why.append("augmentation: the full DeiT stack")
    batch = 16 if n < 2_000 else 32 if n < 10_000 else 64
    ema = 0.99 if n < 5_000 else 0.999
    why.append(f"batch {batch}, AdamW lr 5e-4, 1 warm-up epoch, EMA {ema}, horizontal flips "
               "(set aug.hflip=0 for digits or text)")
    holdout = 0.05 if n >= 2_000 else 0.0
    if holdout:
        why.append(f"{round(holdout * n):,} training images (5 %) held out to choose how the two "
                   "heads are fused (the better head is never outvoted)")
        why.append("student shape raced inside the budget: this one, a patch grid twice as fine, "
                   "and that grid at half the depth, scored on the held-out images (race=true)")
    every = 1 if facts.val_images <= 2_000 else 4
    if every > 1:
        why.append(f"evaluation every {every} epochs ({facts.val_images:,} validation images)")
    teacher = "resnet10t" if (n < 50_000 and not gpu) else "resnet18"
    small_stem = teacher == "resnet18" and img <= 32
    teacher_batch = min(64, 2 ** max(1, (n // 2).bit_length() - 1))  # <= half the images
    why.append(f"teacher {teacher} ({'CIFAR' if small_stem else 'ImageNet'} stem), trained "
               "first on the same split")
    budget = DEFAULT_BUDGET_MINUTES["cuda" if gpu else "cpu"]
    settings = [
        f"data.name={data}", f"data.img_size={img}", f"model.patch_size={patch}",
        f"model.overrides.depth={depth}", f"data.batch_size={batch}", "optim.lr=5e-4",
        "optim.warmup_epochs=1", "epochs=20", "teacher.train_epochs=8",
        f"teacher.train_model={teacher}",
        f"teacher.train_overrides=[model.small_stem={'true' if small_stem else 'false'}, "
        f"data.batch_size={teacher_batch}]",
        "data.num_workers=2", f"data.holdout={holdout}", f"race={'true' if holdout else 'false'}",
        "aug.hflip=0.5", f"ema.decay={ema}",
        f"eval_every={every}",
        *aug]
    cfg = replace_keys(build_config("quickstart", overrides=settings),
                       **{"recipe.name": "auto",
                          "recipe.description": "picked from the data by deitkit.auto"})
    cfg = apply_overrides(cfg, list(overrides or []))  # the user's word is last
    validate(cfg)
    return cfg, why, budget
