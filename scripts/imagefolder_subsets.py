"""Make the ImageFolder data sets that docs/recipes.md and docs/finetune.md measure on.

    python scripts/imagefolder_subsets.py OUT_DIR [--cifar ../shared/data/cifar10-jpg.tar.gz]
    python scripts/imagefolder_subsets.py OUT_DIR --no-fashion --cifar-train 500 --cifar-test 200
    python scripts/imagefolder_subsets.py OUT_DIR --finetune-split [--cifar ...]

writes OUT_DIR/fashion-6k (Fashion-MNIST from the Debian package: 600 training images per
class, the first 2,000 test images; 28 px PNG) and OUT_DIR/cifar10-64px-2k (CIFAR-10: 200
training and 100 test images per class, bicubic-upscaled to 64 px JPEG); `--cifar-train N
[N ...]` makes one CIFAR-10 set per N training images per class instead (named by its
training-set size: 500 gives cifar10-64px-5k), each with `--cifar-test` test images per
class. With
--finetune-split: OUT_DIR/cifar5-pretrain (airplane, automobile, bird, cat, deer: all 25,000
training and 5,000 test images) and OUT_DIR/cifar5-finetune-500 (dog, frog, horse, ship,
truck: 100 training images per class, seeded, and all 5,000 test images), the files copied as
they are. Seeded, so the same files every time. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import gzip
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "boot"]


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion(out: Path, per_class: int = 600, test: int = 2000) -> None:
    for split, prefix, limit in (("train", "train", None), ("test", "t10k", test)):
        x, y = _idx(FASHION / f"{prefix}-images-idx3-ubyte.gz"), \
            _idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
        counts = dict.fromkeys(range(10), 0)
        for i, (img, label) in enumerate(zip(x, y)):
            if limit is not None and i >= limit:
                break
            if limit is None and counts[label] >= per_class:
                continue
            counts[label] += 1
            d = out / split / FASHION_CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(d / f"{i:05d}.png")


def cifar(tar: Path, out: Path, train: int = 200, test: int = 100, size: int = 64) -> None:
    rng = random.Random(0)
    with tarfile.open(tar) as t:
        members = [m for m in t.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        by = {}
        for m in members:
            parts = Path(m.name).parts
            split, cls = parts[-3], parts[-2]
            by.setdefault((split, cls), []).append(m)
        for (split, cls), ms in sorted(by.items()):
            ms = sorted(ms, key=lambda m: m.name)
            rng.shuffle(ms)
            d = out / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for m in ms[:train if split == "train" else test]:
                img = Image.open(t.extractfile(m)).convert("RGB")
                img.resize((size, size), Image.BICUBIC).save(d / Path(m.name).name, quality=90)


PRETRAIN = ("airplane", "automobile", "bird", "cat", "deer")


def finetune_split(tar: Path, out: Path, per_class: int = 100) -> None:
    """Two passes in archive order (a .tar.gz cannot seek backwards cheaply): choose, copy."""
    rng = random.Random(0)
    with tarfile.open(tar) as t:
        names = sorted(m.name for m in t if m.isfile() and m.name.endswith(".jpg"))
    by: dict = {}
    for name in names:
        parts = Path(name).parts
        by.setdefault((parts[-3], parts[-2]), []).append(name)
    chosen = {}
    for (split, cls), group in by.items():
        if cls in PRETRAIN:
            dest = out / "cifar5-pretrain" / split / cls
        else:
            dest = out / "cifar5-finetune-500" / split / cls
            if split == "train":
                rng.shuffle(group)
                group = group[:per_class]
        chosen.update({name: dest for name in group})
    with tarfile.open(tar) as t:
        for m in t:
            dest = chosen.get(m.name)
            if dest is not None:
                dest.mkdir(parents=True, exist_ok=True)
                (dest / Path(m.name).name).write_bytes(t.extractfile(m).read())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--cifar", default="../shared/data/cifar10-jpg.tar.gz")
    p.add_argument("--finetune-split", action="store_true")
    p.add_argument("--cifar-train", type=int, nargs="+", default=[200],
                   help="training images per class of each CIFAR-10 set (default 200: 2k)")
    p.add_argument("--cifar-test", type=int, default=100, help="test images per class")
    p.add_argument("--no-fashion", action="store_true", help="skip fashion-6k")
    a = p.parse_args()
    if a.finetune_split:
        finetune_split(Path(a.cifar), Path(a.out))
    else:
        if not a.no_fashion:
            fashion(Path(a.out) / "fashion-6k")
        for n in a.cifar_train:
            name = f"cifar10-64px-{10 * n / 1000:g}k"
            cifar(Path(a.cifar), Path(a.out) / name, train=n, test=a.cifar_test)
