"""How long a run will take on this machine, measured before it starts; epochs for a budget.

`measure_epoch` runs a few real training steps of the model a run will train (its own data,
augmentation, batch size, precision and teacher forward) plus one evaluation batch and one
checkpoint write, and scales them to one epoch. `plan_run` does this for the CNN teacher a run
will train (if any) and for the student, and, given a time budget, scales both epoch counts
so that the whole run fits; `budget_end`, `plan_time` and `replan_student` turn a run's
`--time-budget` into those counts and print them. Why written here: neither timm nor the
official DeiT code estimates a run's time before it starts.
"""
from __future__ import annotations

import copy
import math
import os
from contextlib import nullcontext
import tempfile
import time
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Optional


from .build import build_loaders, build_model, build_step, run_amp, teacher_source
from .checkpoint import atomic_save
from .config import ConfigError, TrainConfig, replace_keys
from .data import DatasetBundle
from .distill import DistillationLoss
from .engine import evaluate, train_one_epoch
from .models import Teacher, create_cnn, tune_attention
from .models.teacher_run import teacher_config_for, teacher_settings
from .rundir import RunDir
from .runtime import Log, resolve_device, rng_state, set_rng_state


@dataclass
class Plan:
    """Measured seconds per epoch and the epochs chosen (teacher_epochs 0: no teacher to train)."""
    teacher_epochs: int
    teacher_epoch_seconds: float
    student_epochs: int
    student_epoch_seconds: float

    @property
    def seconds(self) -> float:
        return (self.teacher_epochs * self.teacher_epoch_seconds
                + self.student_epochs * self.student_epoch_seconds)


def measure_epoch(cfg: TrainConfig, role: str, bundle: DatasetBundle,
                  teacher: Optional[Teacher] = None, steps: int = 4) -> float:
    """Seconds one epoch of `cfg`'s run will take here: training steps fed by the run's own
    loader (its workers compete with the step for the cores, as in the run), timed after a
    warm-up and once the workers' prefetched batches are used up, scaled to the epoch's step
    count; plus its evaluations and checkpoint writes. The caller's random streams are left
    as they were."""
    saved = rng_state()
    device = resolve_device(cfg.device)
    amp_dtype = run_amp(cfg, role, device, bundle.num_classes)
    train_loader, val_loader = build_loaders(cfg, bundle, device)
    train_loader.sampler.set_epoch(0)
    model, criterion = build_model(cfg, role, bundle.num_classes)
    if role != "student":
        teacher = None
    if criterion.needs_teacher and teacher is None:  # stored outputs: reading them is free
        criterion = DistillationLoss("none", heads="cls")
    model.to(device)
    tune_attention(model, device, amp_dtype)
    source = teacher_source(cfg, device, amp_dtype, teacher if criterion.needs_teacher else None)
    # the run's own step (EMA and Mixup included) at a fixed lr: the schedule costs nothing
    step, opts = build_step(replace(cfg, progress=False), model, criterion,
                            num_classes=bundle.num_classes, device=device, amp_dtype=amp_dtype,
                            lr=1e-4, source=source)
    optimizer = step.optimizer
    # the DataLoader's default prefetch: 2 batches per worker; the loader of data on the
    # device has none (it augments each batch when asked), so one warm-up step is enough
    prefetched = 2 * getattr(train_loader, "num_workers", 0)
    it = iter(train_loader)
    warm = min(1 + prefetched, len(train_loader) - 1)
    train_one_epoch(step, _Counted(islice(it, warm), warm), device, 0, opts)  # start, warm-up
    timed = max(1, min(steps, len(train_loader) - warm))
    t0 = time.perf_counter()
    train_one_epoch(step, _Counted(islice(it, timed), timed), device, 0, opts)
    step_s = (time.perf_counter() - t0) / timed
    del it
    # the evaluation and the checkpoint write are each timed on their second call: the first
    # pays one-time costs (on a GPU, cuDNN's algorithm search for the evaluation's new batch
    # shape). Timed cold, a CIFAR ResNet-18 teacher's epoch was estimated at 6.0 s on an H100
    # and took 2.9 s with its evaluations (docs/recipes.md, cifar10-gpu)
    val_batch = [next(iter(val_loader))]
    eval_teacher = teacher if role == "student" else None
    evaluate(model, val_batch, device, eval_teacher, amp_dtype=amp_dtype)
    t0 = time.perf_counter()
    evaluate(model, val_batch, device, eval_teacher, amp_dtype=amp_dtype)
    per_image = (time.perf_counter() - t0) / len(val_batch[0][1])
    with tempfile.TemporaryDirectory() as tmp:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        atomic_save(state, Path(tmp) / "c.pt")
        t0 = time.perf_counter()
        atomic_save(state, Path(tmp) / "c.pt")
        save_s = time.perf_counter() - t0
    set_rng_state(saved)
    evals = len(bundle.val) * (2 if cfg.ema.enabled else 1) + \
        min(cfg.eval_train_images, len(bundle.train))
    return len(train_loader) * step_s + evals * per_image / cfg.eval_every + save_s


class _Counted:
    """An iterable with a length (train_one_epoch asks for the step count)."""

    def __init__(self, items, n: int):
        self.items, self.n = items, n

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return self.n


def plan_run(cfg: TrainConfig, teacher_cfg: Optional[TrainConfig], bundle: DatasetBundle,
             stand_in: Optional[Teacher], budget_seconds: Optional[float] = None,
             teacher_errors=None) -> Plan:
    """Measure the epochs of the teacher run `teacher_cfg` (None: no teacher to train) and of
    the student run `cfg` (distilling from `stand_in`, a teacher of the same cost); with a
    budget, scale both epoch counts by one factor so that the run fits. `teacher_errors`: a
    context the teacher's measurement runs in (to say where its settings are given)."""
    t_s = 0.0
    if teacher_cfg is not None:
        with teacher_errors or nullcontext():
            t_s = measure_epoch(teacher_cfg, "teacher", bundle)
    s_s = measure_epoch(cfg, "student", bundle, stand_in)
    plan = Plan(teacher_cfg.epochs if teacher_cfg is not None else 0, t_s, cfg.epochs, s_s)
    if budget_seconds is None:
        return plan
    scale = budget_seconds / plan.seconds
    te = max(1, math.floor(plan.teacher_epochs * scale)) if plan.teacher_epochs else 0
    se = math.floor((budget_seconds - te * t_s) / s_s)
    if se < 1:
        raise ConfigError(
            f"a time budget of {budget_seconds:.0f} s is too short: one student epoch takes "
            f"{s_s:.1f} s here" + (f" after {te} teacher epoch(s) of {t_s:.1f} s" if te else ""))
    return Plan(te, t_s, se, s_s)


# ---------------------------------------------------------------------------------------------
# the plan revised while the run trains

REVISE_SAFETY = 1.03  # measured epochs are assumed this much slower ahead (their spread here)
# a teacher's share of a budget ends early once its validation has flattened: the time left
# goes to the student (its deadline is the budget's end). Flat: the least-squares slope of the
# last FLAT_WINDOW evaluations below FLAT_SLOPE top-1 per epoch; it then anneals over
# ANNEAL_SHARE of the epochs done (at least 1), the schedule compressed to end there
FLAT_WINDOW = 5
FLAT_SLOPE = 0.003
ANNEAL_SHARE = 0.2


def flat_slope(evals: list[tuple[int, float]]) -> Optional[float]:
    """The least-squares slope (top-1 per epoch) of the last FLAT_WINDOW (epoch, top-1)
    evaluations; None with fewer."""
    pts = evals[-FLAT_WINDOW:]
    if len(pts) < FLAT_WINDOW:
        return None
    mx = sum(e for e, _ in pts) / len(pts)
    my = sum(v for _, v in pts) / len(pts)
    sxx = sum((e - mx) ** 2 for e, _ in pts)
    return sum((e - mx) * (v - my) for e, v in pts) / sxx


@dataclass
class Deadline:
    """A fit's time limit, `at` on time.perf_counter()'s clock. After every epoch (and its
    evaluation, if it had one) `fit` asks `epochs` how many epochs in all fit before it, from
    the epochs it measured. With `stop_when_flat` (a teacher's share) `fit` also hands it the
    validation curve (`flattened`); once that has flattened, `cap` bounds the epochs."""
    at: float
    stop_when_flat: bool = False
    cap: Optional[int] = None

    def flattened(self, evals: list[tuple[int, float]], done: int) -> Optional[float]:
        """After `done` epochs with validation curve `evals` ((epoch, top-1) pairs): the slope
        that flattened it, the first time it does (the cap is then set: ANNEAL_SHARE more
        epochs), else None."""
        if not self.stop_when_flat or self.cap is not None:
            return None
        slope = flat_slope(evals)
        if slope is None or slope >= FLAT_SLOPE:
            return None
        self.cap = done + max(1, math.ceil(ANNEAL_SHARE * done))
        return slope

    def epochs(self, done: int, total: int, train_s: list[float], eval_s: list[float],
               eval_every: int, now: float, evaluated: bool) -> int:
        """Total epochs for a run planned at `total` that has trained `done` (this segment's
        training seconds per epoch in `train_s`, evaluation seconds in `eval_s`; the first of
        each pays one-time costs, so it counts only while it is the only one; `evaluated`:
        whether epoch `done` was): the most that end by `at`, each later epoch's evaluation
        (every `eval_every`, and always the last) included, and epoch `done`'s if it becomes
        the last without one. Never fewer than `done`; never more than `total` until an
        evaluation has been measured (an unmeasured cost is not bet on: a first revision
        that raised the count on training time alone had to take it back)."""
        per_epoch = REVISE_SAFETY * _typical(train_s)
        per_eval = REVISE_SAFETY * _typical(eval_s) if eval_s else 0.0
        left = self.at - now

        def cost(k: int) -> float:  # k more epochs after `done`, and their evaluations
            last = done + k
            if k == 0:
                return 0.0 if evaluated else per_eval
            evals = last // eval_every - done // eval_every + (last % eval_every != 0)
            return k * per_epoch + evals * per_eval
        lo, hi = 0, 1                          # cost rises with k: the largest k that fits
        while cost(hi) <= left:
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if cost(mid) <= left else (lo, mid)
        fits = done + lo if eval_s else min(done + lo, total)
        return fits if self.cap is None else max(done, min(fits, self.cap))


def _typical(seconds: list[float]) -> float:
    """The epochs' typical time: the mean without the first (warm-up) once there are more."""
    later = seconds[1:] or seconds
    return sum(later) / len(later)


# ---------------------------------------------------------------------------------------------
# a run's time budget: its end, its first plan and the student's plan after the teacher

def process_seconds() -> float:
    """Seconds since this process started (Linux /proc; 0 where unknown)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf(
            "SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def teacher_to_train(cfg: TrainConfig, out: Path) -> Optional[TrainConfig]:
    """The config of the CNN teacher this run will train, or None (given, stored, finished)."""
    if cfg.distill.kind == "none" or cfg.teacher.name or cfg.distill.store:
        return None
    tdir = RunDir(out).teacher
    return None if tdir.is_finished() else teacher_config_for(cfg, tdir.path)


def budget_end(budget_minutes: float) -> float:
    """When a run with this budget (counted from the process's start) must have finished its
    last epoch, on time.perf_counter()'s clock: the budget less `end_reserve` for the summary
    and the exit."""
    seconds = 60 * budget_minutes
    return time.perf_counter() - process_seconds() + seconds - end_reserve(seconds)


def end_reserve(seconds: float) -> float:
    """Seconds of a budget kept for what follows the last epoch (summary, report, exit):
    measured at about 1 s here, kept at 2 s plus 1 % for a slower disk."""
    return 2.0 + 0.01 * seconds


def plan_time(cfg: TrainConfig, bundle: DatasetBundle, out: Path, teacher: Optional[Teacher],
              budget_minutes: Optional[float], log: Log,
              end: Optional[float] = None) -> tuple[Plan, TrainConfig]:
    """Print how long the run will take here (measured on its first steps); with a budget,
    choose the teacher's and student's first epoch counts so that the whole run fits, and say
    so (each fit then revises its count after every epoch: `Deadline`); `end`: the budget's
    `budget_end`. Returns the plan and the config to run (with those epochs)."""
    tcfg = teacher_to_train(cfg, out)
    stand_in = copy.deepcopy(teacher)  # measuring optimises the stand-in's forward, not the run's
    if tcfg is not None:  # an untrained CNN of the teacher's architecture costs the same
        stand_in = Teacher(create_cnn(tcfg.model.name, bundle.num_classes,
                                      small_stem=tcfg.model.small_stem, **tcfg.model.overrides),
                           tcfg.data.mean, tcfg.data.std)
        stand_in.set_student_input(cfg.data.mean, cfg.data.std, cfg.teacher.img_size)
    budget = None if end is None else end - time.perf_counter()
    plan = plan_run(cfg, tcfg, bundle, stand_in, budget,
                    teacher_errors=teacher_settings(cfg, out / RunDir.TEACHER))
    parts = ([f"teacher {plan.teacher_epochs} epochs x {plan.teacher_epoch_seconds:.1f} s"]
             if plan.teacher_epochs else [])
    parts.append(f"student {plan.student_epochs} epochs x {plan.student_epoch_seconds:.1f} s")
    if budget_minutes is not None:
        was = ([f"teacher {tcfg.epochs}"] if tcfg is not None else []) + [f"student {cfg.epochs}"]
        log(f"time budget {budget_minutes:g} min: chose {', '.join(parts)} (recipe: "
            f"{', '.join(was)} epochs); about {plan.seconds:.0f} s of training, measured on "
            "this machine; revised after every epoch from the epochs measured")
        cfg = replace(cfg, epochs=plan.student_epochs)
        if tcfg is not None:
            cfg = replace_keys(cfg, **{"teacher.train_epochs": plan.teacher_epochs})
    else:
        log(f"estimated on this machine (first steps measured): {', '.join(parts)}: about "
            f"{plan.seconds:.0f} s of training")
    return plan, cfg


def replan_student(cfg: TrainConfig, plan: Plan, out: Path, end: float,
                   log: Log) -> TrainConfig:
    """After the teacher: the student's first epoch count for the time left before `end` (its
    own fit revises it after every epoch). If the teacher's real epochs took longer than
    estimated, the student's estimate is scaled by the same factor (never below its own
    estimate: a faster teacher says little about the student, measured on Fashion-MNIST:
    teacher 0.80x its estimate, student 0.91x)."""
    tsum = RunDir(out).teacher.read_summary()
    factor = tsum["wall_seconds"] / tsum["epochs"] / plan.teacher_epoch_seconds
    left = end - time.perf_counter()
    epochs = max(1, math.floor(left / (plan.student_epoch_seconds * max(1.0, factor))))
    if epochs != cfg.epochs:
        log(f"time budget: the teacher took {factor:.2f}x its estimate per epoch; the student "
            f"starts with {epochs} epochs instead of {cfg.epochs} ({left:.0f} s left)")
        cfg = replace(cfg, epochs=epochs)
    return cfg
