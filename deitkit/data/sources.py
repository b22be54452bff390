"""Where images come from: the embedded digits, torchvision datasets, ImageFolder trees.

Every source yields (PIL RGB image, class index) and knows its class names. Datasets are
wrapped in `TransformDataset` so the same split can be shown with different transforms.
"""
from __future__ import annotations

import gzip
import shutil
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

DEBIAN_FASHION_MNIST = ("/usr/share/datasets/fashion-mnist",)
TORCHVISION_SOURCES = ("cifar10", "cifar100", "mnist", "fashion-mnist")


class DataError(ValueError):
    """A dataset is missing, malformed or cannot be downloaded."""


class ImageListDataset(Dataset):
    """Images held in memory (the digits); yields (PIL image, label)."""

    def __init__(self, images: Sequence[Image.Image], targets: Sequence[int]):
        self.images, self.targets = list(images), list(int(t) for t in targets)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


class TransformDataset(Dataset):
    """A view of a base dataset through a subset of indices and a transform."""

    def __init__(self, base: Dataset, indices: Optional[Sequence[int]] = None,
                 transform: Optional[Callable] = None):
        self.base = base
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.transform = transform
        base_targets = _targets(base)
        self.targets = [base_targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        img, y = self.base[self.indices[i]]
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        if img.mode != "RGB":
            img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, y

    def with_transform(self, transform: Optional[Callable]) -> "TransformDataset":
        return TransformDataset(self.base, self.indices, transform)


def _targets(ds: Dataset) -> list[int]:
    t = getattr(ds, "targets", None)
    if t is None:
        raise DataError(f"dataset {type(ds).__name__} has no `targets` attribute")
    return [int(x) for x in (t.tolist() if hasattr(t, "tolist") else t)]


@dataclass
class DatasetBundle:
    train: TransformDataset
    val: TransformDataset
    classes: list[str]
    name: str
    val_split: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified_subset(targets: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Seeded per-class subsample: round(fraction * n_c) (at least 1) images of each class c."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"train_fraction must be in (0, 1], got {fraction}")
    targets = np.asarray(targets)
    if fraction == 1.0:
        return list(range(len(targets)))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        n = max(1, int(round(fraction * len(idx))))
        keep.extend(rng.permutation(idx)[:n].tolist())
    return sorted(keep)


def digits_dataset(upscale: int = 32) -> tuple[ImageListDataset, ImageListDataset, list[str]]:
    """scikit-learn's 1,797 8x8 digits, upscaled (bicubic) to `upscale` px, split 80/20.

    The split is stratified with a fixed seed (0), independent of the run seed, so every run
    on the digits sees the same 1,437 training and 360 test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    pix = (d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # [N, 8, 8] in 0..16
    imgs = [Image.fromarray(p, mode="L").resize((upscale, upscale), Image.BICUBIC).convert("RGB")
            for p in pix]
    idx = np.arange(len(imgs))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=d.target)
    make = lambda ii: ImageListDataset([imgs[i] for i in ii], d.target[ii])  # noqa: E731
    return make(tr), make(te), [str(c) for c in range(10)]


def _offline_message(name: str, root: Path, files: str) -> str:
    return (f"could not download {name} into '{root}' (no internet?). Put {files} in "
            f"'{root}' on this machine, or set data.root to where they are, or use "
            "data.download=false to fail fast")


def _find_debian_fashion_mnist(raw: Path, search_dirs: Sequence[str]) -> bool:
    """Unpack the Debian package's gzipped IDX files into torchvision's raw folder."""
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for d in search_dirs:
        d = Path(d)
        if all((d / f"{n}.gz").is_file() or (d / n).is_file() for n in names):
            raw.mkdir(parents=True, exist_ok=True)
            for n in names:
                if (raw / n).is_file():
                    continue
                if (d / n).is_file():
                    shutil.copyfile(d / n, raw / n)
                else:
                    with gzip.open(d / f"{n}.gz", "rb") as src, open(raw / n, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            return True
    return False


def torchvision_dataset(name: str, root: str, download: bool,
                        fashion_dirs: Sequence[str] = DEBIAN_FASHION_MNIST):
    import torchvision.datasets as tvd
    root_p = Path(root).expanduser()
    cls, files = {
        "cifar10": (tvd.CIFAR10, "cifar-10-python.tar.gz"),
        "cifar100": (tvd.CIFAR100, "cifar-100-python.tar.gz"),
        "mnist": (tvd.MNIST, "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"),
        "fashion-mnist": (tvd.FashionMNIST,
                          "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"),
    }[name]
    if name == "fashion-mnist":
        _find_debian_fashion_mnist(root_p / "FashionMNIST" / "raw", fashion_dirs)
    try:
        train = cls(str(root_p), train=True, download=download)
        test = cls(str(root_p), train=False, download=download)
    except (urllib.error.URLError, OSError, ConnectionError) as e:
        raise DataError(_offline_message(name, root_p, files) + f" [{type(e).__name__}: {e}]") \
            from None
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True"
        raise DataError(f"{name} not found in '{root_p}' and data.download is false. "
                        + _offline_message(name, root_p, files)) from None
    return train, test, list(train.classes)


class _RemappedImageFolder(Dataset):
    """An ImageFolder whose class indices follow another split's class list."""

    def __init__(self, folder, class_to_idx: dict[str, int]):
        from torchvision.datasets import ImageFolder
        self.inner = ImageFolder(str(folder))
        extra = sorted(set(self.inner.classes) - set(class_to_idx))
        if extra:
            raise DataError(f"'{folder}' has classes that the training split lacks: {extra}")
        remap = {i: class_to_idx[c] for i, c in enumerate(self.inner.classes)}
        self.targets = [remap[t] for t in self.inner.targets]
        self.remap = remap

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        img, y = self.inner[i]
        return img, self.remap[y]


def imagefolder_dataset(path: str):
    from torchvision.datasets import ImageFolder
    root = Path(path).expanduser()
    if not (root / "train").is_dir():
        raise DataError(f"'{root}' is not a dataset: expected an ImageFolder tree with "
                        "'train/<class>/*.jpg' and 'val/' or 'test/' beside it")
    val_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if val_dir is None:
        raise DataError(f"'{root}' has 'train/' but neither 'val/' nor 'test/'")
    try:
        train = ImageFolder(str(root / "train"))
        val = _RemappedImageFolder(val_dir, train.class_to_idx)
    except FileNotFoundError as e:
        raise DataError(f"'{root}': {e}") from None
    return train, val, list(train.classes), val_dir.name


def load_dataset(name: str, root: str = "~/.cache/deitkit/datasets", download: bool = True,
                 train_fraction: float = 1.0, fraction_seed: int = 0,
                 digits_size: int = 32) -> DatasetBundle:
    """Resolve `name` (a built-in source or an ImageFolder path) to train/val datasets."""
    val_split = "test"
    if name == "digits":
        train, val, classes = digits_dataset(digits_size)
    elif name in TORCHVISION_SOURCES:
        train, val, classes = torchvision_dataset(name, root, download)
    elif Path(name).expanduser().is_dir():
        train, val, classes, val_split = imagefolder_dataset(name)
    else:
        raise DataError(f"unknown dataset '{name}': use digits, {', '.join(TORCHVISION_SOURCES)}, "
                        "or the path of an ImageFolder tree (train/ plus val/ or test/)")
    idx = stratified_subset(_targets(train), train_fraction, fraction_seed)
    return DatasetBundle(TransformDataset(train, idx), TransformDataset(val), classes,
                         name, val_split)
