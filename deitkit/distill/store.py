"""Stored teacher outputs: run the teacher once, train many students without it.

`record_store` walks every epoch of a run's training stream exactly as `fit` would show it to
the student: the same sampler order, the same per-item augmentation seeds (see
`data.sampler`), the same per-batch Mixup/CutMix seed (`engine.batch_seed`). For each batch it
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

With K = number of classes the stored distribution is the teacher's softmax, so the targets
are exact (float32) and a stored-output run matches the online-teacher run to float rounding
(tested). With K < C the other classes share the remaining mass equally (TinyViT's rule).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_write_text
from ..config import ConfigError, TrainConfig, to_dict

STORE_FORMAT = 1
DTYPES = {"float16": np.float16, "float32": np.float32}


class StoreError(ConfigError):
    """A teacher-output store is missing, incomplete, or was recorded for another run."""


def teacher_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names and raw bytes), the teacher's identity."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def data_digest(bundle) -> str:
    """sha256 of the training split's class list, indices and labels (and the val size)."""
    h = hashlib.sha256(json.dumps([bundle.name, list(bundle.classes), len(bundle.val)]).encode())
    h.update(np.asarray(bundle.train.indices, dtype=np.int64).tobytes())
    h.update(np.asarray(bundle.train.targets, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def fingerprint(cfg: TrainConfig, bundle, world: int, teacher: Optional[str]) -> dict:
    """Everything that decides which views a run shows, plus the teacher that labelled them."""
    return {"dataset": bundle.name, "data_digest": data_digest(bundle),
            "train_images": len(bundle.train), "num_classes": bundle.num_classes,
            "train_fraction": cfg.data.train_fraction, "fraction_seed": cfg.data.fraction_seed,
            "img_size": cfg.data.img_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
            "batch_size": cfg.data.batch_size, "world_size": world, "seed": cfg.seed,
            "aug": to_dict(cfg.aug), "teacher_digest": teacher}


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

    def __init__(self, path: str | Path, wanted: dict, epochs: int, steps: int, rank: int = 0):
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
        if self.meta["steps"] != steps:
            raise StoreError(f"teacher store '{self.root}' has {self.meta['steps']} steps per "
                             f"epoch, this run has {steps}")
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

    def logits(self, epoch: int, step: int, device: torch.device) -> torch.Tensor:
        """[B, C] teacher log-probabilities (usable wherever teacher logits are)."""
        self._load(epoch)
        values = torch.from_numpy(self._data["values"][step].astype(np.float32))
        indices = torch.from_numpy(self._data["indices"][step].astype(np.int64))
        out = reconstruct_log_probs(values, indices, self.num_classes)
        if torch.device(device).type == "cuda":  # pinned: the copy does not wait for the GPU
            out = out.pin_memory()
        return out.to(device, non_blocking=True)


def open_store(cfg: TrainConfig, bundle, world: int, rank: int, steps: int,
               teacher_id: Optional[str]) -> TeacherStore:
    return TeacherStore(cfg.distill.store, fingerprint(cfg, bundle, world, teacher_id),
                        cfg.epochs, steps, rank)


def record_store(cfg: TrainConfig, out: str | Path, topk: Optional[int] = None,
                 dtype: str = "float32", log=print) -> dict:
    """Record the teacher's top-K outputs for every view of `cfg`'s run into folder `out`.

    The teacher is `cfg.teacher` (given, or trained into OUT/teacher as `deitkit train` would).
    An interrupted recording resumes: finished epoch files are kept. Returns meta.json's dict.
    """
    from ..data import build_mixer, load_dataset
    from ..distributed import barrier, init_distributed
    from ..engine import autocast, batch_seed, mix_batch, view_checksum
    from ..train import build_loaders, resolve_amp, resolve_device, resolve_teacher

    if dtype not in DTYPES:
        raise ConfigError(f"store dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    t0 = time.perf_counter()
    d = init_distributed(cfg.device)
    device = resolve_device(cfg.device)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    amp_dtype = resolve_amp(cfg.amp, device)
    root = Path(out).expanduser()
    if d.is_main:
        root.mkdir(parents=True, exist_ok=True)
    bundle = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download,
                          cfg.data.train_fraction, cfg.data.fraction_seed,
                          digits_size=cfg.data.img_size)
    k = bundle.num_classes if topk is None else topk
    if not 1 <= k <= bundle.num_classes:
        raise ConfigError(f"topk must be in 1..{bundle.num_classes} (the class count), got {k}")
    loader, _ = build_loaders(cfg, bundle, device, dist_info=d)
    teacher = resolve_teacher(cfg, bundle, root, log=log if d.is_main else (lambda *a: None))
    if teacher is None:
        raise ConfigError("recording a teacher store needs a teacher: give --teacher, or let "
                          "deitkit train one (leave teacher.name empty)")
    teacher.to(device)
    digest = teacher.digest
    teacher.optimize(device, amp_dtype)
    mixer = build_mixer(cfg.aug, bundle.num_classes)
    meta = {"format": STORE_FORMAT, "fingerprint": fingerprint(cfg, bundle, d.world, digest),
            "teacher": teacher.name, "topk": k, "dtype": dtype, "epochs": cfg.epochs,
            "steps": len(loader), "amp": str(amp_dtype), "complete": False,
            "config": to_dict(cfg)}
    meta_path = root / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        check_fingerprint(old["fingerprint"], meta["fingerprint"], root)
        if (old["topk"], old["dtype"]) != (k, dtype):
            raise StoreError(f"'{root}' holds a store with topk={old['topk']}, dtype="
                             f"{old['dtype']}; use another folder for topk={k}, dtype={dtype}")
    if d.is_main:
        atomic_write_text(json.dumps(meta, indent=1) + "\n", meta_path)
    np_dtype = DTYPES[dtype]
    idx_dtype = np.int16 if bundle.num_classes < 2**15 else np.int32
    bar = tqdm(range(cfg.epochs), desc="teacher store", disable=not (cfg.progress and d.is_main))
    for epoch in bar:
        f = _epoch_file(root, epoch, d.rank)
        if f.is_file():
            continue  # recorded before an interruption (written atomically, so complete)
        loader.sampler.set_epoch(epoch)
        steps = len(loader)
        values, indices = None, None
        checksums = np.zeros(steps, dtype=np.uint32)
        for step, (images, labels) in enumerate(loader):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            images, _ = mix_batch(mixer, images, labels, batch_seed(cfg.seed, epoch, d.rank, step))
            checksums[step] = view_checksum(images)
            with autocast(device, amp_dtype):
                probs = teacher(images).float().softmax(-1)                # [B, C]
            top = probs.topk(k, dim=-1)                                     # [B, K] each
            if values is None:
                values = np.zeros((steps, len(images), k), dtype=np_dtype)
                indices = np.zeros((steps, len(images), k), dtype=idx_dtype)
            values[step] = top.values.cpu().numpy().astype(np_dtype)
            indices[step] = top.indices.cpu().numpy().astype(idx_dtype)
        tmp = f.with_name(f.name + ".tmp.npz")
        np.savez(tmp, values=values, indices=indices, checksums=checksums)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, f)
    barrier()
    meta["complete"] = True
    meta["wall_seconds"] = time.perf_counter() - t0
    if d.is_main:
        atomic_write_text(json.dumps(meta, indent=1) + "\n", meta_path)
        size = sum(p.stat().st_size for p in root.glob("epoch-*.npz"))
        log(f"teacher store {root}: {cfg.epochs} epochs x {meta['steps']} steps, top-{k} "
            f"{dtype}, {size / 1e6:.1f} MB, {meta['wall_seconds']:.0f} s")
    return meta
