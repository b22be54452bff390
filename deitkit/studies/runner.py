"""Run a study's set of training runs (resumably, with shared teachers) and collect results.

A study is a list of `RunSpec`s. Each is an ordinary deitkit run (`train.fit` through
`train`/`train_teacher`; no training loop of its own) in `STUDY/runs/<name>-s<seed>/`. A run
whose `summary.json` exists is finished and skipped; one with `checkpoint-last.pt` is resumed
exactly; so an interrupted study picks up where it stopped.

Teachers are shared between runs and between studies: a `TeacherSpec` is trained once into
`ROOT/teachers/<key>/`, where the key is a digest of the data, training fraction, model, recipe,
overrides and seed; every run that needs the same teacher reuses that folder (and says so).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..config import ConfigError, build_config


@dataclass
class Budget:
    """How big a study's runs are. `data` None means the user must give --data."""
    name: str
    data: Optional[str]
    epochs: int
    """Student epochs at `train_fraction` (fraction sweeps keep the step count: see
    `epochs_for`)."""
    train_fraction: float
    img_size: int
    patch_size: int
    depth: int
    """Blocks of the DeiT-Tiny students (timm's `depth`)."""
    batch_size: int
    teacher_epochs: int
    eval_train_images: int
    eval_every: int
    num_workers: int
    fractions: tuple
    """Training-set fractions of `teacher-kind`."""
    scale_fractions: tuple
    """Training-set fractions of `data-scale` (log-spaced)."""
    recipe: str
    """Base recipe of the students."""
    amp: str = "auto"

    def epochs_for(self, fraction: float, epochs: Optional[int] = None) -> int:
        """Epochs at another fraction with about the same number of optimiser steps (capped at
        8x), so small-data runs are not also short runs."""
        e = epochs or self.epochs
        return max(1, min(8 * e, round(e * self.train_fraction / fraction)))


BUDGETS = {
    # CI: seconds per run on the embedded digits; checks the plumbing, not the claims
    "tiny": Budget("tiny", "digits", epochs=2, train_fraction=0.25, img_size=32, patch_size=8,
                   depth=2, batch_size=32, teacher_epochs=1, eval_train_images=128,
                   eval_every=1, num_workers=0, fractions=(0.25, 0.5),
                   scale_fractions=(0.125, 0.25, 0.5), recipe="quickstart"),
    # CIFAR-10 on 2 CPU cores, each study within about 45 minutes. teacher-kind gets two
    # fractions: each costs two teachers and two students (about 19 min on 2 cores, measured)
    "quick": Budget("quick", None, epochs=12, train_fraction=0.1, img_size=32, patch_size=8,
                    depth=6, batch_size=64, teacher_epochs=6, eval_train_images=1000,
                    eval_every=3, num_workers=2, fractions=(0.02, 0.1),
                    scale_fractions=(0.01, 0.03, 0.1), recipe="small-data-cpu"),
    # one GPU: full training set, the small-data-cpu recipe's model
    "full": Budget("full", None, epochs=100, train_fraction=1.0, img_size=32, patch_size=4,
                   depth=12, batch_size=128, teacher_epochs=30, eval_train_images=5000,
                   eval_every=5, num_workers=8, fractions=(0.1, 0.25, 0.5, 1.0),
                   scale_fractions=(0.03, 0.1, 0.3, 1.0), recipe="small-data-cpu"),
}


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher that several runs share: a CNN (`deitkit teacher`) or a ViT (a DeiT trained
    on labels only)."""
    model: str
    kind: str                  # "cnn" or "vit"
    recipe: str
    overrides: tuple = ()
    label: str = ""

    def key(self, data: str, seed: int, extra: tuple = ()) -> str:
        text = json.dumps([data, self.model, self.kind, self.recipe, list(self.overrides), seed]
                          + sorted(extra))
        short = hashlib.sha1(text.encode()).hexdigest()[:10]
        return f"{self.kind}-{self.model}-s{seed}-{short}"


@dataclass
class RunSpec:
    """One run of a study. role: `student` (a DeiT via `train`) or `teacher` (report the
    shared teacher `teacher`'s own run, e.g. the CNN line of data-scale)."""
    name: str
    labels: dict
    overrides: list = field(default_factory=list)
    role: str = "student"
    teacher: Optional[TeacherSpec] = None
    recipe: Optional[str] = None


def _read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


CURVE_KEYS = ("epoch", "train_top1", "train_clean_top1", "fused_top1", "cls_top1", "dist_top1",
              "train_loss")


def collect_run(run: Path) -> dict:
    """summary.json and the per-epoch curve (metrics.jsonl) of a finished run folder."""
    summary = json.loads((run / "summary.json").read_text())
    curve = [{k: r.get(k) for k in CURVE_KEYS if k in r} for r in _read_metrics(run)]
    return {"summary": summary, "curve": curve}


class StudyRunner:
    def __init__(self, root: Path, data: str, budget: Budget, seeds: int, log=print,
                 device: str = "auto", progress: bool = False, extra: tuple = ()):
        self.root, self.data, self.budget, self.seeds = Path(root), data, budget, seeds
        self.extra = list(extra)  # the user's overrides, applied to every run and teacher
        self.log, self.device, self.progress = log, device, progress
        self.teachers_trained: list[str] = []
        self.teachers_reused: list[str] = []

    def common(self, seed: int, out: Path) -> list[str]:
        b = self.budget
        return [f"data.name={self.data}", f"seed={seed}", f"out={out}",
                f"progress={'true' if self.progress else 'false'}", f"device={self.device}",
                f"data.img_size={b.img_size}", f"data.batch_size={b.batch_size}",
                f"data.num_workers={b.num_workers}", f"eval_every={b.eval_every}",
                f"eval_train_images={b.eval_train_images}", f"amp={b.amp}"]

    def with_extra(self, overrides: list) -> list:
        return list(overrides) + self.extra

    def teacher_path(self, spec: TeacherSpec, seed: int) -> Path:
        """The folder of teacher `spec` at `seed`: ROOT/teachers/<key> (nothing is trained)."""
        free = ("data.num_workers", "progress", "device", "data.eval_batch_size")
        keyed = tuple(o for o in self.extra if o.split("=", 1)[0] not in free)
        return self.root / "teachers" / spec.key(self.data, seed, keyed)

    def teacher_dir(self, spec: TeacherSpec, seed: int) -> Path:
        """Train `spec` once (or resume it); later calls reuse the folder."""
        from ..train import train, train_teacher
        out = self.teacher_path(spec, seed)
        overrides = self.common(seed, out) + [f"model.name={spec.model}", *spec.overrides]
        cfg = build_config(spec.recipe, overrides=self.with_extra(overrides))
        if (out / "summary.json").is_file():
            check_finished(out, cfg)  # the key covers the spec; this also the budget's settings
            if str(out) not in self.teachers_trained + self.teachers_reused:
                self.teachers_reused.append(str(out))
                self.log(f"  reusing teacher {spec.label or spec.model} from {out}")
            return out
        resume = (out / "checkpoint-last.pt").is_file()
        self.log(f"  {'resuming' if resume else 'training'} teacher {spec.label or spec.model}"
                 f" in {out}")
        if spec.kind == "cnn":
            train_teacher(cfg, log=_quiet, resume=resume)
        else:
            train(cfg, log=_quiet, resume=resume)
        self.teachers_trained.append(str(out))
        return out

    def run(self, spec: RunSpec, seed: int, study_dir: Path) -> dict:
        from ..train import train
        if spec.role == "teacher":
            out = self.teacher_dir(spec.teacher, seed)
            return {**collect_run(out), "run_dir": str(out)}
        out = study_dir / "runs" / f"{spec.name}-s{seed}"
        finished = (out / "summary.json").is_file()
        overrides = self.common(seed, out) + list(spec.overrides)
        if spec.teacher is not None:  # a finished run needs its teacher's name, not the teacher
            t = self.teacher_path if finished else self.teacher_dir
            overrides.append(f"teacher.name={t(spec.teacher, seed)}")
        cfg = build_config(spec.recipe or self.budget.recipe, overrides=self.with_extra(overrides))
        if finished:
            check_finished(out, cfg)
        else:
            resume = (out / "checkpoint-last.pt").is_file()
            train(cfg, log=_quiet, resume=resume)
        return {**collect_run(out), "run_dir": str(out)}


def check_finished(out: Path, cfg) -> None:
    """A finished run is reused only if it was made with the configuration asked for now
    (its teacher included: a teacher's folder name is its key); otherwise a changed study
    definition or budget would silently keep stale numbers."""
    from ..config import load_yaml_file, to_dict
    from ..train import run_changing_keys
    stored, now = load_yaml_file(out / "config.yaml"), to_dict(cfg)
    for c in (stored, now):  # a teacher is its key (folder name), wherever ROOT now lives
        if c.get("teacher", {}).get("name"):
            c["teacher"]["name"] = Path(c["teacher"]["name"]).name
    changed = run_changing_keys(stored, now)
    if changed:
        raise ConfigError(
            f"'{out}' finished with a different configuration than this study now asks for "
            f"({', '.join(changed)} differ): delete that run folder to rerun it, or use "
            "another --root")


def _quiet(*args, **kwargs) -> None:
    pass


def run_study(name: str, data: Optional[str] = None, budget: str = "tiny", seeds: int = 1,
              root: str | Path = "runs/studies", device: str = "auto", log=print,
              command: str = "", overrides: tuple = ()) -> Path:
    """Run study `name` and write its folder (results.json, PNGs, report.md); return it.

    overrides: `key=value` strings applied to every run (e.g. `data.num_workers=12`). Keys that
    change results also change the teacher keys, so such teachers are not shared with runs
    made without them."""
    from .catalog import STUDIES
    if name not in STUDIES:
        raise ConfigError(f"unknown study '{name}'; studies: {', '.join(STUDIES)}")
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget '{budget}'; budgets: {', '.join(BUDGETS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    b = BUDGETS[budget]
    data = data or b.data
    if data is None:
        raise ConfigError(f"the '{budget}' budget needs --data (e.g. the CIFAR-10 ImageFolder "
                          "tree of ../shared/data)")
    study = STUDIES[name]
    tag = Path(data).name if Path(data).expanduser().is_dir() else data
    root = Path(root)
    study_dir = root / f"{name}-{budget}-{tag}"
    study_dir.mkdir(parents=True, exist_ok=True)
    runner = StudyRunner(root, data, b, seeds, log=log, device=device, extra=tuple(overrides))
    specs = study.runs(b)
    t0 = time.perf_counter()
    results = []
    total = len(specs) * seeds
    for i, (spec, seed) in enumerate([(s, k) for s in specs for k in range(seeds)]):
        done = "(finished before)" if (study_dir / "runs" / f"{spec.name}-s{seed}" /
                                       "summary.json").is_file() else ""
        log(f"[{i + 1}/{total}] {name}: {spec.name} seed {seed} {done}".rstrip())
        r = runner.run(spec, seed, study_dir)
        results.append({"name": spec.name, "labels": spec.labels, "seed": seed,
                        "role": spec.role, "overrides": spec.overrides,
                        "teacher": None if spec.teacher is None else spec.teacher.label, **r})
    record = {"study": name, "title": study.title, "claim": study.claim, "budget": budget,
              "budget_settings": {k: v for k, v in b.__dict__.items()}, "data": data,
              "seeds": seeds, "command": command or f"deitkit study {name} --data {data} "
                                                    f"--budget {budget} --seeds {seeds}",
              "runs": results, "teachers_trained": runner.teachers_trained,
              "teachers_reused": runner.teachers_reused,
              "wall_seconds_this_invocation": time.perf_counter() - t0}
    _write_results(record, study_dir)
    log(f"{name}: report in {study_dir / 'report.md'}")
    return study_dir


def _write_results(record: dict, study_dir: Path) -> Path:
    """Analyse `record` with its study's analysis, write results.json (atomically) and render
    the PNGs and report.md from it; return report.md's path."""
    from ..checkpoint import atomic_write_text
    from ..report import write_report
    from .catalog import STUDIES
    record.update(STUDIES[record["study"]].analyze(record, study_dir))
    atomic_write_text(json.dumps(record, indent=1) + "\n", study_dir / "results.json")
    return write_report(study_dir)


def reanalyze(study_dir: str | Path) -> Path:
    """Recompute a study folder's tables, plots and findings from the runs recorded in its
    results.json (no training; the run folders are not needed) with this version's analysis,
    and rewrite the report; return report.md's path. For a study folder copied from another
    machine, or made before the analysis changed."""
    from .catalog import STUDIES
    study_dir = Path(study_dir)
    path = study_dir / "results.json"
    if not path.is_file():
        raise ConfigError(f"{study_dir} is not a study folder: no results.json in it")
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in ("study", "runs", "budget_settings") if k not in record]
    if missing:
        raise ConfigError(f"{path}: not a study's results.json (missing {', '.join(missing)})")
    if record["study"] not in STUDIES:
        raise ConfigError(f"{path}: unknown study '{record['study']}'; studies: "
                          f"{', '.join(STUDIES)}")
    for key in ("tables", "plots", "findings"):
        record.pop(key, None)
    return _write_results(record, study_dir)


StudyFn = Callable[[Budget], list]
