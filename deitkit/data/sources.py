"""Where images come from: the embedded digits, torchvision datasets, ImageFolder trees.

Every source yields (PIL RGB image, class index) and knows its class names. Datasets are
wrapped in `TransformDataset` so the same split can be shown with different transforms.
"""
from __future__ import annotations

import gzip
import random
import shutil
import urllib.error
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, get_worker_info

from .sampler import SampleKey

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


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: grayscale, 16-bit, CMYK, palette and RGBA (on white) alike."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


class ForkRng:
    """Run a block under a seeded python/numpy/torch RNG, then restore the caller's streams.

    Inside a DataLoader worker the restore is skipped (the worker owns its RNG); in the main
    process (num_workers=0) it keeps per-sample seeding from disturbing the training stream.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.restore = get_worker_info() is None
        if self.restore:
            self.states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.default_generator.manual_seed(self.seed)  # CPU stream only: 60x cheaper

    def __exit__(self, *exc):
        if self.restore:
            random.setstate(self.states[0])
            np.random.set_state(self.states[1])
            torch.set_rng_state(self.states[2])
        return False


def sample_seed(run_seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of one item: a hash of (run seed, epoch, position in the epoch)."""
    return zlib.crc32(f"{run_seed}/{epoch}/{position}".encode()) * 65521 + position


class TransformDataset(Dataset):
    """A view of a base dataset through a subset of indices and a transform.

    Indexed by an int, or by a `SampleKey` from `RepeatedAugSampler`: then the transform runs
    under an RNG seeded from (seed, epoch, position), so every augmented view can be replayed.
    Unreadable images raise `DataError` naming the file, or, with on_bad_image='skip', are
    replaced by the next readable item and counted in `skipped` (per process).
    """

    def __init__(self, base: Dataset, indices: Optional[Sequence[int]] = None,
                 transform: Optional[Callable] = None, seed: int = 0,
                 on_bad_image: str = "error", skip_log: Optional[str] = None):
        self.base = base
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.transform = transform
        self.seed = seed
        self.on_bad_image = on_bad_image
        self.skip_log = skip_log  # skipped files are appended here (one line each, any worker)
        base_targets = _targets(base)
        self.targets = [base_targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def describe(self, i: int) -> str:
        samples = getattr(self.base, "samples", None)
        return samples[self.indices[i]][0] if samples else f"item {self.indices[i]}"

    def _load(self, i: int):
        try:
            img, y = self.base[self.indices[i]]
            if not isinstance(img, Image.Image):
                img = Image.fromarray(np.asarray(img))
            return to_rgb(img), y
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if self.on_bad_image == "skip":
                if self.skip_log:
                    with open(self.skip_log, "a") as f:
                        f.write(f"{self.describe(i)}\t{type(e).__name__}: {e}\n")
                return None, None
            raise DataError(f"cannot read image '{self.describe(i)}': {type(e).__name__}: {e}. "
                            "Run `deitkit data check` on the dataset, or set "
                            "data.on_bad_image=skip to skip (and count) unreadable files") from None

    def __getitem__(self, key):
        if isinstance(key, SampleKey):
            i, seed = key.index, sample_seed(self.seed, key.epoch, key.position)
        else:
            i, seed = int(key), None
        for attempt in range(len(self)):  # skip policy: the next readable item stands in
            img, y = self._load((i + attempt) % len(self))
            if img is not None:
                break
        else:
            raise DataError("no readable image in the dataset")
        if self.transform is not None:
            if seed is None:
                img = self.transform(img)
            else:
                with ForkRng(seed):
                    img = self.transform(img)
        return img, y

    def with_transform(self, transform: Optional[Callable], seed: Optional[int] = None,
                       on_bad_image: Optional[str] = None,
                       skip_log: Optional[str] = None) -> "TransformDataset":
        return TransformDataset(self.base, self.indices, transform,
                                self.seed if seed is None else seed,
                                on_bad_image or self.on_bad_image, skip_log or self.skip_log)


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
    holdout: Optional[TransformDataset] = None
    """Training images kept out of training (`data.holdout`): the fusion weight is chosen on
    them (never on the validation split the run reports)."""

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
    except RuntimeError:  # torchvision: "Dataset not found. You can use download=True"
        raise DataError(f"{name} not found in '{root_p}' and data.download is false. "
                        + _offline_message(name, root_p, files)) from None
    return train, test, list(train.classes)


def load_image(path: str) -> Image.Image:
    """Open and fully decode an image file, as 8-bit RGB (any mode, 16-bit included)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
        return to_rgb(img)


def _image_folder(folder: Path):
    """torchvision's ImageFolder, with our loader and an error that names empty classes."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS
    if not folder.is_dir():
        raise DataError(f"'{folder}' is not a folder")
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"'{folder}' has no class folders (expected '{folder}/<class>/<image>')")
    empty = [d.name for d in classes
             if not any(f.suffix.lower() in IMG_EXTENSIONS for f in d.rglob("*") if f.is_file())]
    if empty:
        raise DataError(f"'{folder}': class folder(s) without images: {', '.join(empty)} "
                        f"(image extensions: {', '.join(IMG_EXTENSIONS)}); remove them or add "
                        "images")
    return ImageFolder(str(folder), loader=load_image)


class _RemappedImageFolder(Dataset):
    """An ImageFolder whose class indices follow another split's class list."""

    def __init__(self, folder, class_to_idx: dict[str, int]):
        self.inner = _image_folder(Path(folder))
        extra = sorted(set(self.inner.classes) - set(class_to_idx))
        if extra:
            raise DataError(f"'{folder}' has classes that the training split lacks: {extra}")
        remap = {i: class_to_idx[c] for i, c in enumerate(self.inner.classes)}
        self.targets = [remap[t] for t in self.inner.targets]
        self.samples = [(p, remap[t]) for p, t in self.inner.samples]
        self.remap = remap

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        img, y = self.inner[i]
        return img, self.remap[y]


def imagefolder_dataset(path: str):
    root = Path(path).expanduser()
    if not (root / "train").is_dir():
        raise DataError(f"'{root}' is not a dataset: expected an ImageFolder tree with "
                        "'train/<class>/*.jpg' and 'val/' or 'test/' beside it")
    val_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if val_dir is None:
        raise DataError(f"'{root}' has 'train/' but neither 'val/' nor 'test/'")
    train = _image_folder(root / "train")
    val = _RemappedImageFolder(val_dir, train.class_to_idx)
    return train, val, list(train.classes), val_dir.name


def load_dataset(name: str, root: str = "~/.cache/deitkit/datasets", download: bool = True,
                 train_fraction: float = 1.0, fraction_seed: int = 0,
                 digits_size: int = 32, holdout: float = 0.0) -> DatasetBundle:
    """Resolve `name` (a built-in source or an ImageFolder path) to train/val datasets;
    `holdout` of the training images (per class, seeded by `fraction_seed`) set apart."""
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
    held = None
    if holdout > 0:
        targets = _targets(train)
        picked = set(stratified_subset([targets[i] for i in idx], holdout, fraction_seed + 1))
        held = TransformDataset(train, [i for k, i in enumerate(idx) if k in picked])
        idx = [i for k, i in enumerate(idx) if k not in picked]
    return DatasetBundle(TransformDataset(train, idx), TransformDataset(val), classes,
                         name, val_split, held)


# ---------------------------------------------------------------------------------------------
# images without labels (self-supervised pretraining)

class PlainImageFiles(Dataset):
    """Image files, labels ignored (every target 0); `samples` names each file for errors."""

    def __init__(self, files: Sequence[Path]):
        self.samples = [(str(f), 0) for f in files]
        self.targets = [0] * len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return load_image(self.samples[i][0]), 0


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, searched recursively, in a fixed order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)


def load_unlabelled(name: str, root: str = "~/.cache/deitkit/datasets", download: bool = True,
                    train_fraction: float = 1.0, fraction_seed: int = 0, digits_size: int = 32,
                    val_images: int = 256, seed: int = 0) -> DatasetBundle:
    """Images for self-supervised pretraining, labels ignored: a built-in source or an
    ImageFolder tree (its training split, `train_fraction` of it; validation from its own
    split, so no validation image is trained on), or any folder of images, searched
    recursively (`val_images` of them, seeded, held out for validation)."""
    path = Path(name).expanduser()
    if not path.is_dir() or (path / "train").is_dir():
        bundle = load_dataset(name, root, download, train_fraction, fraction_seed, digits_size)
        return DatasetBundle(bundle.train, bundle.val, [], bundle.name, bundle.val_split)
    from torchvision.datasets.folder import IMG_EXTENSIONS
    files = image_files(path)
    if len(files) < 2:
        raise DataError(f"'{path}' holds {len(files)} image file(s) (searched recursively; "
                        f"extensions {', '.join(IMG_EXTENSIONS)}): pretraining needs at least 2")
    n_val = min(val_images, max(1, len(files) // 10))
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
    keep = [train_idx[i] for i in stratified_subset([0] * len(train_idx), train_fraction,
                                                    fraction_seed)]
    base = PlainImageFiles(files)
    return DatasetBundle(TransformDataset(base, keep), TransformDataset(base, val_idx), [],
                         str(path), "held-out")
