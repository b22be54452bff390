"""Stored teacher outputs: run the teacher once, train many students without it.

`pipeline.record_store` walks every epoch of a run's training stream exactly as `fit` shows it to
the student: both iterate `data.student_views` (the same sampler order, the same per-item
augmentation seeds, see `data.sampler`, and the same per-batch Mixup/CutMix seed,
`data.batch_seed`). For each batch it
keeps the teacher's top-K probabilities (values and class indices) and a crc32 checksum of the
mixed images. A later run with `distill.store=FOLDER` replays the same views, reads the targets
instead of running the teacher, and checks the checksums of the first batches of each epoch.

Why written here: TinyViT's "fast distillation" stores top-K logits plus an augmentation seed
per sample, but it is tied to its own augmentation code and Swin models; timm and the official
DeiT code have no stored-output path.

Layout of a store folder:

    meta.json                 fingerprint of the run it serves, K, dtype, epochs, steps
    epoch-0000-rank0.npz      values [steps, B, K], indices [steps, B, K], checksums [steps]
    teacher/                  the teacher's run folder, when it was trained for this store
                              (the same place as in a run folder: `RunDir(store).teacher`)

With K = number of classes the stored distribution is the teacher's softmax, so the targets
are exact (float32) and a stored-output run matches the online-teacher run to float rounding
(tested). With K < C the other classes share the remaining mass equally (TinyViT's rule).
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..checkpoint import atomic_write, atomic_write_text
from ..config import ConfigError, TrainConfig, to_dict

STORE_FORMAT = 1
DTYPES = {"float16": np.float16, "float32": np.float32}


class StoreError(ConfigError):
    """A teacher-output store is missing, incomplete, or was recorded for another run."""


def data_digest(bundle) -> str:
    """sha256 of the training split's class list, indices and labels (and the val size)."""
    h = hashlib.sha256(json.dumps([bundle.name, list(bundle.classes), len(bundle.val)]).encode())
    h.update(np.asarray(bundle.train.indices, dtype=np.int64).tobytes())
    h.update(np.asarray(bundle.train.targets, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def fingerprint(cfg: TrainConfig, bundle, world: int, teacher: Optional[str],
                views: str = "workers") -> dict:
    """Everything that decides which views a run shows, plus the teacher that labelled them.
    views: what made them (`workers`, or `device:<type>` for the device pipeline)."""
    return {"dataset": bundle.name, "data_digest": data_digest(bundle),
            "train_images": len(bundle.train), "num_classes": bundle.num_classes,
            "train_fraction": cfg.data.train_fraction, "fraction_seed": cfg.data.fraction_seed,
            "img_size": cfg.data.img_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
            "batch_size": cfg.data.batch_size, "world_size": world, "seed": cfg.seed,
            "aug": to_dict(cfg.aug), "views": views, "teacher_digest": teacher,
            **({"teacher_img_size": cfg.teacher.img_size} if cfg.teacher.img_size else {})}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_fingerprint(stored: dict, wanted: dict, path: Path) -> None:
    a, b = _flat(stored), _flat(wanted)
    diffs = [f"{k}: store {a.get(k)!r}, this run {b.get(k)!r}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k) and not (k == "teacher_digest" and b.get(k) is None)]
    if diffs:
        raise StoreError(f"teacher store '{path}' was recorded for a different run; "
                         + "; ".join(diffs) + ". Record a store for this run with `deitkit store` "
                         "(same recipe, data, seed and teacher), or drop distill.store")


def _epoch_file(root: Path, epoch: int, rank: int) -> Path:
    return root / f"epoch-{epoch:04d}-rank{rank}.npz"


def reconstruct_log_probs(values: torch.Tensor, indices: torch.Tensor,
                          num_classes: int) -> torch.Tensor:
    """[B, K] top-K probabilities and class indices -> [B, C] log-probabilities.

    The classes outside the top K share the remaining mass equally; with K = C the result is
    log(softmax(teacher logits)), which gives the same softmax at any temperature and the same
    argmax as the logits themselves."""
    values = values.float().clamp_min(1e-30)
    k = values.shape[-1]
    if k == num_classes:
        rest = values.new_full((values.shape[0], num_classes), 1e-30)
    else:
        left = (1.0 - values.sum(-1, keepdim=True)).clamp_min(1e-30) / (num_classes - k)
        rest = left.expand(-1, num_classes).clone()                     # [B, C]
    return rest.scatter_(1, indices.long(), values).log()


class TeacherStore:
    """Read side: the targets of (epoch, step) for this process's rank."""

    def __init__(self, path: str | Path, wanted: dict, epochs: int, rank: int = 0):
        self.root = Path(path).expanduser()
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise StoreError(f"'{self.root}' is not a teacher store (no meta.json); record one "
                             "with `deitkit store`")
        try:
            self.meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise StoreError(f"'{meta_path}' is not valid JSON ({e})") from None
        if self.meta.get("format") != STORE_FORMAT:
            raise StoreError(f"'{self.root}': store format {self.meta.get('format')!r}, "
                             f"this deitkit reads format {STORE_FORMAT}")
        check_fingerprint(self.meta["fingerprint"], wanted, self.root)
        if not self.meta.get("complete"):
            raise StoreError(f"teacher store '{self.root}' is incomplete (recording was "
                             "interrupted): run the same `deitkit store` command again to finish")
        if self.meta["epochs"] < epochs:
            raise StoreError(f"teacher store '{self.root}' holds {self.meta['epochs']} epochs, "
                             f"this run needs {epochs}")
        self.rank, self.num_classes = rank, self.meta["fingerprint"]["num_classes"]
        self.topk = self.meta["topk"]
        self._epoch, self._data = None, None

    def _load(self, epoch: int) -> None:
        if self._epoch == epoch:
            return
        f = _epoch_file(self.root, epoch, self.rank)
        try:
            with np.load(f) as z:
                self._data = {k: z[k] for k in ("values", "indices", "checksums")}
        except (OSError, ValueError, KeyError) as e:
            raise StoreError(f"cannot read '{f}': {type(e).__name__}: {e}. Re-record the store "
                             "(delete that file and run `deitkit store` again)") from None
        self._epoch = epoch

    def verify(self, epoch: int, step: int, checksum: int) -> None:
        self._load(epoch)
        want = int(self._data["checksums"][step])
        if want != checksum:
            raise StoreError(
                f"teacher store '{self.root}': the replayed view of epoch {epoch + 1}, step "
                f"{step + 1} differs from the recorded one (checksum {checksum:08x} vs "
                f"{want:08x}). The images, the augmentation code or a library version changed "
                "since recording; record the store again")

    def check_steps(self, steps: int) -> None:
        if self.meta["steps"] != steps:
            raise StoreError(f"teacher store '{self.root}' has {self.meta['steps']} steps per "
                             f"epoch, this run has {steps}")

    def log_probs(self, epoch: int, step: int, device: torch.device) -> torch.Tensor:
        """[B, C] teacher log-probabilities (usable wherever teacher logits are: the same
        softmax at any temperature and the same argmax)."""
        self._load(epoch)
        values = torch.from_numpy(self._data["values"][step].astype(np.float32))
        indices = torch.from_numpy(self._data["indices"][step].astype(np.int64))
        out = reconstruct_log_probs(values, indices, self.num_classes)
        if torch.device(device).type == "cuda":  # pinned: the copy does not wait for the GPU
            out = out.pin_memory()
        return out.to(device, non_blocking=True)


def open_store(cfg: TrainConfig, bundle, world: int, rank: int,
               teacher_id: Optional[str], views: str = "workers") -> TeacherStore:
    """The store `cfg.distill.store`, checked against the run `cfg` describes."""
    return TeacherStore(cfg.distill.store, fingerprint(cfg, bundle, world, teacher_id, views),
                        cfg.epochs, rank)


def epoch_file(root: str | Path, epoch: int, rank: int) -> Path:
    return _epoch_file(Path(root), epoch, rank)


def save_epoch(root: str | Path, epoch: int, rank: int, values: np.ndarray, indices: np.ndarray,
               checksums: np.ndarray) -> Path:
    """One epoch's targets of one rank: values/indices [steps, B, K], checksums [steps]."""
    return atomic_write(epoch_file(root, epoch, rank), lambda f: np.savez(
        f, values=values, indices=indices, checksums=checksums))


def write_meta(root: str | Path, meta: dict) -> None:
    atomic_write_text(json.dumps(meta, indent=1) + "\n", Path(root) / "meta.json")


def read_meta(root: str | Path) -> Optional[dict]:
    path = Path(root) / "meta.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise StoreError(f"'{path}' is not valid JSON ({e})") from None


def view_checksum(images: torch.Tensor) -> int:
    """crc32 of a batch's bytes: recorded with stored teacher outputs, checked on replay."""
    return zlib.crc32(images.detach().cpu().contiguous().numpy().tobytes())
