"""Data on the device: decode once into a uint8 cache, hold it on the device, augment there.

A split that fits (`data.on_device`, `data.device_share`) is decoded once at the training size
into a uint8 tensor [N, 3, S, S], kept on disk as safetensors (no pickle) under
`data.cache_dir`, keyed by a digest of the files (path, size, mtime) and the decode size (a
changed file gives a new key: the cache is rebuilt), and moved to the device. Each training
batch is then one gather plus `DeviceAugment` (per-sample, seeded per item: the views replay
exactly); no worker processes, no host copies.

Decoding: training images are resized (shorter side, bicubic, as PIL) and centre-cropped to
`img_size`; validation images get the evaluation transform's resize and crop. For data stored
at the training size (CIFAR-10 at 32 px) both are the identity, and the device pipeline sees
exactly the pixels the worker pipeline sees.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import safetensors.torch
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T
from tqdm.auto import tqdm

from ..checkpoint import atomic_write
from ..config import AugConfig, ConfigError, DataConfig
from .gpu_aug import (DeviceAugment, channel_stats, compile_augment, device_support,
                      item_seeds, normalize)
from .sampler import RepeatedAugSampler, ShardSampler
from .sources import DataError, TransformDataset

CACHE_FORMAT = 1
_INTERP = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


@dataclass
class Decision:
    """Whether a run's data goes on the device, and why (said in the run's log)."""
    on_device: bool
    reason: str
    device_type: str = "cpu"
    compiled: bool = False

    @property
    def views(self) -> str:
        """What produces the training views (part of a teacher store's fingerprint: the same
        seeds give other pixels on the worker loader, and float rounding differs by device and
        with a compiled augmentation)."""
        if not self.on_device:
            return "workers"
        return f"device:{self.device_type}" + ("+compiled" if self.compiled else "")


def device_memory(device: torch.device) -> int:
    """Bytes of memory on `device` (a GPU's total; a CPU's physical memory)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cache_bytes(data: DataConfig, n_train: int, n_val: int) -> int:
    return (n_train + n_val) * 3 * data.img_size ** 2


def decide(data: DataConfig, aug: AugConfig, n_train: int, n_val: int,
           device: torch.device) -> Decision:
    """Resolve `data.on_device` (auto, true, false) for this run and this device."""
    if data.on_device is False:
        return Decision(False, "data.on_device=false: worker loader")
    unsupported = device_support(aug)
    need, have = cache_bytes(data, n_train, n_val), device_memory(device)
    budget = data.device_share * have
    too_big = need > budget
    why = (f"{n_train + n_val} images at {data.img_size} px need {need / 2**30:.2f} GiB, more "
           f"than data.device_share={data.device_share} of the {device.type}'s "
           f"{have / 2**30:.0f} GiB")
    if data.on_device is True:
        if unsupported:
            raise ConfigError(f"data.on_device=true, but {unsupported}")
        if too_big:
            raise ConfigError(f"data.on_device=true, but {why}: raise data.device_share or set "
                              "data.on_device=auto to use the worker loader")
        return Decision(True, f"data on the {device.type}: decoded once, augmented there",
                        device.type, data.compile_augment)
    if unsupported:
        return Decision(False, f"worker loader: {unsupported}")
    if too_big:
        return Decision(False, f"worker loader ({why})")
    return Decision(True, f"data on the {device.type} ({need / 2**20:.0f} MiB): decoded once, "
                          "augmented there (data.on_device=auto; false for the worker loader)",
                    device.type, data.compile_augment)


# ---------------------------------------------------------------------------------------------
# the decoded cache

@dataclass
class Decoded:
    images: torch.Tensor        # uint8 [N, 3, S, S]
    targets: torch.Tensor       # int64 [N]
    skipped: list               # lines "file<TAB>error" of unreadable files (on_bad_image=skip)


def _files_digest(ds: TransformDataset) -> Optional[str]:
    """A digest of the split's files (path, size, mtime_ns, label), or None for in-memory
    sources (the digits, torchvision arrays), which are decoded in memory each run."""
    samples = getattr(ds.base, "samples", None)
    if not samples:
        return None
    h = hashlib.sha256()
    for i in ds.indices:
        path, label = samples[i]
        try:
            st = os.stat(path)
            h.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\t{label}\n".encode())
        except OSError:
            h.update(f"{path}\tmissing\n".encode())
    return h.hexdigest()


class _ToUint8:
    """PIL -> uint8 tensor [3, H, W] (a class, so worker processes can pickle it)."""

    def __init__(self, resize: T.Compose):
        self.resize = resize

    def __call__(self, img):
        arr = np.array(self.resize(img), dtype=np.uint8, copy=True)       # [H, W, 3]
        return torch.from_numpy(arr).permute(2, 0, 1)


def decode_transform(size: int, aug: AugConfig, split: str) -> T.Compose:
    resize = size if split == "train" else int(round(size / aug.eval_crop_pct))
    return T.Compose([T.Resize(resize, interpolation=_INTERP.get(aug.interpolation,
                                                                  T.InterpolationMode.BICUBIC)),
                      T.CenterCrop(size)])


def decode(ds: TransformDataset, size: int, aug: AugConfig, split: str, workers: int = 0,
           progress: bool = True, skip_log: Optional[str] = None) -> Decoded:
    """Decode every image of `ds` to uint8 [N, 3, size, size] (with a progress bar)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = skip_log or str(Path(tmp) / "skipped.txt")
        view = ds.with_transform(_ToUint8(decode_transform(size, aug, split)), skip_log=log)
        images = torch.empty(len(ds), 3, size, size, dtype=torch.uint8)
        loader = DataLoader(view, batch_size=256, num_workers=workers, shuffle=False)
        at = 0
        for x, _ in tqdm(loader, desc=f"decoding {split} images", disable=not progress,
                         leave=False, dynamic_ncols=True):
            images[at:at + len(x)] = x
            at += len(x)
        skipped = Path(log).read_text().splitlines() if Path(log).is_file() else []
    return Decoded(images, torch.tensor(ds.targets, dtype=torch.int64), skipped)


def cached_decode(ds: TransformDataset, size: int, aug: AugConfig, split: str,
                  cache_dir: Union[str, Path], workers: int = 0, progress: bool = True,
                  log: Callable[..., None] = print) -> Decoded:
    """`decode`, through the on-disk cache for file-backed splits: read when the digest of the
    files and the decode size matches, else decoded and written (atomically; older caches of
    the same split are removed)."""
    digest = _files_digest(ds)
    if digest is None:  # in memory already: decoding is quick, in this process
        return decode(ds, size, aug, split, 0, progress)
    spec = f"{CACHE_FORMAT}/{split}/{size}/{aug.interpolation}/{aug.eval_crop_pct}/" \
           f"{ds.on_bad_image}"
    key = hashlib.sha256(f"{digest}/{spec}".encode()).hexdigest()[:20]
    root = Path(ds.describe(0)).parent.parent
    slug = f"{root.parent.name}-{root.name}-{split}-{size}px"
    where = Path(cache_dir).expanduser()
    path = where / f"{slug}-{key}.safetensors"
    if path.is_file():
        try:
            tensors = safetensors.torch.load_file(str(path))
            meta = json.loads(safetensors.safe_open(str(path), "pt").metadata()["deitkit"])
            if tensors["images"].shape == (len(ds), 3, size, size):
                return Decoded(tensors["images"], tensors["targets"], meta["skipped"])
        except Exception as e:  # a torn or foreign file: decode again, say so
            log(f"decoded cache '{path}' is unreadable ({type(e).__name__}: {e}); rebuilding")
    stale = sorted(where.glob(f"{slug}-*.safetensors")) if where.is_dir() else []
    log(f"decoding {len(ds)} {split} images into the cache '{path}' (once; rebuilt when the "
        "files change)" + (f"; replacing {len(stale)} older cache(s)" if stale else ""))
    out = decode(ds, size, aug, split, workers, progress)
    meta = {"deitkit": json.dumps({"format": CACHE_FORMAT, "spec": spec, "skipped": out.skipped,
                                   "files": len(ds)})}
    blob = safetensors.torch.save({"images": out.images.contiguous(),
                                   "targets": out.targets.contiguous()}, metadata=meta)
    atomic_write(path, lambda f: f.write(blob))
    for old in stale:
        if old != path:
            old.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------------------------
# loaders that yield batches already on the device

class DeviceTrainLoader:
    """Training batches (normalised float [B, 3, S, S], labels [B]) on the device: a gather
    from the cache by the sampler's order, then `DeviceAugment` seeded per item."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor,
                 sampler: RepeatedAugSampler, batch_size: int, augment: DeviceAugment,
                 seed: int):
        self.images, self.targets, self.sampler = images, targets, sampler
        self.batch_size, self.augment, self.seed = batch_size, augment, seed

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # drop_last, as the worker loader

    def __iter__(self):
        idx, pos = self.sampler.epoch_order()
        idx, pos = idx.to(self.images.device), pos.to(self.images.device)
        seeds = item_seeds(self.seed, self.sampler.epoch, pos)
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            i = idx[sl]
            yield self.augment(self.images[i], seeds[sl]), self.targets[i]


class DeviceEvalLoader:
    """Evaluation batches of cached images (normalised, no augmentation), in `indices` order."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, indices, batch_size: int,
                 mean, std):
        self.images, self.targets = images, targets
        self.indices = torch.as_tensor(list(indices), dtype=torch.long, device=images.device)
        self.batch_size = batch_size
        self.mean, self.std = channel_stats(mean, std, images.device)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for b in range(len(self)):
            i = self.indices[b * self.batch_size:(b + 1) * self.batch_size]
            yield normalize(self.images[i], self.mean, self.std), self.targets[i]


def device_loaders(*, data: DataConfig, aug: AugConfig, train: TransformDataset,
                   val: TransformDataset, device: torch.device, sampler: RepeatedAugSampler,
                   val_indices, seed: int, progress: bool = True,
                   skip_log: Optional[Path] = None, log: Callable[..., None] = print):
    """(training loader, evaluation loader), both yielding batches on `device`."""
    size = data.img_size
    if train.on_bad_image != data.on_bad_image:
        train = train.with_transform(None, on_bad_image=data.on_bad_image)
        val = val.with_transform(None, on_bad_image=data.on_bad_image)
    tr = cached_decode(train, size, aug, "train", data.cache_dir, data.num_workers, progress,
                       log)
    va = cached_decode(val, size, aug, "val", data.cache_dir, data.num_workers, progress, log)
    skipped = tr.skipped + va.skipped
    if skip_log is not None and skipped:
        with open(skip_log, "a") as f:
            f.write("".join(line + "\n" for line in skipped))
    if len(tr.images) != len(train):
        raise DataError(f"decoded {len(tr.images)} training images, expected {len(train)}")
    images, targets = tr.images.to(device), tr.targets.to(device)
    augment = DeviceAugment(aug, size, data.mean, data.std)
    if data.compile_augment:
        augment = compile_augment(augment, device)
    train_loader = DeviceTrainLoader(images, targets, sampler, data.batch_size, augment, seed)
    val_loader = DeviceEvalLoader(va.images.to(device), va.targets.to(device), val_indices,
                                  data.eval_batch_size, data.mean, data.std)
    return train_loader, val_loader


def device_subset_loader(train_loader: DeviceTrainLoader, keep, data: DataConfig,
                         shard: ShardSampler) -> DeviceEvalLoader:
    """The clean (un-augmented) view of training items `keep`, sharded like evaluation."""
    keep = list(keep)
    return DeviceEvalLoader(train_loader.images, train_loader.targets,
                            [keep[i] for i in shard], data.eval_batch_size, data.mean, data.std)
