"""`fit`: train one model (a DeiT student or a CNN) into its run folder (see `rundir`).

The teacher, online or as stored outputs, is handed in by the caller (`pipeline`); `fit` never
gets or trains one. The pieces come from `build.build_run`; what a checkpoint holds besides
them is one `TrainState`, saved and restored by the same class.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Optional

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .build import Run, build_run, build_scheduler, load_bundle
from .config import ConfigError, Role, TrainConfig, run_changing_keys, to_dict
from .data import DatasetBundle
from .distill.store import TeacherStore
from .distributed import DistInfo, barrier, gather_objects, init_distributed
from .engine import EVAL_KEYS, HOLDOUT_KEYS, evaluate, holdout_fusion, train_one_epoch
from .models import Teacher
from .models.teacher import load_weights
from .plan import FLAT_SLOPE, FLAT_WINDOW, Deadline
from .regime import diagnose, last_quarter_change, teacher_gap
from .rundir import RunDir
from .runtime import Log, quiet, rng_state, set_rng_state

# the evaluation metrics a summary carries: `evaluate`'s, plus the clean training accuracy
SUMMARY_KEYS = EVAL_KEYS + ("train_clean_top1",)
KEEP_EVAL_STEP = 0.005  # keep_eval_checkpoints: a new high at least half a point above the last kept


@dataclass
class TrainState:
    """Where a run stands between epochs: everything checkpoint-last.pt holds besides the
    configuration and the trained pieces' own state dicts (model, optimiser, schedule, EMA,
    scaler). `to_checkpoint` and `from_checkpoint` are the only writer and reader of it."""
    epoch: int = 0             # epochs finished
    best: float = -1.0         # best validation fused top-1 so far
    best_epoch: int = -1
    kept_top1: float = -1.0    # top-1 of the last epoch checkpoint kept (keep_eval_checkpoints)
    record: dict = field(default_factory=dict)   # metrics of the last finished epoch
    rng: list = field(default_factory=list)      # every rank's random streams, rank order
    seconds: float = 0.0       # wall time of the run up to the last checkpoint, all segments

    def to_checkpoint(self, run: Run, full: bool = True) -> dict:
        """A checkpoint of `run` at this state: the weights, meta, config and metrics (what
        checkpoint-best.pt and the epoch rungs hold), plus with `full` what an exact resume
        needs (checkpoint-last.pt)."""
        ckpt = {"model": run.model.state_dict(), "meta": run.meta, "epoch": self.epoch,
                "config": to_dict(run.cfg), "metrics": self.record}
        if full:
            s = run.step
            ckpt.update({"optimizer": s.optimizer.state_dict(),
                         "scheduler": s.scheduler.state_dict() if s.scheduler else None,
                         "ema": s.ema.module.state_dict() if s.ema is not None else None,
                         "scaler": s.scaler.state_dict() if s.scaler is not None else None,
                         "best": self.best, "best_epoch": self.best_epoch,
                         "kept_top1": self.kept_top1, "rng": self.rng,
                         "seconds": self.seconds})
        return ckpt

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "TrainState":
        return cls(epoch=ckpt["epoch"], best=ckpt["best"], best_epoch=ckpt["best_epoch"],
                   kept_top1=ckpt.get("kept_top1", -1.0), record=ckpt["metrics"],
                   rng=ckpt["rng"], seconds=ckpt.get("seconds", 0.0))

    def restore(self, ckpt: dict, run: Run, where) -> None:
        """Load `ckpt`'s pieces into `run` and this process's random streams."""
        s = run.step
        load_weights(run.model, ckpt["model"], where)
        s.optimizer.load_state_dict(ckpt["optimizer"])
        if s.scheduler is not None and ckpt.get("scheduler") is not None:
            s.scheduler.load_state_dict(ckpt["scheduler"])
        if s.ema is not None and ckpt.get("ema") is not None:
            s.ema.module.load_state_dict(ckpt["ema"])
        if s.scaler is not None and ckpt.get("scaler"):
            s.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(self.rng[run.dist.rank % len(self.rng)])
        run.meta["fusion_weight"] = ckpt["meta"].get("fusion_weight", run.meta["fusion_weight"])

    def finish_epoch(self, record: dict) -> bool:
        """Take an epoch's metrics; True when it is a new best."""
        self.epoch, self.record = record["epoch"], record
        improved = "fused_top1" in record and record["fused_top1"] > self.best
        if improved:
            self.best, self.best_epoch = record["fused_top1"], record["epoch"]
        return improved


def fit(cfg: TrainConfig, role: Role, bundle: Optional[DatasetBundle] = None,
        teacher: Optional[Teacher] = None, store: Optional[TeacherStore] = None, *,
        log: Log = print, resume: bool = False, force: bool = False,
        summary_extra: Optional[dict] = None, t_start: Optional[float] = None,
        dist_info: Optional[DistInfo] = None, deadline: Optional[Deadline] = None,
        pause_at: Optional[float] = None) -> dict:
    """Train one model (role 'student' or 'teacher') into `cfg.out`; return its summary.

    teacher: the frozen teacher a student distils from (and is compared with at evaluation);
    store: stored teacher outputs to train on instead of running `teacher` (which may then be
    None, or given only to report its accuracy). resume: continue from checkpoint-last.pt,
    exactly (weights, optimiser, schedule, EMA, AMP scaler, every random stream, best-so-far);
    a changed configuration is refused unless `force`. summary_extra is merged into
    summary.json; wall time counts from `t_start` (default: now). deadline: the time by which
    the fit must end (a time budget, one process): the epoch count is revised after every
    epoch from the epochs and evaluations measured so far (`Deadline.epochs`), and the
    schedule with it; the revised count is what config.yaml and the checkpoints record.
    pause_at: a time.perf_counter() instant at the epoch boundary nearest which the fit stops,
    evaluated and checkpointed, to be resumed later (a race's round, `race`); it then returns
    that epoch's metrics with `paused` true and writes no summary.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    d = dist_info or init_distributed(cfg.device)
    if not cfg.out:
        raise ConfigError("fit needs cfg.out, the run folder")
    if not d.is_main:  # rank 0 alone prints and writes
        log, cfg = quiet, replace(cfg, progress=False)
    rd = RunDir(cfg.out)
    ckpt = _resume_point(rd, cfg, role, d, force) if resume else None
    if d.is_main:
        rd.mkdir()
        if ckpt is None:
            rd.clear_skipped()  # a fresh run: before the loaders (the device cache lists its skips)
    run = build_run(cfg, role, bundle or load_bundle(cfg), dist_info=d, teacher=teacher,
                    store=store, skip_log=rd.skipped, fresh=ckpt is None, log=log,
                    amp=None if ckpt is None else ckpt["meta"].get("amp"))
    state = TrainState()
    if ckpt is not None:
        state = TrainState.from_checkpoint(ckpt)
        state.restore(ckpt, run, rd.last)
        log(f"resuming {rd} after epoch {state.epoch} of {cfg.epochs}")
    if d.is_main:
        rd.reset_metrics(state.epoch)
        rd.write_config(cfg)
    tb = SummaryWriter(str(rd.tb)) if (cfg.tensorboard and d.is_main) else None
    log(_banner(run, rd))
    first, earlier = state.epoch, state.seconds  # earlier: the segments before a resume
    bar = tqdm(desc=role, disable=not cfg.progress, dynamic_ncols=True, initial=first,
               total=cfg.epochs)
    train_s, eval_s = [], []  # this segment's measured seconds (a deadline's revisions)
    curve: list[tuple[int, float]] = []  # this segment's (epoch, validation fused top-1)
    epoch = first
    while epoch < cfg.epochs:
        t_epoch = time.perf_counter()
        run.train_loader.sampler.set_epoch(epoch)
        record = {"epoch": epoch + 1, **train_one_epoch(run.step, run.train_loader, run.device,
                                                        epoch, run.opts)}
        train_s.append(time.perf_counter() - t_epoch)
        planned, evaluated = cfg.epochs, False
        pausing = (pause_at is not None and epoch + 1 < cfg.epochs
                   and time.perf_counter() + train_s[-1] / 2 >= pause_at)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or pausing:
            t_eval = time.perf_counter()
            record.update(_evaluate(run))
            eval_s.append(time.perf_counter() - t_eval)
            evaluated = True
            curve.append((epoch + 1, record["fused_top1"]))
        if deadline is not None:
            slope = deadline.flattened(curve, epoch + 1) if evaluated else None
            if slope is not None:
                log(f"{role}: validation has flattened ({100 * slope:+.2f} points per epoch "
                    f"over epochs {curve[-FLAT_WINDOW][0]}-{epoch + 1}, under "
                    f"{100 * FLAT_SLOPE:.1f}): it anneals until epoch {deadline.cap} at most, "
                    "and the time it leaves goes to the student")
            cfg = _revise(run, epoch + 1, deadline.epochs(
                epoch + 1, cfg.epochs, train_s, eval_s, cfg.eval_every, time.perf_counter(),
                evaluated), train_s, eval_s, log)
            bar.total = cfg.epochs
            if epoch + 1 == cfg.epochs and not evaluated:  # the last epoch is always evaluated
                record.update(_evaluate(run))
        record["skipped_images"] = rd.skipped_count()
        improved = state.finish_epoch(record)
        state.rng = gather_objects(rng_state())  # every rank's streams, for an exact resume
        state.seconds = earlier + time.perf_counter() - t_start
        if d.is_main:
            _save_epoch(rd, run, state, improved, tb)
            if cfg.epochs != planned:  # after the checkpoint that holds the revised count
                rd.write_config(cfg)
            bar.update()
            bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                            acc=f"{record.get('fused_top1', float('nan')):.3f}")
            if epoch == first and epoch + 1 < cfg.epochs:  # the time estimate, measured
                took, left = time.perf_counter() - t_epoch, cfg.epochs - epoch - 1
                log(f"{role}: epoch {epoch + 1} took {took:.1f} s; the remaining {left} epochs "
                    f"will take about {_duration(took * left)} on this machine")
        epoch += 1
        if pausing:
            break
    bar.close()
    if tb is not None:
        tb.close()
    if epoch < cfg.epochs:  # paused
        barrier()
        return {**state.record, "paused": True}
    summary = _summary(run, rd, state, {**(summary_extra or {}), "wall_seconds":
                                        earlier + time.perf_counter() - t_start})
    if d.is_main:
        rd.write_summary(summary)
    barrier()  # no rank reads the run folder (e.g. a teacher) before rank 0 has written it
    return summary


def _revise(run: Run, done: int, epochs: int, train_s: list, eval_s: list,
            log: Log) -> TrainConfig:
    """The run's config with `epochs` in all (a deadline's revision after `done` epochs), the
    schedule rebuilt for them at the current update, and a line that says why."""
    cfg = run.cfg
    if epochs == cfg.epochs:
        return cfg
    log(f"time budget: {cfg.epochs} -> {epochs} {run.role} epochs (the last measured at "
        f"{train_s[-1]:.1f} s" + (f", an evaluation at {eval_s[-1]:.1f} s" if eval_s else "")
        + ")")
    cfg = replace(cfg, epochs=epochs)
    run.cfg = cfg
    if run.step.scheduler is not None:  # timm's schedulers are a function of the update count
        run.step.scheduler = build_scheduler(cfg, run.step.optimizer, len(run.train_loader))
        run.step.scheduler.step_update(num_updates=done * len(run.train_loader))
    return cfg


def _resume_point(rd: RunDir, cfg: TrainConfig, role: Role, d: DistInfo, force: bool) -> dict:
    """checkpoint-last.pt of `rd`, checked against this run (config, role, process count)."""
    ckpt = rd.load_last()
    changed = run_changing_keys(ckpt["config"], to_dict(cfg))
    if changed and not force:
        raise ConfigError(
            f"resuming '{rd.last}' with a different configuration: {', '.join(changed)} differ "
            "from the stored run. Resume without those changes, or pass --force to accept them "
            "(the result is then no longer the same run)")
    if ckpt["meta"].get("role") != role:
        raise ConfigError(f"'{rd}' is a {ckpt['meta'].get('role')} run, not a {role} run")
    if len(ckpt["rng"]) != d.world and not force:
        raise ConfigError(f"'{rd}' was run by {len(ckpt['rng'])} process(es), this resume "
                          f"has {d.world}: use the same count, or --force (inexact)")
    return ckpt


def _evaluate(run: Run) -> dict:
    """An evaluated epoch's metrics: the fusion weight chosen on the held-out training images
    (when the run holds some out), validation (with the teacher beside the student), clean
    training accuracy, and the EMA weights' fused accuracy."""
    res = {}
    if run.holdout is not None:
        run.meta["fusion_weight"], res = holdout_fusion(run.model, run.holdout, run.device,
                                                        run.cfg.distill.fusion, run.amp_dtype)
    ev = lambda model, loader, teacher=None, memo=None: evaluate(  # noqa: E731
        model, loader, run.device, teacher, run.cfg.distill.fusion, run.amp_dtype,
        fusion_weight=run.meta["fusion_weight"], teacher_memo=memo)
    res.update(ev(run.model, run.val_loader, run.teacher, run.teacher_memo))
    if run.train_eval_loader is not None:
        res["train_clean_top1"] = ev(run.model, run.train_eval_loader)["fused_top1"]
    if run.step.ema is not None:
        res["ema_fused_top1"] = ev(run.step.ema.module, run.val_loader)["fused_top1"]
    return res


def _save_epoch(rd: RunDir, run: Run, state: TrainState, improved: bool,
                tb: Optional[SummaryWriter]) -> None:
    """Order matters for crash safety: metrics line, then best (and rung), then last (the
    resume point)."""
    record = state.record
    rd.append_metrics(record)
    write_scalars(tb, record, state.epoch)
    if improved:
        weights = state.to_checkpoint(run, full=False)  # the best and its rung: one state dict
        rd.save_best(weights)
        if (run.cfg.keep_eval_checkpoints
                and record["fused_top1"] >= state.kept_top1 + KEEP_EVAL_STEP - 1e-9):
            # a ladder of new highs, one per half point: every accuracy the run reached has a
            # checkpoint within about half a point (every epoch was 6.4 GB for a ResNet-18)
            rd.save_rung(weights, state.epoch)
            state.kept_top1 = record["fused_top1"]
    rd.save_last(state.to_checkpoint(run))


def _summary(run: Run, rd: RunDir, state: TrainState, extra: dict) -> dict:
    """summary.json: the final evaluation, the run's facts, its regime."""
    last, cfg, bundle = state.record, run.cfg, run.bundle
    summary = {k: last.get(k) for k in SUMMARY_KEYS}
    summary.update({"role": run.role, "model": cfg.model.name, "dataset": bundle.name,
                    "num_classes": bundle.num_classes, "epochs": cfg.epochs,
                    "best_fused_top1": state.best, "best_epoch": state.best_epoch,
                    "train_images": len(bundle.train), "eval_images": last.get("eval_images"),
                    "ema_fused_top1": last.get("ema_fused_top1"),
                    **{k: last[k] for k in HOLDOUT_KEYS if k in last},
                    "fusion_weight": run.meta["fusion_weight"] if run.role == "student" else None,
                    "skipped_images": rd.skipped_count(), "parameters": run.n_params,
                    "amp": run.meta["amp"], "run_dir": str(rd.path), **extra})
    if run.role == "teacher":  # a teacher's accuracy is its own
        summary["teacher_top1"] = summary["fused_top1"]
        summary["teacher_top5"] = summary["fused_top5"]
    curve = rd.read_metrics(cfg.epochs) if run.dist.is_main else []
    summary["regime"], summary["regime_text"] = diagnose(
        summary["train_clean_top1"], summary["fused_top1"],
        summary["teacher_top1"] if run.role == "student" else None, last_quarter_change(curve))
    if run.role == "student":
        start = cfg.model.weights or (f"{cfg.model.name} hub weights" if cfg.model.pretrained
                                      else None)
        summary["ending"] = teacher_gap(summary, curve, cfg.data.name, start)
    return summary


def _banner(run: Run, rd: RunDir) -> str:
    cfg, b, d = run.cfg, run.bundle, run.dist
    return (f"{run.role} {cfg.model.name}: {run.n_params / 1e6:.2f} M parameters, "
            f"{len(b.train)} train / {len(b.val)} {b.val_split} images, {b.num_classes} "
            f"classes, {cfg.data.img_size} px, lr {run.lr:.2e}, amp {run.amp_dtype or 'off'}, "
            f"device {run.device}{f' x {d.world} processes' if d.enabled else ''}, "
            f"run folder {rd}")


def write_scalars(tb: Optional[SummaryWriter], record: dict, step: int) -> None:
    """An epoch's numeric metrics to TensorBoard under `tb_tag`'s groups (no writer: nothing)."""
    if tb is None:
        return
    for key, value in record.items():
        if isinstance(value, (int, float)) and key != "epoch":
            tb.add_scalar(tb_tag(key), value, step)
    tb.flush()


def tb_tag(key: str) -> str:
    """TensorBoard's name of a metrics.jsonl key, grouped: loss/, accuracy/, agreement/,
    speed/, and run/ for the rest (lr, skipped steps and images), e.g. `train_loss` ->
    `loss/train_loss`."""
    if "loss" in key:
        return f"loss/{key}"
    if "top1" in key or "top5" in key:
        return f"accuracy/{key}"
    if key in ("head_agreement", "token_cosine", "student_teacher_agreement"):
        return f"agreement/{key}"
    if key in ("epoch_seconds", "images_per_second"):
        return f"speed/{key}"
    return f"run/{key}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
