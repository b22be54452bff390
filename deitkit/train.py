"""Wiring of one run: data, models, optimiser, schedule, EMA, checkpoints, metrics.

`train(cfg)` trains a DeiT student (first training a CNN teacher when distillation needs one
and none is given); `train_teacher(cfg)` trains a CNN on its own. Both write a run folder:

    config.yaml          the resolved configuration
    metrics.jsonl        one JSON object per epoch
    checkpoint-last.pt   after every epoch (atomic)
    checkpoint-best.pt   best fused top-1 so far (atomic)
    summary.json         final metrics and wall time
    teacher/             the CNN teacher's own run folder, when it was trained here
"""
from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import atomic_save, atomic_write_text, load_checkpoint
from .config import ConfigError, TrainConfig, build_config, dump_yaml, to_dict
from .data import (DatasetBundle, RepeatedAugSampler, ShardSampler, TransformDataset,
                   build_eval_transform,
                   build_mixer,
                   build_train_transform, load_dataset)
from .distill import DistillationLoss
from .distill.store import open_store
from .distributed import DistInfo, barrier, gather_objects, init_distributed
from .engine import evaluate, train_one_epoch
from .models import (Teacher, create_cnn, create_student, create_teacher, has_dist_token,
                     tune_attention)
from .models.teacher import load_weights

# timm names that map to a torch optimiser with a fused implementation (CPU and CUDA)
FUSED_OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "nesterov")

SUMMARY_KEYS = ("cls_top1", "cls_top5", "dist_top1", "dist_top5", "fused_top1", "fused_top5",
                "head_agreement", "token_cosine", "teacher_top1", "teacher_top5",
                "student_teacher_agreement", "train_clean_top1")


# ---------------------------------------------------------------------------------------------
# small helpers

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but no CUDA GPU is available")
    return dev


def cpu_has_native_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32 (None)."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp=fp16 needs a GPU; use amp=bf16 or amp=off on a CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_out(cfg: TrainConfig, role: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.recipe.name or role}-{stamp}"


def global_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The DeiT linear scaling rule, unless an absolute lr is given."""
    if cfg.optim.lr is not None:
        return cfg.optim.lr
    return cfg.optim.base_lr * cfg.data.batch_size * world_size / cfg.optim.lr_batch_divisor


def build_loaders(cfg: TrainConfig, bundle: DatasetBundle, device: torch.device,
                  skip_log: Optional[Path] = None, dist_info: DistInfo = DistInfo()):
    """Training loader over `SampleKey`s (replayable augmentation), evaluation loader."""
    mean, std = cfg.data.mean, cfg.data.std
    train_ds = bundle.train.with_transform(
        build_train_transform(cfg.aug, cfg.data.img_size, mean, std), seed=cfg.seed,
        on_bad_image=cfg.data.on_bad_image, skip_log=str(skip_log) if skip_log else None)
    val_ds = bundle.val.with_transform(build_eval_transform(cfg.aug, cfg.data.img_size, mean, std),
                                       on_bad_image=cfg.data.on_bad_image,
                                       skip_log=str(skip_log) if skip_log else None)
    n = len(train_ds)
    # repeated_aug=1 is a plain seeded shuffle; the sampler depends on (seed, epoch) only
    sampler = RepeatedAugSampler(n, cfg.aug.repeated_aug, num_replicas=dist_info.world,
                                 rank=dist_info.rank, seed=cfg.seed)
    if cfg.data.batch_size > len(sampler):
        per = (f"; {len(sampler)} per process with {dist_info.world} processes"
               if dist_info.enabled else "")
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the training set "
                          f"({n} images{per}); lower data.batch_size")
    common = dict(num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                  persistent_workers=cfg.data.num_workers > 0,
                  # a generator of its own, so the loader never draws from the global stream
                  generator=torch.Generator().manual_seed(cfg.seed))
    train_loader = DataLoader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler,
                              drop_last=True, **common)
    val_loader = DataLoader(val_ds, batch_size=cfg.data.eval_batch_size,
                            sampler=ShardSampler(len(val_ds), dist_info.world, dist_info.rank),
                            **common)
    return train_loader, val_loader


def build_train_eval_loader(cfg: TrainConfig, bundle: DatasetBundle,
                            dist_info: DistInfo = DistInfo()):
    """A fixed, seeded subset of `cfg.eval_train_images` training images, un-augmented."""
    n = min(cfg.eval_train_images, len(bundle.train))
    keep = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(1234))[:n]
    sub = TransformDataset(bundle.train.base, [bundle.train.indices[i] for i in keep.tolist()])
    ds = sub.with_transform(build_eval_transform(cfg.aug, cfg.data.img_size, cfg.data.mean,
                                                 cfg.data.std),
                            on_bad_image=cfg.data.on_bad_image)
    return DataLoader(ds, batch_size=cfg.data.eval_batch_size,
                      sampler=ShardSampler(len(ds), dist_info.world, dist_info.rank),
                      num_workers=cfg.data.num_workers)


def _meta(cfg: TrainConfig, role: str, bundle: DatasetBundle) -> dict:
    return {"role": role, "model_name": cfg.model.name, "num_classes": bundle.num_classes,
            "classes": list(bundle.classes), "img_size": cfg.data.img_size,
            "patch_size": cfg.model.patch_size, "small_stem": cfg.model.small_stem,
            "model_overrides": dict(cfg.model.overrides), "mean": list(cfg.data.mean),
            "std": list(cfg.data.std), "dataset": bundle.name, "fusion": cfg.distill.fusion,
            "deitkit_format": 1}


def build_student(cfg: TrainConfig, num_classes: int):
    return create_student(cfg.model.name, num_classes=num_classes, img_size=cfg.data.img_size,
                          patch_size=cfg.model.patch_size, drop_path_rate=cfg.model.drop_path,
                          **cfg.model.overrides)


def build_optimizer(cfg: TrainConfig, model, lr: float):
    """timm's optimiser factory; the fused single-kernel step where torch has one."""
    kwargs = dict(opt=cfg.optim.opt, lr=lr, weight_decay=cfg.optim.weight_decay,
                  momentum=cfg.optim.momentum, filter_bias_and_bn=True)
    if cfg.optim.fused and cfg.optim.opt.lower() in FUSED_OPTIMIZERS:
        try:
            return create_optimizer_v2(model, fused=True, **kwargs)
        except (TypeError, RuntimeError, ValueError):
            pass  # an older torch or an unsupported device: the foreach step below
    try:
        return create_optimizer_v2(model, foreach=True, **kwargs)
    except (TypeError, ValueError):
        return create_optimizer_v2(model, **kwargs)


def check_distillable(cfg: TrainConfig, model) -> None:
    if cfg.distill.kind != "none" and cfg.distill.heads != "cls" and not has_dist_token(model):
        raise ConfigError(
            f"distill.kind={cfg.distill.kind} needs a student with a distillation token, but "
            f"'{cfg.model.name}' has none: use '{cfg.model.name.replace('_patch', '_distilled_patch')}'"
            " or set distill.kind=none")


# ---------------------------------------------------------------------------------------------
# teacher

def teacher_config_for(cfg: TrainConfig, out: Path) -> TrainConfig:
    """The CNN-teacher run that a student run needs: same data, split and seed."""
    tcfg = build_config(cfg.teacher.train_recipe, overrides=list(cfg.teacher.train_overrides))
    for key in ("name", "root", "download", "img_size", "train_fraction", "fraction_seed",
                "num_workers", "mean", "std"):
        setattr(tcfg.data, key, copy.deepcopy(getattr(cfg.data, key)))
    tcfg.model.name = cfg.teacher.train_model
    if cfg.teacher.train_epochs is not None:
        tcfg.epochs = cfg.teacher.train_epochs
    tcfg.seed, tcfg.amp, tcfg.device, tcfg.progress = cfg.seed, cfg.amp, cfg.device, cfg.progress
    tcfg.out = str(out)
    return tcfg


def resolve_teacher(cfg: TrainConfig, bundle: DatasetBundle, out: Path,
                    log=print) -> Optional[Teacher]:
    """The frozen teacher for a student run, or None when the objective needs none."""
    if cfg.distill.kind == "none" and cfg.teacher.name is None:
        return None
    if cfg.teacher.name is not None:
        teacher = create_teacher(cfg.teacher.name, num_classes=bundle.num_classes,
                                 weights=cfg.teacher.weights, pretrained=cfg.teacher.pretrained)
    else:
        tdir = out / "teacher"
        if (tdir / "summary.json").is_file() and (tdir / "checkpoint-best.pt").is_file():
            log(f"reusing the teacher trained earlier in {tdir}")
        else:
            tcfg = teacher_config_for(cfg, tdir)
            resume = (tdir / "checkpoint-last.pt").is_file()
            log(f"no teacher given: {'resuming' if resume else 'training'} a {tcfg.model.name} "
                f"teacher for {tcfg.epochs} epochs (recipe {cfg.teacher.train_recipe}) in {tdir}")
            fit(tcfg, "teacher", bundle=bundle, log=log, resume=resume)
        teacher = create_teacher(str(tdir), num_classes=bundle.num_classes)
    teacher.set_student_norm(cfg.data.mean, cfg.data.std)
    return teacher


def _store_teacher(cfg: TrainConfig, bundle: DatasetBundle, out: Path, log) -> Optional[Teacher]:
    """With distill.store: the named teacher, else the one trained for the store, else None."""
    if cfg.teacher.name:
        return resolve_teacher(cfg, bundle, out, log=log)
    tdir = Path(cfg.distill.store).expanduser() / "teacher"
    if (tdir / "checkpoint-best.pt").is_file():
        teacher = create_teacher(str(tdir), num_classes=bundle.num_classes)
        teacher.set_student_norm(cfg.data.mean, cfg.data.std)
        return teacher
    return None


# ---------------------------------------------------------------------------------------------
# resume support: every random stream, as plain tensors (loadable with weights_only=True)

def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "python": [int(py[0]), torch.tensor(py[1], dtype=torch.int64), py[2]]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))


# keys that may change on resume without changing the run's results
RESUME_FREE_KEYS = ("out", "progress", "device", "data.num_workers", "data.root",
                    "data.eval_batch_size", "distill.store_verify_batches")


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k != "overrides":
            keys += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def run_changing_keys(stored: dict, now: dict) -> list[str]:
    """Dotted keys that make config `now` a different run from `stored` (those in
    RESUME_FREE_KEYS and the recipe's descriptive fields do not)."""
    return [k for k in config_diff(stored, now)
            if k not in RESUME_FREE_KEYS and not k.startswith("recipe.")]


def check_resume_config(stored: dict, cfg: TrainConfig, path: Path, force: bool) -> None:
    changed = run_changing_keys(stored, to_dict(cfg))
    if changed and not force:
        raise ConfigError(
            f"resuming '{path}' with a different configuration: {', '.join(changed)} differ from "
            "the stored run. Resume without those changes, or pass --force to accept them "
            "(the result is then no longer the same run)")


# ---------------------------------------------------------------------------------------------
# the run

def _read_metrics(path: Path, upto_epoch: int) -> list[str]:
    """Metric lines of epochs <= upto_epoch (a torn or later line from a crash is dropped)."""
    keep = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["epoch"] <= upto_epoch:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue
    return keep


def fit(cfg: TrainConfig, role: str, bundle: Optional[DatasetBundle] = None, log=print,
        resume: bool = False, force: bool = False) -> dict:
    """Train one model (role 'student' or 'teacher') and write its run folder.

    resume: continue `cfg.out` from its checkpoint-last.pt, exactly: weights, optimiser,
    schedule, EMA, AMP scaler, every random stream and the best-so-far; refuses a changed
    configuration unless `force`.
    """
    t_start = time.perf_counter()
    d = init_distributed(cfg.device)
    device = resolve_device(cfg.device)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    if not d.is_main:  # rank 0 alone prints and writes
        log = _quiet
        cfg = copy.deepcopy(cfg)
        cfg.progress = False
    amp_dtype = resolve_amp(cfg.amp, device)
    if not cfg.out and d.enabled:
        raise ConfigError("give --out when running under torchrun (every process must agree "
                          "on the run folder)")
    out = Path(cfg.out) if cfg.out else default_out(cfg, role)
    cfg.out = str(out)
    state = None
    if resume:
        state = load_checkpoint(out / "checkpoint-last.pt")
        check_resume_config(state["config"], cfg, out / "checkpoint-last.pt", force)
        if state["meta"].get("role") != role:
            raise ConfigError(f"'{out}' is a {state['meta'].get('role')} run, not a {role} run")
        if len(state["rng"]) != d.world and not force:
            raise ConfigError(f"'{out}' was run by {len(state['rng'])} process(es), this resume "
                              f"has {d.world}: use the same count, or --force (inexact)")
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)

    if bundle is None:
        bundle = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download,
                              cfg.data.train_fraction, cfg.data.fraction_seed,
                              digits_size=cfg.data.img_size)
    skip_log = out / "skipped_images.txt"
    train_loader, val_loader = build_loaders(cfg, bundle, device, skip_log, d)
    train_eval_loader = (build_train_eval_loader(cfg, bundle, d) if cfg.eval_train_images > 0
                         else None)

    if role == "student":
        model = build_student(cfg, bundle.num_classes)
        check_distillable(cfg, model)
        store = None
        if cfg.distill.store and cfg.distill.kind != "none":
            # targets come from the store; a named teacher is loaded only to check that it is
            # the one that was recorded and to report its accuracy
            teacher = _store_teacher(cfg, bundle, out, log)
            store = open_store(cfg, bundle, d.world, d.rank, len(train_loader),
                               teacher.digest if teacher is not None else None)
            log(f"teacher outputs from the store {cfg.distill.store} (top-{store.topk} of "
                f"{store.num_classes}, teacher {store.meta.get('teacher')})")
        else:
            teacher = resolve_teacher(cfg, bundle, out, log=log)
        # same student stream whether or not a teacher was trained; one stream per rank
        seed_everything(cfg.seed + d.rank)
        criterion = DistillationLoss(cfg.distill.kind, cfg.distill.alpha, cfg.distill.tau,
                                     cfg.distill.kl_norm, cfg.distill.heads, cfg.aug.smoothing)
    else:
        model = create_cnn(cfg.model.name, bundle.num_classes, small_stem=cfg.model.small_stem,
                           **cfg.model.overrides)
        teacher, store = None, None
        criterion = DistillationLoss("none", heads="cls", smoothing=cfg.aug.smoothing)
    model.to(device)
    tune_attention(model, device, amp_dtype)
    if teacher is not None:
        teacher.to(device)
        if cfg.teacher.optimize:
            log(f"teacher forward: {teacher.optimize(device, amp_dtype)}")
    # only the trained model is wrapped in DDP, never the teacher
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                  else None) if d.enabled else model

    if cfg.compile:
        net = torch.compile(net)
    lr = global_lr(cfg, d.world)
    optimizer = build_optimizer(cfg, model, lr)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.optim.sched, num_epochs=cfg.epochs,
        warmup_epochs=min(cfg.optim.warmup_epochs, cfg.epochs - 1), warmup_lr=cfg.optim.warmup_lr,
        min_lr=cfg.optim.min_lr, step_on_epochs=False, updates_per_epoch=len(train_loader))
    ema = ModelEmaV3(model, decay=cfg.ema.decay) if cfg.ema.enabled else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    mixer = build_mixer(cfg.aug, bundle.num_classes)
    meta = _meta(cfg, role, bundle)

    metrics_path = out / "metrics.jsonl"
    best, best_epoch, start_epoch, last_eval, record = -1.0, -1, 0, {}, {}
    if state is not None:
        load_weights(model, state["model"], out / "checkpoint-last.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        best, best_epoch, start_epoch = state["best"], state["best_epoch"], state["epoch"]
        record = state["metrics"]
        last_eval = {k: v for k, v in record.items() if k in SUMMARY_KEYS or k == "eval_images"}
        if d.is_main:
            lines = _read_metrics(metrics_path, start_epoch)
            atomic_write_text("".join(line + "\n" for line in lines), metrics_path)
        set_rng_state(state["rng"][d.rank % len(state["rng"])])
        log(f"resuming {out} after epoch {start_epoch} of {cfg.epochs}")
    elif d.is_main:
        metrics_path.write_text("")
        if skip_log.exists():
            skip_log.unlink()
    if d.is_main:
        atomic_write_text(dump_yaml(cfg), out / "config.yaml")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{role} {cfg.model.name}: {n_params / 1e6:.2f} M parameters, {len(bundle.train)} train / "
        f"{len(bundle.val)} {bundle.val_split} images, {bundle.num_classes} classes, "
        f"{cfg.data.img_size} px, lr {lr:.2e}, amp {amp_dtype or 'off'}, device {device}"
        f"{f' x {d.world} processes' if d.enabled else ''}, run folder {out}")

    epochs = tqdm(range(start_epoch, cfg.epochs), desc=f"{role}", disable=not cfg.progress,
                  dynamic_ncols=True, initial=start_epoch, total=cfg.epochs)
    for epoch in epochs:
        train_loader.sampler.set_epoch(epoch)
        if teacher is not None:
            teacher.eval()
        stats = train_one_epoch(net, criterion, train_loader, optimizer, device, epoch,
                                scheduler=scheduler, mixer=mixer, teacher=teacher, ema=ema,
                                scaler=scaler, amp_dtype=amp_dtype, clip_grad=cfg.optim.clip_grad,
                                progress=cfg.progress, nonfinite=cfg.nonfinite,
                                max_skipped_steps=cfg.max_skipped_steps, seed=cfg.seed,
                                rank=d.rank, store=store,
                                store_verify_batches=cfg.distill.store_verify_batches)
        record = {"epoch": epoch + 1, **stats}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            last_eval = evaluate(model, val_loader, device, teacher, cfg.distill.fusion, amp_dtype)
            record.update(last_eval)
            if train_eval_loader is not None:
                clean = evaluate(model, train_eval_loader, device, None, cfg.distill.fusion,
                                 amp_dtype)
                record["train_clean_top1"] = clean["fused_top1"]
                last_eval["train_clean_top1"] = clean["fused_top1"]
            if ema is not None:
                ema_eval = evaluate(ema.module, val_loader, device, None, cfg.distill.fusion,
                                    amp_dtype)
                record["ema_fused_top1"] = ema_eval["fused_top1"]
        record["skipped_images"] = _count_lines(skip_log)
        improved = "fused_top1" in record and record["fused_top1"] > best
        if improved:
            best, best_epoch = record["fused_top1"], epoch + 1
        rngs = gather_objects(rng_state())  # every rank's streams, for an exact resume
        if not d.is_main:
            continue
        # order matters for crash safety: metrics line, then best, then last (the resume point)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if improved:
            atomic_save({"model": model.state_dict(), "meta": meta, "epoch": epoch + 1,
                         "config": to_dict(cfg), "metrics": record}, out / "checkpoint-best.pt")
        atomic_save({"model": model.state_dict(), "meta": meta, "epoch": epoch + 1,
                     "config": to_dict(cfg), "metrics": record,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "ema": ema.module.state_dict() if ema is not None else None,
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "best": best, "best_epoch": best_epoch, "rng": rngs},
                    out / "checkpoint-last.pt")
        epochs.set_postfix(loss=f"{stats['train_loss']:.3f}",
                           acc=f"{record.get('fused_top1', float('nan')):.3f}")
    epochs.close()

    summary = {k: last_eval.get(k) for k in SUMMARY_KEYS}
    summary.update({"role": role, "model": cfg.model.name, "dataset": bundle.name,
                    "num_classes": bundle.num_classes,
                    "epochs": cfg.epochs, "best_fused_top1": best, "best_epoch": best_epoch,
                    "train_images": len(bundle.train), "eval_images": last_eval.get("eval_images"),
                    "ema_fused_top1": record.get("ema_fused_top1"),
                    "skipped_images": _count_lines(skip_log),
                    "parameters": n_params, "wall_seconds": time.perf_counter() - t_start,
                    "run_dir": str(out)})
    if role == "teacher":  # a teacher's accuracy is its own
        summary["teacher_top1"] = summary["fused_top1"]
        summary["teacher_top5"] = summary["fused_top5"]
    if d.is_main:
        atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    barrier()  # no rank reads the run folder (e.g. a teacher) before rank 0 has written it
    return summary


def _quiet(*args, **kwargs) -> None:
    pass


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    return len({line.split("\t")[0] for line in path.read_text().splitlines() if line})


def train(cfg: TrainConfig, log=print, resume: bool = False, force: bool = False) -> dict:
    """Train a DeiT student (and, if needed, its CNN teacher first); return the summary."""
    t0 = time.perf_counter()
    summary = fit(cfg, "student", log=log, resume=resume, force=force)
    tsum = Path(summary["run_dir"]) / "teacher" / "summary.json"
    if tsum.is_file():
        summary["teacher_wall_seconds"] = json.loads(tsum.read_text())["wall_seconds"]
    summary["wall_seconds"] = time.perf_counter() - t0
    if init_distributed(cfg.device).is_main:
        atomic_write_text(json.dumps(summary, indent=2) + "\n",
                          Path(summary["run_dir"]) / "summary.json")
    return summary


def train_teacher(cfg: TrainConfig, bundle: Optional[DatasetBundle] = None, log=print,
                  resume: bool = False, force: bool = False) -> dict:
    """Train a CNN teacher on its own (the offline route to a teacher)."""
    return fit(cfg, "teacher", bundle=bundle, log=log, resume=resume, force=force)


def format_summary(summary: dict) -> str:
    """A small aligned table of the final metrics."""
    if summary.get("role") == "teacher":
        rows = [("top-1", "fused_top1"), ("top-5", "fused_top5"),
                ("best top-1", "best_fused_top1")]
    else:
        rows = [("class head top-1", "cls_top1"), ("distillation head top-1", "dist_top1"),
                ("fused top-1", "fused_top1"), ("fused top-5", "fused_top5"),
                ("head agreement", "head_agreement"), ("token cosine", "token_cosine"),
                ("teacher top-1", "teacher_top1"),
                ("student-teacher agreement", "student_teacher_agreement"),
                ("EMA fused top-1", "ema_fused_top1"), ("best fused top-1", "best_fused_top1")]
    lines = [f"{'metric':<28}{'value':>10}", "-" * 38]
    for label, key in rows:
        v = summary.get(key)
        if v is None:
            continue
        lines.append(f"{label:<28}{v * 100 if key != 'token_cosine' else v:>9.2f}"
                     f"{'%' if key != 'token_cosine' else ' '}")
    lines.append(f"{'wall time':<28}{summary['wall_seconds']:>9.1f}s")
    lines.append(f"run folder: {summary['run_dir']}")
    return "\n".join(lines)
