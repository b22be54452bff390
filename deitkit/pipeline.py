"""A run from end to end: get the teacher (or its stored outputs), fit, summarise.

`train(cfg)` gets a teacher for a student run (by name, weights file, run folder, or by
training a CNN first with `fit`), opens stored outputs when `distill.store` is set, and hands
both to `fit`, which trains the student. `train_teacher(cfg)` fits a CNN on its own;
`record_store(cfg, out)` records a teacher's outputs for every view of a run.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .build import (build_loaders, build_student, check_distillable, data_decision,
                    load_bundle, run_amp, run_device, student_batch_shape)
from .config import ConfigError, TrainConfig, replace_keys, to_dict
from .data import DatasetBundle, build_mixer, student_views
from .distill.store import (DTYPES, STORE_FORMAT, StoreError, TeacherStore, check_fingerprint,
                            epoch_file, fingerprint, open_store, read_meta, save_epoch,
                            view_checksum, write_meta)
from .distributed import DistInfo, barrier, init_distributed
from .fit import fit
from .models import Teacher, create_teacher
from .models.teacher import check_class_names
from .models.teacher_run import teacher_config_for, teacher_recipe, teacher_settings
from .plan import Deadline, budget_end, plan_time, replan_student, teacher_to_train
from .race import race_student
from .regime import fusion_line
from .checkpoint import safe_torch_load
from .rundir import RunDir, no_empty_folder_left, open_run, resolve_checkpoint
from .runtime import Log, autocast, quiet


def _finished(rd: RunDir, summary: dict, log: Log) -> dict:
    log(f"'{rd}' is a finished run ({summary.get('epochs')} epochs, fused top-1 "
        f"{summary.get('fused_top1')}): nothing to resume, nothing changed")
    return summary


# ---------------------------------------------------------------------------------------------
# the teacher

def get_teacher(cfg: TrainConfig, bundle: DatasetBundle, out: Path,
                log: Log = print, dist_info: DistInfo = DistInfo(),
                deadline: Optional[Deadline] = None) -> Optional[Teacher]:
    """The frozen teacher of a student run, or None when the objective needs none: the named
    one (`teacher.name`, with `teacher.weights`), else a CNN trained into OUT/teacher (resumed
    if it was interrupted, reused if finished; by `deadline` when given)."""
    if cfg.distill.kind == "none" and cfg.teacher.name is None:
        return None
    if cfg.teacher.name is not None:
        teacher = create_teacher(cfg.teacher.name, num_classes=bundle.num_classes,
                                 weights=cfg.teacher.weights, pretrained=cfg.teacher.pretrained)
    else:
        tdir = RunDir(out).teacher
        if tdir.is_finished() and tdir.has_best():
            log(f"reusing the teacher trained earlier in {tdir}")
        else:
            tcfg = teacher_config_for(cfg, tdir.path)
            resume = tdir.has_last()
            how = ("fine-tuning" if tcfg.model.weights or tcfg.model.pretrained else "training")
            log(f"no teacher given: {'resuming' if resume else how} a {tcfg.model.name} "
                f"teacher for {tcfg.epochs} epochs at {tcfg.data.img_size} px (recipe "
                f"{teacher_recipe(cfg)}) in {tdir}")
            with teacher_settings(cfg, tdir.path):
                same_images = tcfg.data.img_size == cfg.data.img_size  # digits: decoded to it
                fit(tcfg, "teacher", bundle=bundle if same_images else None, log=log,
                    resume=resume, dist_info=dist_info, deadline=deadline)
        teacher = create_teacher(str(tdir), num_classes=bundle.num_classes)
    teacher.set_student_input(cfg.data.mean, cfg.data.std, cfg.teacher.img_size)
    check_class_names(teacher.classes, bundle.classes, f"the teacher '{cfg.teacher.name}'"
                      if cfg.teacher.name else "the teacher")
    return teacher


def with_teacher_size(cfg: TrainConfig, log: Log) -> TrainConfig:
    """A named deitkit teacher (run folder or checkpoint) trained at another size than the
    student's is fed its own size when `teacher.img_size` is left empty: a CNN fine-tuned at
    64 px and handed 32-px batches loses what its resolution bought. Said in one line."""
    t = cfg.teacher
    path = Path(t.name).expanduser() if t.name else None
    if (t.img_size is not None or path is None
            or not (path.is_dir() or path.suffix in (".pt", ".pth"))):
        return cfg  # given, or a hub name (no recorded size)
    if not path.exists():
        return cfg  # create_teacher names the missing file
    # the meta only: the tensors are mapped, not read (create_teacher loads them next)
    obj = safe_torch_load(resolve_checkpoint(path, what="teacher folder"), mmap=True)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    size = meta.get("img_size") if isinstance(meta, dict) else None
    if not size or size == cfg.data.img_size:
        return cfg
    log(f"teacher: '{t.name}' was trained at {size} px, so the student's {cfg.data.img_size}-px "
        f"batches are resized to {size} for it (teacher.img_size={cfg.data.img_size} keeps the "
        "student's size)")
    return replace_keys(cfg, **{"teacher.img_size": size})


def _store_teacher(cfg: TrainConfig, bundle: DatasetBundle, out: Path,
                   log: Log) -> Optional[Teacher]:
    """With distill.store: the named teacher, else the one trained for the store, else None
    (used to check the store's teacher and to report its accuracy, never run in training)."""
    if cfg.teacher.name:
        return get_teacher(cfg, bundle, out, log=log)
    tdir = RunDir(cfg.distill.store).teacher
    if not tdir.has_best():
        return None
    teacher = create_teacher(str(tdir), num_classes=bundle.num_classes)
    teacher.set_student_input(cfg.data.mean, cfg.data.std, cfg.teacher.img_size)
    return teacher


# ---------------------------------------------------------------------------------------------
# runs

def train(cfg: TrainConfig, log: Log = print, resume: bool = False, force: bool = False,
          time_budget: Optional[float] = None, overwrite: bool = False) -> dict:
    """Train a DeiT student (and, if needed, its CNN teacher first); return the summary.

    resume: continue the run in `cfg.out` from wherever it stopped (its teacher's training
    included); a finished run is left as it is. overwrite: replace a run already in `cfg.out`
    (refused otherwise). time_budget: minutes for the whole run (teacher included), counted
    from the start of the process; the epochs of the teacher and the student are scaled to
    fit (new runs only)."""
    t0 = time.perf_counter()
    d = init_distributed(cfg.device)
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise ConfigError(f"--time-budget must be a finite number of minutes above 0; got "
                          f"{time_budget:g}")
    if time_budget is not None and (resume or d.enabled):
        raise ConfigError("--time-budget sets the epochs of a new single-process run; it "
                          "cannot be combined with --resume or torchrun")
    cfg, rd, done, made = open_run(cfg, "student", d, resume, overwrite)
    if done is not None:
        return _finished(rd, done, log if d.is_main else quiet)
    with no_empty_folder_left(rd, made and d.is_main):
        return _train_student(cfg, rd, d, log=log, resume=resume, force=force,
                              time_budget=time_budget, t0=t0)


def _train_student(cfg: TrainConfig, rd: RunDir, d: DistInfo, *, log: Log, resume: bool,
                   force: bool, time_budget: Optional[float], t0: float) -> dict:
    """`train` once its folder is open: data, the student's settings checked, the teacher
    (named, stored or trained here), the plan, with a budget and `race` the race of student
    shapes, then `fit`."""
    log_main = log if d.is_main else quiet
    out = rd.path
    cfg = with_teacher_size(cfg, log_main)
    bundle = load_bundle(cfg)
    # the student's settings are checked before any work (a teacher may train for long
    # first): built on the meta device, shapes only (a tenth of the time, no memory)
    with torch.device("meta"):
        check_distillable(cfg, build_student(cfg, bundle.num_classes))
    store: Optional[TeacherStore] = None
    deadline: Optional[Deadline] = None
    if cfg.distill.store and cfg.distill.kind != "none":
        teacher = _store_teacher(cfg, bundle, out, log_main)
        store = open_store(cfg, bundle, d.world, d.rank,
                           teacher.digest if teacher is not None else None,
                           data_decision(cfg, bundle, run_device(cfg, d)).views)
        log_main(f"teacher outputs from the store {cfg.distill.store} (top-{store.topk} of "
                 f"{store.num_classes}, teacher {store.meta.get('teacher')})")
        if time_budget is not None:
            raise ConfigError("--time-budget cannot change the epochs of a run that reads "
                              "stored teacher outputs (the store holds a fixed number)")
        if not resume and not d.enabled:
            plan_time(cfg, bundle, out, None, None, log_main)
    else:
        named = cfg.teacher.name is not None
        teacher = get_teacher(cfg, bundle, out, log=log_main, dist_info=d) if named else None
        plan, trains_teacher = None, teacher_to_train(cfg, out) is not None
        end = budget_end(time_budget) if time_budget is not None else None
        if not resume and not d.enabled:
            plan, cfg = plan_time(cfg, bundle, out, teacher, time_budget, log_main, end)
        if d.is_main and not resume:  # before the teacher: a run stopped there can be resumed
            rd.write_config(cfg)
        if not named:  # the teacher's share: what the student's planned epochs leave
            share = None if end is None or plan is None else Deadline(
                end - plan.student_epochs * plan.student_epoch_seconds, stop_when_flat=True)
            teacher = get_teacher(cfg, bundle, out, log=log_main, dist_info=d, deadline=share)
        if end is not None and plan is not None and trains_teacher:
            cfg = replan_student(cfg, plan, out, end, log_main)
        if end is not None:
            deadline = Deadline(end)
    extra = {}
    if rd.teacher.is_finished():
        extra["teacher_wall_seconds"] = rd.teacher.read_summary()["wall_seconds"]
    raced = None
    if cfg.race and deadline is not None and not resume:
        raced = race_student(cfg, bundle, teacher, rd, deadline.at, log_main)
    if raced is not None:  # the winner's files are in the run folder: it goes on from there
        cfg, record, trained = raced
        extra.update(record)
        resume, t0 = True, t0 + trained  # its wall time so far is in its checkpoint
    return fit(cfg, "student", bundle, teacher=teacher, store=store, log=log,
               resume=resume and rd.has_last(), force=force, summary_extra=extra, t_start=t0,
               dist_info=d, deadline=deadline)


def train_teacher(cfg: TrainConfig, bundle: Optional[DatasetBundle] = None, log: Log = print,
                  resume: bool = False, force: bool = False, overwrite: bool = False) -> dict:
    """Train a CNN teacher on its own (the offline route to a teacher); `resume` and
    `overwrite` as for `train`."""
    d = init_distributed(cfg.device)
    cfg, rd, done, made = open_run(cfg, "teacher", d, resume, overwrite)
    if done is not None:
        return _finished(rd, done, log if d.is_main else quiet)
    with no_empty_folder_left(rd, made and d.is_main):
        return fit(cfg, "teacher", bundle=bundle, log=log, resume=resume and rd.has_last(),
                   force=force, dist_info=d)


def record_store(cfg: TrainConfig, out: str | Path, topk: Optional[int] = None,
                 dtype: str = "float32", log: Log = print) -> dict:
    """Record the teacher's top-K outputs for every view of `cfg`'s run into folder `out`.

    The teacher is `cfg.teacher` (given, or trained into OUT/teacher as `deitkit train` would).
    An interrupted recording resumes: finished epoch files are kept. Returns meta.json's dict.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"store dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    t0 = time.perf_counter()
    d = init_distributed(cfg.device)
    device = run_device(cfg, d)
    root = Path(out).expanduser()
    if d.is_main:
        root.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(cfg)
    amp_dtype = run_amp(cfg, "student", device, bundle.num_classes, log if d.is_main else quiet)
    k = bundle.num_classes if topk is None else topk
    if not 1 <= k <= bundle.num_classes:
        raise ConfigError(f"topk must be in 1..{bundle.num_classes} (the class count), got {k}")
    loader, _ = build_loaders(cfg, bundle, device, dist_info=d)
    cfg = with_teacher_size(cfg, log if d.is_main else quiet)
    teacher = get_teacher(cfg, bundle, root, log=log if d.is_main else quiet, dist_info=d)
    if teacher is None:
        raise ConfigError("recording a teacher store needs a teacher: give --teacher, or let "
                          "deitkit train one (leave teacher.name empty)")
    teacher.to(device)
    digest = teacher.digest
    teacher.optimize(device, amp_dtype, student_batch_shape(cfg))
    mixer = build_mixer(cfg.aug, bundle.num_classes)
    views = data_decision(cfg, bundle, device).views
    meta = {"format": STORE_FORMAT, "fingerprint": fingerprint(cfg, bundle, d.world, digest, views),
            "teacher": teacher.name, "topk": k, "dtype": dtype, "epochs": cfg.epochs,
            "steps": len(loader), "amp": str(amp_dtype), "complete": False,
            "config": to_dict(cfg)}
    old = read_meta(root)
    if old is not None:
        check_fingerprint(old["fingerprint"], meta["fingerprint"], root)
        if (old["topk"], old["dtype"]) != (k, dtype):
            raise StoreError(f"'{root}' holds a store with topk={old['topk']}, dtype="
                             f"{old['dtype']}; use another folder for topk={k}, dtype={dtype}")
    if d.is_main:
        write_meta(root, meta)
    np_dtype = DTYPES[dtype]
    idx_dtype = np.int16 if bundle.num_classes < 2**15 else np.int32
    bar = tqdm(range(cfg.epochs), desc="teacher store", disable=not (cfg.progress and d.is_main))
    for epoch in bar:
        if epoch_file(root, epoch, d.rank).is_file():
            continue  # recorded before an interruption (written atomically, so complete)
        loader.sampler.set_epoch(epoch)
        steps = len(loader)
        values = indices = None
        checksums = np.zeros(steps, dtype=np.uint32)
        for step, images, _, _ in student_views(loader, mixer, device, cfg.seed, epoch, d.rank):
            checksums[step] = view_checksum(images)
            with autocast(device, amp_dtype):
                probs = teacher(images).float().softmax(-1)                # [B, C]
            top = probs.topk(k, dim=-1)                                     # [B, K] each
            if values is None:
                values = np.zeros((steps, len(images), k), dtype=np_dtype)
                indices = np.zeros((steps, len(images), k), dtype=idx_dtype)
            values[step] = top.values.cpu().numpy().astype(np_dtype)
            indices[step] = top.indices.cpu().numpy().astype(idx_dtype)
        save_epoch(root, epoch, d.rank, values, indices, checksums)
    barrier()
    meta["complete"] = True
    meta["wall_seconds"] = time.perf_counter() - t0
    if d.is_main:
        write_meta(root, meta)
        size = sum(p.stat().st_size for p in root.glob("epoch-*.npz"))
        log(f"teacher store {root}: {cfg.epochs} epochs x {meta['steps']} steps, top-{k} "
            f"{dtype}, {size / 1e6:.1f} MB, {meta['wall_seconds']:.0f} s")
    return meta


def format_summary(summary: dict) -> str:
    """A small aligned table of the final metrics."""
    if summary.get("role") == "teacher":
        rows = [("top-1", "fused_top1"), ("top-5", "fused_top5"),
                ("train top-1 (clean)", "train_clean_top1"), ("best top-1", "best_fused_top1")]
    else:
        rows = [("class head top-1", "cls_top1"), ("distillation head top-1", "dist_top1"),
                ("fused top-1", "fused_top1"), ("fused top-5", "fused_top5"),
                ("train top-1 (clean)", "train_clean_top1"),
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
    if summary.get("regime_text"):
        lines.append(f"regime: {summary['regime_text']}")
    fusion = fusion_line(summary)
    if fusion:
        lines.append(fusion)
    if summary.get("race_winner"):
        lines.append(f"student shape: {summary['race_winner']}, chosen by a race (held-out "
                     "top-1 after its last round: " + ", ".join(
                         f"{r['name']} {100 * r['scores'][-1]:.1f} %"
                         for r in summary["race"] if r["scores"]) + ")")
    lines += summary.get("ending") or []
    lines.append(f"run folder: {summary['run_dir']}")
    return "\n".join(lines)
