"""`fit`: train one model (a DeiT student or a CNN) and write its run folder.

The teacher, online or as stored outputs, is handed in by the caller (`pipeline`); `fit` never
gets or trains one. A run folder holds:

    config.yaml          the resolved configuration
    metrics.jsonl        one JSON object per epoch
    checkpoint-last.pt   after every epoch (atomic): the exact resume point
    checkpoint-best.pt   best fused top-1 so far (atomic)
    summary.json         final metrics and wall time
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .checkpoint import atomic_save, atomic_write_text, load_checkpoint
from .config import ConfigError, TrainConfig, dump_yaml, run_changing_keys, to_dict
from .data import (DatasetBundle, RepeatedAugSampler, ShardSampler, TransformDataset,
                   build_eval_transform, build_mixer, build_train_transform, load_dataset)
from .data.device import Decision, DeviceTrainLoader, decide, device_loaders, device_subset_loader
from .distill import DistillationLoss
from .distill.sources import OnlineTeacher, StoredTeacher
from .distill.store import TeacherStore
from .distributed import DistInfo, barrier, gather_objects, init_distributed
from .engine import EVAL_KEYS, Step, StepOptions, evaluate, train_one_epoch
from .models import Teacher, create_cnn, create_student, has_dist_token, tune_attention
from .models.pretrained import load_pretrained
from .models.teacher import load_weights
from .regime import diagnose, last_quarter_change
from .runtime import (resolve_amp, resolve_device, rng_state, seed_everything,
                      set_rng_state)

# timm names that map to a torch optimiser with a fused implementation (CPU and CUDA)
FUSED_OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "nesterov")

# the evaluation metrics a summary carries: `evaluate`'s, plus the clean training accuracy
SUMMARY_KEYS = EVAL_KEYS + ("train_clean_top1",)
KEEP_EVAL_STEP = 0.005  # keep_eval_checkpoints: a new high at least half a point above the last kept

Log = Callable[..., None]


def quiet(*args, **kwargs) -> None:
    """A log that says nothing (other ranks, study runs)."""


# ---------------------------------------------------------------------------------------------
# builders

def global_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The DeiT linear scaling rule, unless an absolute lr is given."""
    if cfg.optim.lr is not None:
        return cfg.optim.lr
    return cfg.optim.base_lr * cfg.data.batch_size * world_size / cfg.optim.lr_batch_divisor


def build_loaders(cfg: TrainConfig, bundle: DatasetBundle, device: torch.device,
                  skip_log: Optional[Path] = None, dist_info: DistInfo = DistInfo(),
                  log: Log = quiet):
    """Training loader over the sampler's replayable keys, evaluation loader: on the device
    when `data_decision` says so (a cache there, augmented per sample), else worker loaders
    (PIL augmentation per `SampleKey`). Both kinds yield (images, labels) batches."""
    mean, std = cfg.data.mean, cfg.data.std
    n = len(bundle.train)
    # repeated_aug=1 is a plain seeded shuffle; the sampler depends on (seed, epoch) only
    sampler = RepeatedAugSampler(n, cfg.aug.repeated_aug, num_replicas=dist_info.world,
                                 rank=dist_info.rank, seed=cfg.seed)
    if cfg.data.batch_size > len(sampler):
        per = (f"; {len(sampler)} per process with {dist_info.world} processes"
               if dist_info.enabled else "")
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the training set "
                          f"({n} images{per}); lower data.batch_size")
    val_shard = ShardSampler(len(bundle.val), dist_info.world, dist_info.rank)
    decision = data_decision(cfg, bundle, device)
    log(f"data: {decision.reason}")
    if decision.on_device:
        return device_loaders(cfg.data, cfg.aug, bundle.train, bundle.val, device, sampler,
                              val_shard, cfg.seed, cfg.progress, skip_log, log)
    skip = str(skip_log) if skip_log else None
    train_ds = bundle.train.with_transform(
        build_train_transform(cfg.aug, cfg.data.img_size, mean, std), seed=cfg.seed,
        on_bad_image=cfg.data.on_bad_image, skip_log=skip)
    val_ds = bundle.val.with_transform(build_eval_transform(cfg.aug, cfg.data.img_size, mean, std),
                                       on_bad_image=cfg.data.on_bad_image, skip_log=skip)
    common = dict(num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                  persistent_workers=cfg.data.num_workers > 0,
                  # a generator of its own, so the loader never draws from the global stream
                  generator=torch.Generator().manual_seed(cfg.seed))
    train_loader = DataLoader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler,
                              drop_last=True, **common)
    val_loader = DataLoader(val_ds, batch_size=cfg.data.eval_batch_size, sampler=val_shard,
                            **common)
    return train_loader, val_loader


def data_decision(cfg: TrainConfig, bundle: DatasetBundle, device: torch.device) -> Decision:
    """Whether this run's data goes on the device (`data.on_device`), and why."""
    return decide(cfg.data, cfg.aug, len(bundle.train), len(bundle.val), device)


def build_train_eval_loader(cfg: TrainConfig, bundle: DatasetBundle,
                            dist_info: DistInfo = DistInfo(), train_loader=None):
    """A fixed, seeded subset of `cfg.eval_train_images` training images, un-augmented (from
    the device cache when `train_loader` is a device loader)."""
    n = min(cfg.eval_train_images, len(bundle.train))
    keep = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(1234))[:n]
    shard = ShardSampler(n, dist_info.world, dist_info.rank)
    if isinstance(train_loader, DeviceTrainLoader):
        return device_subset_loader(train_loader, keep.tolist(), cfg.data, shard)
    sub = TransformDataset(bundle.train.base, [bundle.train.indices[i] for i in keep.tolist()])
    ds = sub.with_transform(build_eval_transform(cfg.aug, cfg.data.img_size, cfg.data.mean,
                                                 cfg.data.std),
                            on_bad_image=cfg.data.on_bad_image)
    return DataLoader(ds, batch_size=cfg.data.eval_batch_size, sampler=shard,
                      num_workers=cfg.data.num_workers)


def run_meta(cfg: TrainConfig, role: str, bundle: DatasetBundle) -> dict:
    """What a checkpoint needs to rebuild its model and read images like its run did."""
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


def build_model(cfg: TrainConfig, role: str, num_classes: int):
    """(network, loss) of a run: a DeiT student with the distillation objective, or (role
    'teacher') a CNN with label-smoothed cross-entropy. Randomly initialised."""
    if role == "student":
        model = build_student(cfg, num_classes)
        check_distillable(cfg, model)
        return model, DistillationLoss(cfg.distill.kind, cfg.distill.alpha, cfg.distill.tau,
                                       cfg.distill.kl_norm, cfg.distill.heads,
                                       cfg.aug.smoothing)
    model = create_cnn(cfg.model.name, num_classes, small_stem=cfg.model.small_stem,
                       **cfg.model.overrides)
    return model, DistillationLoss("none", heads="cls", smoothing=cfg.aug.smoothing)


def load_bundle(cfg: TrainConfig) -> DatasetBundle:
    """The run's data: `cfg.data`'s source, training fraction and (digits) image size."""
    return load_dataset(cfg.data.name, cfg.data.root, cfg.data.download,
                        cfg.data.train_fraction, cfg.data.fraction_seed,
                        digits_size=cfg.data.img_size)


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


def check_resume_config(stored: dict, cfg: TrainConfig, path: Path, force: bool) -> None:
    changed = run_changing_keys(stored, to_dict(cfg))
    if changed and not force:
        raise ConfigError(
            f"resuming '{path}' with a different configuration: {', '.join(changed)} differ from "
            "the stored run. Resume without those changes, or pass --force to accept them "
            "(the result is then no longer the same run)")


# ---------------------------------------------------------------------------------------------
# the run

def fit(cfg: TrainConfig, role: str, bundle: Optional[DatasetBundle] = None,
        teacher: Optional[Teacher] = None, store: Optional[TeacherStore] = None,
        log: Log = print, resume: bool = False, force: bool = False,
        summary_extra: Optional[dict] = None, t_start: Optional[float] = None) -> dict:
    """Train one model (role 'student' or 'teacher') into `cfg.out`; return its summary.

    teacher: the frozen teacher a student distils from (and is compared with at evaluation);
    store: stored teacher outputs to train on instead of running `teacher` (which may then be
    None, or given only to report its accuracy). resume: continue from checkpoint-last.pt,
    exactly (weights, optimiser, schedule, EMA, AMP scaler, every random stream, best-so-far);
    a changed configuration is refused unless `force`. summary_extra is merged into
    summary.json; wall time counts from `t_start` (default: now).
    """
    t_start = time.perf_counter() if t_start is None else t_start
    d = init_distributed(cfg.device)
    device = resolve_device(cfg.device)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    if not d.is_main:  # rank 0 alone prints and writes
        log, cfg = quiet, copy.deepcopy(cfg)
        cfg.progress = False
    if not cfg.out:
        raise ConfigError("fit needs cfg.out, the run folder")
    amp_dtype = resolve_amp(cfg.amp, device)
    out = Path(cfg.out)
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
        bundle = load_bundle(cfg)
    skip_log = out / "skipped_images.txt"
    if state is None and d.is_main and skip_log.exists():
        skip_log.unlink()  # a fresh run: before the loaders (the device cache lists its skips)
    train_loader, val_loader = build_loaders(cfg, bundle, device, skip_log, d, log)
    train_eval_loader = (build_train_eval_loader(cfg, bundle, d, train_loader)
                         if cfg.eval_train_images > 0 else None)

    model, criterion = build_model(cfg, role, bundle.num_classes)
    if role == "student":
        if state is None and (cfg.model.weights or cfg.model.pretrained):
            for line in load_pretrained(model, cfg.model.weights,
                                        cfg.model.name if cfg.model.pretrained else None):
                log(f"student init: {line}")
        seed_everything(cfg.seed + d.rank)  # one stream per rank, whatever the teacher cost
    else:
        teacher, store = None, None
    model.to(device)
    tune_attention(model, device, amp_dtype)
    source = None
    if teacher is not None:
        teacher.to(device)
        if cfg.teacher.optimize:
            log(f"teacher forward: {teacher.optimize(device, amp_dtype)}")
        source = OnlineTeacher(teacher, device, amp_dtype)
    if store is not None:
        store.check_steps(len(train_loader))
        source = StoredTeacher(store, device, cfg.distill.store_verify_batches)
    if criterion.needs_teacher and source is None:
        raise ConfigError(f"distill.kind={cfg.distill.kind} needs a teacher or stored outputs")
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
    step = Step(net, criterion, optimizer, scheduler,
                ema=ModelEmaV3(model, decay=cfg.ema.decay) if cfg.ema.enabled else None,
                scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
                mixer=build_mixer(cfg.aug, bundle.num_classes), teacher=source)
    opts = StepOptions(amp_dtype, cfg.optim.clip_grad, cfg.nonfinite, cfg.max_skipped_steps,
                       cfg.seed, d.rank, cfg.progress)
    meta = run_meta(cfg, role, bundle)

    metrics_path = out / "metrics.jsonl"
    best, best_epoch, start_epoch, last_eval, record = -1.0, -1, 0, {}, {}
    kept = -1.0  # validation top-1 of the last epoch checkpoint kept (keep_eval_checkpoints)
    if state is not None:
        load_weights(model, state["model"], out / "checkpoint-last.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if step.ema is not None and state.get("ema") is not None:
            step.ema.module.load_state_dict(state["ema"])
        if step.scaler is not None and state.get("scaler"):
            step.scaler.load_state_dict(state["scaler"])
        best, best_epoch, start_epoch = state["best"], state["best_epoch"], state["epoch"]
        kept = state.get("kept_top1", -1.0)
        record = state["metrics"]
        last_eval = {k: v for k, v in record.items() if k in SUMMARY_KEYS or k == "eval_images"}
        if d.is_main:
            lines = _read_metrics(metrics_path, start_epoch)
            atomic_write_text("".join(line + "\n" for line in lines), metrics_path)
        set_rng_state(state["rng"][d.rank % len(state["rng"])])
        log(f"resuming {out} after epoch {start_epoch} of {cfg.epochs}")
    elif d.is_main:
        atomic_write_text("", metrics_path)
    if d.is_main:
        atomic_write_text(dump_yaml(cfg), out / "config.yaml")
    tb = SummaryWriter(str(out / "tb")) if (cfg.tensorboard and d.is_main) else None
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{role} {cfg.model.name}: {n_params / 1e6:.2f} M parameters, {len(bundle.train)} train / "
        f"{len(bundle.val)} {bundle.val_split} images, {bundle.num_classes} classes, "
        f"{cfg.data.img_size} px, lr {lr:.2e}, amp {amp_dtype or 'off'}, device {device}"
        f"{f' x {d.world} processes' if d.enabled else ''}, run folder {out}")

    epochs = tqdm(range(start_epoch, cfg.epochs), desc=f"{role}", disable=not cfg.progress,
                  dynamic_ncols=True, initial=start_epoch, total=cfg.epochs)
    for epoch in epochs:
        t_epoch = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        record = {"epoch": epoch + 1, **train_one_epoch(step, train_loader, device, epoch, opts)}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            last_eval = evaluate(model, val_loader, device, teacher, cfg.distill.fusion, amp_dtype)
            if train_eval_loader is not None:
                clean = evaluate(model, train_eval_loader, device, None, cfg.distill.fusion,
                                 amp_dtype)
                last_eval["train_clean_top1"] = clean["fused_top1"]
            record.update(last_eval)
            if step.ema is not None:
                record["ema_fused_top1"] = evaluate(step.ema.module, val_loader, device, None,
                                                    cfg.distill.fusion, amp_dtype)["fused_top1"]
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
        if tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    tb.add_scalar(tb_tag(key), value, epoch + 1)
            tb.flush()
        saved = {"model": model.state_dict(), "meta": meta, "epoch": epoch + 1,
                 "config": to_dict(cfg), "metrics": record}
        if improved:
            atomic_save(saved, out / "checkpoint-best.pt")
        if (cfg.keep_eval_checkpoints and improved
                and record["fused_top1"] >= kept + KEEP_EVAL_STEP - 1e-9):
            # a ladder of new highs, one per half point: every accuracy the run reached has a
            # checkpoint within about half a point (every epoch was 6.4 GB for a ResNet-18)
            atomic_save(saved, out / f"checkpoint-epoch-{epoch + 1:03d}.pt")
            kept = record["fused_top1"]
        atomic_save({**saved, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(),
                     "ema": step.ema.module.state_dict() if step.ema is not None else None,
                     "scaler": step.scaler.state_dict() if step.scaler is not None else None,
                     "best": best, "best_epoch": best_epoch, "kept_top1": kept, "rng": rngs},
                    out / "checkpoint-last.pt")
        epochs.set_postfix(loss=f"{record['train_loss']:.3f}",
                           acc=f"{record.get('fused_top1', float('nan')):.3f}")
        if epoch == start_epoch and epoch + 1 < cfg.epochs:  # the time estimate, measured
            took = time.perf_counter() - t_epoch
            left = cfg.epochs - epoch - 1
            log(f"{role}: epoch {epoch + 1} took {took:.1f} s; the remaining {left} epochs "
                f"will take about {_duration(took * left)} on this machine")
    epochs.close()
    if tb is not None:
        tb.close()

    summary = {k: last_eval.get(k) for k in SUMMARY_KEYS}
    summary.update({"role": role, "model": cfg.model.name, "dataset": bundle.name,
                    "num_classes": bundle.num_classes,
                    "epochs": cfg.epochs, "best_fused_top1": best, "best_epoch": best_epoch,
                    "train_images": len(bundle.train), "eval_images": last_eval.get("eval_images"),
                    "ema_fused_top1": record.get("ema_fused_top1"),
                    "skipped_images": _count_lines(skip_log),
                    "parameters": n_params, "run_dir": str(out), **(summary_extra or {}),
                    "wall_seconds": time.perf_counter() - t_start})
    if role == "teacher":  # a teacher's accuracy is its own
        summary["teacher_top1"] = summary["fused_top1"]
        summary["teacher_top5"] = summary["fused_top5"]
    curve = ([json.loads(line) for line in _read_metrics(metrics_path, cfg.epochs)]
             if d.is_main else [])
    summary["regime"], summary["regime_text"] = diagnose(
        summary["train_clean_top1"], summary["fused_top1"],
        summary["teacher_top1"] if role == "student" else None, last_quarter_change(curve))
    if d.is_main:
        atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    barrier()  # no rank reads the run folder (e.g. a teacher) before rank 0 has written it
    return summary


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


def tb_tag(key: str) -> str:
    """TensorBoard's name of a metrics.jsonl key, grouped: loss/, accuracy/, agreement/,
    speed/, schedule/ (e.g. `train_loss` -> `loss/train_loss`)."""
    if "loss" in key:
        return f"loss/{key}"
    if "top1" in key or "top5" in key:
        return f"accuracy/{key}"
    if key in ("head_agreement", "token_cosine", "student_teacher_agreement"):
        return f"agreement/{key}"
    if key in ("epoch_seconds", "images_per_second"):
        return f"speed/{key}"
    return f"run/{key}"  # lr, skipped steps and images


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    return len({line.split("\t")[0] for line in path.read_text().splitlines() if line})
