"""Assembles a run's pieces from its config: data, model and loss, optimiser, schedule, step,
teacher source. Used by `fit` (a real run), `plan` (a few measured steps before it) and
`bench` (the step timed against timm's), so all three train the same step.

Nothing here trains or writes: `build_run` returns a `Run`, and `fit` runs it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .config import ConfigError, Role, TrainConfig
from .data import (DatasetBundle, RepeatedAugSampler, ShardSampler, TransformDataset,
                   build_eval_transform, build_mixer, build_train_transform, load_dataset)
from .data.device import Decision, DeviceTrainLoader, decide, device_loaders, device_subset_loader
from .distill import MEAN_WEIGHT, DistillationLoss
from .distill.sources import OnlineTeacher, StoredTeacher, TeacherSource
from .distill.store import TeacherStore
from .distributed import DistInfo
from .engine import Step, StepOptions
from .models import (Teacher, create_cnn, create_student, has_dist_token, init_cnn,
                     tune_attention)
from .models.pretrained import load_pretrained
from .runtime import (Log, amp_name, autocast, cpu_has_native_bf16, measured_cpu_amp, quiet,
                      recorded_amp, resolve_amp, resolve_device, seed_everything)

# timm names that map to a torch optimiser with a fused implementation (CPU and CUDA)
FUSED_OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "nesterov")


# ---------------------------------------------------------------------------------------------
# data

def load_bundle(cfg: TrainConfig) -> DatasetBundle:
    """The run's data: `cfg.data`'s source, training fraction, held-out share and (digits)
    image size."""
    return load_dataset(cfg.data.name, cfg.data.root, cfg.data.download,
                        cfg.data.train_fraction, cfg.data.fraction_seed,
                        digits_size=cfg.data.img_size, holdout=cfg.data.holdout)


def data_decision(cfg: TrainConfig, bundle: DatasetBundle, device: torch.device) -> Decision:
    """Whether this run's data goes on the device (`data.on_device`), and why."""
    return decide(cfg.data, cfg.aug, len(bundle.train), len(bundle.val), device)


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
        return device_loaders(data=cfg.data, aug=cfg.aug, train=bundle.train, val=bundle.val,
                              device=device, sampler=sampler, val_indices=val_shard,
                              seed=cfg.seed, progress=cfg.progress, skip_log=skip_log, log=log)
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


def choose_fusion(cfg: TrainConfig, role: Role, bundle: DatasetBundle) -> bool:
    """Whether this run chooses its fusion weight on held-out training images."""
    return (role == "student" and bundle.holdout is not None and cfg.distill.fusion_weight is None
            and cfg.distill.kind != "none" and cfg.distill.heads == "both")


def holdout_batches(cfg: TrainConfig, bundle: DatasetBundle) -> list:
    """The held-out training images, un-augmented, as (images, labels) batches in memory (a
    few hundred images: read once, scored at every evaluation)."""
    ds = bundle.holdout.with_transform(build_eval_transform(cfg.aug, cfg.data.img_size,
                                                            cfg.data.mean, cfg.data.std),
                                       on_bad_image=cfg.data.on_bad_image)
    return list(DataLoader(ds, batch_size=cfg.data.eval_batch_size, num_workers=0))


def build_train_eval_loader(cfg: TrainConfig, bundle: DatasetBundle,
                            dist_info: DistInfo = DistInfo(), train_loader=None):
    """A fixed, seeded subset of `cfg.eval_train_images` training images, un-augmented (from
    the device cache when `train_loader` is a device loader); None when that count is 0."""
    if cfg.eval_train_images <= 0:
        return None
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


# ---------------------------------------------------------------------------------------------
# model, loss, optimiser, schedule

def run_meta(cfg: TrainConfig, role: Role, bundle: DatasetBundle) -> dict:
    """What a checkpoint needs to rebuild its model and read images like its run did."""
    return {"role": role, "model_name": cfg.model.name, "num_classes": bundle.num_classes,
            "classes": list(bundle.classes), "img_size": cfg.data.img_size,
            "patch_size": cfg.model.patch_size, "small_stem": cfg.model.small_stem,
            "model_overrides": dict(cfg.model.overrides), "mean": list(cfg.data.mean),
            "std": list(cfg.data.std), "dataset": bundle.name, "fusion": cfg.distill.fusion,
            "fusion_weight": (MEAN_WEIGHT if cfg.distill.fusion_weight is None
                              else cfg.distill.fusion_weight), "deitkit_format": 1}


def student_batch_shape(cfg: TrainConfig) -> tuple[int, int, int, int]:
    """One process's training batch as the student (and the teacher) receives it."""
    return (cfg.data.batch_size, 3, cfg.data.img_size, cfg.data.img_size)


def build_student(cfg: TrainConfig, num_classes: int):
    return create_student(cfg.model.name, num_classes=num_classes, img_size=cfg.data.img_size,
                          patch_size=cfg.model.patch_size, drop_path_rate=cfg.model.drop_path,
                          **cfg.model.overrides)


def build_model(cfg: TrainConfig, role: Role, num_classes: int):
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


def check_distillable(cfg: TrainConfig, model) -> None:
    if cfg.distill.kind != "none" and cfg.distill.heads != "cls" and not has_dist_token(model):
        raise ConfigError(
            f"distill.kind={cfg.distill.kind} needs a student with a distillation token, but "
            f"'{cfg.model.name}' has none: use '{cfg.model.name.replace('_patch', '_distilled_patch')}'"
            " or set distill.kind=none")


def global_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The DeiT linear scaling rule, unless an absolute lr is given."""
    if cfg.optim.lr is not None:
        return cfg.optim.lr
    return cfg.optim.base_lr * cfg.data.batch_size * world_size / cfg.optim.lr_batch_divisor


def build_optimizer(cfg: TrainConfig, model, lr: float, **extra):
    """timm's optimiser factory; the fused single-kernel step where torch has one. `extra`
    goes to the optimiser (e.g. AdamW's betas). With `optim.layer_decay` each parameter group
    carries timm's `lr_scale`, which timm's schedulers apply at every update."""
    kwargs = dict(opt=cfg.optim.opt, lr=lr, weight_decay=cfg.optim.weight_decay,
                  momentum=cfg.optim.momentum, filter_bias_and_bn=True,
                  layer_decay=cfg.optim.layer_decay, **extra)
    if cfg.optim.fused and cfg.optim.opt.lower() in FUSED_OPTIMIZERS:
        try:
            return create_optimizer_v2(model, fused=True, **kwargs)
        except (TypeError, RuntimeError, ValueError):
            pass  # an older torch or an unsupported device: the foreach step below
    try:
        return create_optimizer_v2(model, foreach=True, **kwargs)
    except (TypeError, ValueError):
        return create_optimizer_v2(model, **kwargs)


def build_scheduler(cfg: TrainConfig, optimizer, updates_per_epoch: int):
    """timm's scheduler factory, stepped per update (warm-up shortened to fit short runs)."""
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.optim.sched, num_epochs=cfg.epochs,
        warmup_epochs=min(cfg.optim.warmup_epochs, cfg.epochs - 1), warmup_lr=cfg.optim.warmup_lr,
        min_lr=cfg.optim.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    return scheduler


def teacher_source(cfg: TrainConfig, device: torch.device, amp_dtype: Optional[torch.dtype],
                   teacher: Optional[Teacher] = None, store: Optional[TeacherStore] = None,
                   steps_per_epoch: Optional[int] = None, log: Log = quiet
                   ) -> Optional[TeacherSource]:
    """Where the step's teacher targets come from: stored outputs when `store` is given (the
    teacher, if any, is then only evaluated), else the online `teacher`, else None. Moves
    the teacher to the device (and optimises its forward when `teacher.optimize`)."""
    source = None
    if teacher is not None:
        teacher.to(device)
        if cfg.teacher.optimize:
            log(f"teacher forward: {teacher.optimize(device, amp_dtype, student_batch_shape(cfg))}")
        source = OnlineTeacher(teacher, device, amp_dtype)
    if store is not None:
        if steps_per_epoch is not None:
            store.check_steps(steps_per_epoch)
        source = StoredTeacher(store, device, cfg.distill.store_verify_batches)
    return source


def build_step(cfg: TrainConfig, model, criterion: DistillationLoss, *, net=None,
               num_classes: int, device: torch.device, amp_dtype: Optional[torch.dtype],
               lr: float, source: Optional[TeacherSource] = None,
               updates_per_epoch: Optional[int] = None, dist_info: DistInfo = DistInfo()
               ) -> tuple[Step, StepOptions]:
    """The training step of `cfg` over `model` (trained through `net`, its DDP/compiled
    wrapper, when given): optimiser, EMA, fp16 scaler, Mixup/CutMix, teacher source; the
    schedule when `updates_per_epoch` is given (a real run; the planner and the bench time
    steps at a fixed lr)."""
    if criterion.needs_teacher and source is None:
        raise ConfigError(f"distill.kind={criterion.kind} needs a teacher or stored outputs")
    optimizer = build_optimizer(cfg, model, lr)
    step = Step(model=net if net is not None else model, criterion=criterion,
                optimizer=optimizer,
                scheduler=(build_scheduler(cfg, optimizer, updates_per_epoch)
                           if updates_per_epoch is not None else None),
                ema=ModelEmaV3(model, decay=cfg.ema.decay) if cfg.ema.enabled else None,
                scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
                mixer=build_mixer(cfg.aug, num_classes), teacher=source)
    opts = StepOptions(amp_dtype=amp_dtype, clip_grad=cfg.optim.clip_grad,
                       nonfinite=cfg.nonfinite, max_skipped_steps=cfg.max_skipped_steps,
                       seed=cfg.seed, rank=dist_info.rank, progress=cfg.progress)
    return step, opts


# ---------------------------------------------------------------------------------------------
# precision

def run_amp(cfg: TrainConfig, role: Role, device: torch.device, num_classes: int,
            log: Log = quiet, make_model=None, key_extra: Optional[dict] = None
            ) -> Optional[torch.dtype]:
    """The autocast dtype of `cfg`'s run: `cfg.amp`, where `auto` on a CPU with bf16
    instructions is decided by measuring this run's own step (the model, image size and
    batch; a student's CNN teacher forward included) in both precisions, once per CPU model
    (runtime.measured_cpu_amp). `make_model()`: the module to time instead of
    `build_model`'s (its forward takes the image batch), with `key_extra` in the cache key."""
    if not (cfg.amp == "auto" and device.type == "cpu" and cpu_has_native_bf16()):
        return resolve_amp(cfg.amp, device)
    teacher = (cfg.teacher.train_model if cfg.teacher.name is None else cfg.teacher.name) \
        if role == "student" and cfg.distill.kind != "none" else None
    key = {"role": role, "model": cfg.model.name, "img_size": cfg.data.img_size,
           "patch_size": cfg.model.patch_size, "overrides": dict(cfg.model.overrides),
           "small_stem": cfg.model.small_stem, "batch": cfg.data.batch_size,
           "classes": num_classes, "teacher": teacher, **(key_extra or {})}
    return measured_cpu_amp(key, _step_probe(cfg, role, num_classes, teacher, device,
                                             make_model), log)


def _step_probe(cfg: TrainConfig, role: Role, num_classes: int, teacher: Optional[str],
                device: torch.device, make_model=None):
    """probe(dtype) -> seconds of 2 training steps (forward, backward) of the run's model on
    a random batch, plus the teacher's forward, after one untimed step."""
    models = {}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(student_batch_shape(cfg), generator=g)
    t_model = None
    if teacher is not None:
        try:  # a teacher by name, or the CNN the run will train; a folder or file: not probed
            t_model = create_cnn(teacher, num_classes).eval()
        except (ValueError, RuntimeError):
            t_model = None

    def probe(dtype: Optional[torch.dtype]) -> float:
        if dtype not in models:
            model = (make_model() if make_model is not None
                     else build_model(cfg, role, num_classes)[0]).to(device)
            tune_attention(model, device, dtype)
            models[dtype] = model
        model = models[dtype]

        def step():
            with autocast(device, dtype):
                out = model(x)
                out = out if isinstance(out, tuple) else (out,)
                loss = sum(o.float().sum() for o in out)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if t_model is not None:
                with torch.inference_mode(), autocast(device, dtype):
                    t_model(x)
        step()
        t0 = time.perf_counter()
        for _ in range(2):
            step()
        return time.perf_counter() - t0
    return probe


# ---------------------------------------------------------------------------------------------
# a whole run

@dataclass
class Run:
    """Everything `fit` trains and evaluates with, built from one config."""
    cfg: TrainConfig
    role: Role
    dist: DistInfo
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    bundle: DatasetBundle
    train_loader: Any
    val_loader: Any
    train_eval_loader: Any       # the clean training subset, or None
    holdout: Optional[list]      # held-out training batches the fusion weight is chosen on
    model: torch.nn.Module       # the bare model (what is saved and evaluated)
    step: Step
    opts: StepOptions
    teacher: Optional[Teacher]   # evaluated beside the student (None for a teacher run)
    lr: float
    meta: dict                   # what a checkpoint needs to rebuild the model (and its amp)
    teacher_memo: list = field(default_factory=list)  # its top-5 on val_loader (evaluate)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def run_device(cfg: TrainConfig, dist_info: DistInfo) -> torch.device:
    """The device of this process: `cfg.device`, or its rank's GPU under torchrun."""
    device = resolve_device(cfg.device)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    return device


def build_run(cfg: TrainConfig, role: Role, bundle: DatasetBundle, *, dist_info: DistInfo,
              teacher: Optional[Teacher] = None, store: Optional[TeacherStore] = None,
              skip_log: Optional[Path] = None, fresh: bool = True, amp: Optional[str] = None,
              log: Log = quiet) -> Run:
    """The pieces of one run. A student is initialised from `model.weights` / pretrained
    weights on a fresh run (a resume restores its own); a teacher run ignores `teacher` and
    `store` (a CNN learns from the labels). `amp`: the precision the run trained in before
    (a resume), else `run_amp` decides."""
    device = run_device(cfg, dist_info)
    amp = recorded_amp(amp, device)
    amp_dtype = (resolve_amp(amp, device) if amp is not None
                 else run_amp(cfg, role, device, bundle.num_classes, log))
    seed_everything(cfg.seed)
    train_loader, val_loader = build_loaders(cfg, bundle, device, skip_log, dist_info, log)
    train_eval_loader = build_train_eval_loader(cfg, bundle, dist_info, train_loader)
    model, criterion = build_model(cfg, role, bundle.num_classes)
    hub = cfg.model.name if cfg.model.pretrained else None
    if role == "teacher":  # a CNN learns from the labels: fine-tuned from weights when given
        teacher, store = None, None
        if fresh:
            for line in init_cnn(model, cfg.model.weights, hub, classes=bundle.classes):
                log(f"teacher init: {line}")
    elif fresh:
        for line in load_pretrained(model, cfg.model.weights, hub, classes=bundle.classes):
            log(f"student init: {line}")
    if role == "student":
        seed_everything(cfg.seed + dist_info.rank)  # one stream per rank, whatever the init cost
    model.to(device)
    tune_attention(model, device, amp_dtype)
    source = teacher_source(cfg, device, amp_dtype, teacher, store, len(train_loader), log)
    # only the trained model is wrapped in DDP, never the teacher
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                  else None) if dist_info.enabled else model
    if cfg.compile:
        net = torch.compile(net)
    lr = global_lr(cfg, dist_info.world)
    step, opts = build_step(cfg, model, criterion, net=net, num_classes=bundle.num_classes,
                            device=device, amp_dtype=amp_dtype, lr=lr, source=source,
                            updates_per_epoch=len(train_loader), dist_info=dist_info)
    return Run(cfg=cfg, role=role, dist=dist_info, device=device, amp_dtype=amp_dtype,
               bundle=bundle, train_loader=train_loader, val_loader=val_loader,
               train_eval_loader=train_eval_loader,
               holdout=holdout_batches(cfg, bundle) if choose_fusion(cfg, role, bundle) else None,
               model=model, step=step, opts=opts,
               teacher=teacher, lr=lr,
               meta={**run_meta(cfg, role, bundle), "amp": amp_name(amp_dtype)})
