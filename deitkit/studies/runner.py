"""Run a study's set of training runs (resumably, with shared teachers) and collect results.

A study is a list of `RunSpec`s. Each is an ordinary deitkit run (`fit` through
`pipeline.train`/`train_teacher`; no training loop of its own) in `STUDY/runs/<name>-s<seed>/`.
A run whose `summary.json` exists is finished and skipped; one with `checkpoint-last.pt` is resumed
exactly; so an interrupted study picks up where it stopped.

Teachers (and pretrained starts) are shared between runs and between studies: a `TeacherSpec`
is trained once into `ROOT/teachers/<key>/`, where the key is a digest of the data, training
fraction, model, recipe, overrides and seed; every run that needs the same one reuses that
folder (and says so).

`jobs` > 1 trains that many runs at once, each in its own (spawned) process on the same device:
teachers first, and each student as soon as the teachers it needs are trained. A DeiT-Tiny at 32 px leaves a GPU
mostly idle (launch-bound: issue 13 measured 20 % utilisation at batch 256), and concurrent
runs fill each other's gaps; on the CPU the cores are split between the jobs. Each run is the
same deterministic run as when trained alone (tested), so finished runs mix freely.
"""
from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import atomic_write_text
from ..config import ConfigError, build_config, run_changing_keys, to_dict
from ..runtime import machine_facts, quiet, resolve_device
from ..pipeline import train, train_teacher
from ..pretrain import pretrain
from ..html import write_html
from ..report import write_report
from ..rundir import RunDir
from .catalog import STUDIES
from .spec import BUDGETS, Budget, RunSpec, TeacherSpec


def run_dir(study_dir: Path, name: str, seed: int) -> Path:
    """The folder of a study's student run `name` at `seed` (finished once summary.json is in)."""
    return study_dir / "runs" / f"{name}-s{seed}"


CURVE_KEYS = ("epoch", "train_top1", "train_clean_top1", "fused_top1", "cls_top1", "dist_top1",
              "train_loss")


def collect_run(run: Path) -> dict:
    """summary.json and the per-epoch curve (metrics.jsonl) of a finished run folder."""
    rd = RunDir(run)
    curve = [{k: r.get(k) for k in CURVE_KEYS if k in r} for r in rd.read_metrics()]
    summary = rd.read_summary()
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
        out = self.teacher_path(spec, seed)
        overrides = self.common(seed, out) + [f"model.name={spec.model}", *spec.overrides]
        cfg = build_config(spec.recipe, overrides=self.with_extra(overrides))
        if RunDir(out).is_finished():
            check_finished(out, cfg)  # the key covers the spec; this also the budget's settings
            if str(out) not in self.teachers_trained + self.teachers_reused:
                self.teachers_reused.append(str(out))
                self.log(f"  reusing teacher {spec.label or spec.model} from {out}")
            return out
        resume = RunDir(out).has_last()
        self.log(f"  {'resuming' if resume else 'training'} teacher {spec.label or spec.model}"
                 f" in {out}")
        if spec.kind == "cnn":  # resume=True: continued from wherever it stopped, or begun
            train_teacher(cfg, log=quiet, resume=True)
        elif spec.kind == "mae":
            pretrain(cfg, log=quiet, resume=True)
        else:
            train(cfg, log=quiet, resume=True)
        self.teachers_trained.append(str(out))
        return out

    def teacher_ref(self, spec: TeacherSpec, seed: int, finished: bool = False) -> Path:
        """What a student's `teacher.name` is: the teacher's folder (trained unless the student
        is `finished`), or for a `match`ed spec the checkpoint of its closest accuracy."""
        get = self.teacher_path if finished else self.teacher_dir
        out = get(spec, seed)
        if spec.match is None:
            return out
        ref = get(spec.match, seed)
        path, acc, target = matched_checkpoint(out, ref)
        if not finished:
            self.log(f"  {spec.label}: epoch checkpoint {path.name} at {100 * acc:.2f}% "
                     f"(the {spec.match.label} teacher: {100 * target:.2f}%)")
        return path

    def run(self, spec: RunSpec, seed: int, study_dir: Path) -> dict:
        if spec.role == "teacher":
            out = self.teacher_dir(spec.teacher, seed)
            return {**collect_run(out), "run_dir": str(out)}
        out = run_dir(study_dir, spec.name, seed)
        finished = RunDir(out).is_finished()
        overrides = self.common(seed, out) + list(spec.overrides)
        if spec.teacher is not None:  # a finished run needs its teacher's name, not the teacher
            overrides.append(f"teacher.name={self.teacher_ref(spec.teacher, seed, finished)}")
        if spec.weights is not None:  # likewise its pretrained start
            get = self.teacher_path if finished else self.teacher_dir
            overrides.append(f"model.weights={get(spec.weights, seed)}")
        cfg = build_config(spec.recipe or self.budget.recipe, overrides=self.with_extra(overrides))
        if finished:
            check_finished(out, cfg)
        else:
            train(cfg, log=quiet, resume=True)  # continued from wherever it stopped, or begun
        return {**collect_run(out), "run_dir": str(out)}


def matched_checkpoint(teacher_dir: Path, reference_dir: Path) -> tuple[Path, float, float]:
    """(checkpoint, its validation top-1, the reference's best): of `teacher_dir`'s evaluated
    epoch checkpoints, the one whose accuracy is closest to the best of the teacher in
    `reference_dir` (the checkpoint a student of that run folder loads)."""
    target = RunDir(reference_dir).read_summary()["best_fused_top1"]
    kept = [(abs(row["fused_top1"] - target), path, row["fused_top1"])
            for path, row in RunDir(teacher_dir).rungs()]
    if not kept:
        raise ConfigError(f"'{teacher_dir}' kept no epoch checkpoints to match "
                          f"'{reference_dir}' with (it needs keep_eval_checkpoints=true)")
    _, path, acc = min(kept, key=lambda k: (k[0], k[1].name))
    return path, acc, target


def check_finished(out: Path, cfg) -> None:
    """A finished run is reused only if it was made with the configuration asked for now
    (its teacher included: a teacher's folder name is its key); otherwise a changed study
    definition or budget would silently keep stale numbers."""
    stored, now = RunDir(out).read_config(), to_dict(cfg)
    for c in (stored, now):  # a teacher (or a start) is its key (folder name), wherever ROOT
        for part, key in (("teacher", "name"), ("model", "weights")):  # now lives
            if c.get(part, {}).get(key):
                c[part][key] = Path(c[part][key]).name
    changed = run_changing_keys(stored, now)
    if changed:
        raise ConfigError(
            f"'{out}' finished with a different configuration than this study now asks for "
            f"({', '.join(changed)} differ): delete that run folder to rerun it, or use "
            "another --root")


def _train_job(setup: tuple, threads: int, spec, seed: int, study_dir: Path) -> float:
    """One run in a worker process: train teacher `spec` (a TeacherSpec) or student run `spec`
    (a RunSpec, its teacher already trained); return its wall seconds."""
    torch.set_num_threads(threads)
    root, data, budget, device, extra = setup
    runner = StudyRunner(root, data, budget, 1, log=quiet, device=device, extra=extra)
    t0 = time.perf_counter()
    if isinstance(spec, TeacherSpec):
        runner.teacher_dir(spec, seed)
    else:
        runner.run(spec, seed, study_dir)
    return time.perf_counter() - t0


def _naming_run(e: Exception, run: str) -> Exception:
    """The worker's error with the run's name in front, of the same type where it can be (so
    the CLI reports a bad configuration or data as it does for one run), else RuntimeError."""
    try:
        return type(e)(f"{run}: {e}")
    except Exception:
        return RuntimeError(f"{run} failed: {type(e).__name__}: {e}")


def _shared_models(spec: RunSpec) -> list[TeacherSpec]:
    """The shared models run `spec` uses: its teacher (after the teacher whose accuracy it is
    matched to, which must be trained first) and its pretrained start."""
    t = spec.teacher
    shared = [] if t is None else [t.match, t] if t.match else [t]
    return shared + ([spec.weights] if spec.weights is not None else [])


def _train_parallel(runner: StudyRunner, pairs: list, finished: set, study_dir: Path,
                    jobs: int, log) -> None:
    """Train every unfinished teacher and every student not in `finished` ((name, seed)) of
    `pairs` ((RunSpec, seed)) in `jobs` worker processes, teachers first, a student as soon as
    the teachers it needs are trained (one that needs none fills a slot a teacher leaves
    free); the sequential pass that follows finds them finished. A failed run stops the study
    (runs in flight finish; a rerun resumes the rest)."""
    students = [(s, k) for s, k in pairs if s.role == "student" and (s.name, k) not in finished]
    # the teachers the serial pass would train (none for finished students), each once, a
    # matched teacher's reference first: folder -> (TeacherSpec, seed); and each job's needs
    teachers, queue = {}, []
    for spec, seed in [p for p in pairs if p[0].role == "teacher"] + students:
        needs = set()
        for ts in _shared_models(spec):
            out = runner.teacher_path(ts, seed)
            if not RunDir(out).is_finished():
                teachers.setdefault(out, (ts, seed))
                needs.add(out)
        if spec.role == "student":
            queue.append((spec, seed, spec.name, needs, None))
    queue = [(ts, k, ts.label or ts.model, set(), out)
             for out, (ts, k) in teachers.items()] + queue
    setup = (runner.root, runner.data, runner.budget, runner.device, tuple(runner.extra))
    threads = max(1, torch.get_num_threads() // jobs)
    log(f"{len(teachers)} teacher(s) and {len(students)} run(s), {jobs} at a time "
        f"({threads} CPU thread(s) each); a run starts once its teachers are trained")
    trained, running = set(), {}
    # spawn: a forked child cannot use CUDA once the parent has
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while queue or running:
            while len(running) < jobs:
                job = next((j for j in queue if j[3] <= trained), None)
                if job is None:
                    break
                queue.remove(job)
                running[pool.submit(_train_job, setup, threads, job[0], job[1], study_dir)] = job
            if not running:  # every queued job waits on a teacher that is not queued
                raise RuntimeError(f"study runs wait on teachers never trained: {queue}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                _, seed, label, _, out = running.pop(f)
                try:
                    seconds = f.result()
                except Exception as e:
                    for other in running:
                        other.cancel()
                    raise _naming_run(e, f"study run '{label}' seed {seed}") from e
                if out is not None:
                    trained.add(out)
                log(f"  finished {label} seed {seed} in {seconds:.0f} s "
                    f"({len(queue) + len(running)} left)")
    runner.teachers_trained += [str(out) for out in teachers]


def _teacher_seconds(runner: StudyRunner, pairs: list, results: list) -> float:
    """Wall seconds of the teachers and pretrained starts the study's students use that are not
    runs of the study themselves (shared ones included: a study run from scratch trains them)."""
    own = {r["run_dir"] for r in results}
    used = {runner.teacher_path(ts, seed) for spec, seed in pairs for ts in _shared_models(spec)}
    return sum(RunDir(p).read_summary().get("wall_seconds") or 0.0
               for p in used if str(p) not in own and RunDir(p).is_finished())


def run_study(name: str, data: Optional[str] = None, budget: str = "tiny", seeds: int = 1,
              root: str | Path = "runs/studies", device: str = "auto", log=print,
              command: str = "", overrides: tuple = (), jobs: int = 1) -> Path:
    """Run study `name` and write its folder (results.json, PNGs, report.md); return it.

    overrides: `key=value` strings applied to every run (e.g. `data.num_workers=12`). Keys that
    change results also change the teacher keys, so such teachers are not shared with runs
    made without them. jobs: runs trained at once, each in its own process (module docstring)."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study '{name}'; studies: {', '.join(STUDIES)}")
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget '{budget}'; budgets: {', '.join(BUDGETS)}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
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
    pairs = [(s, k) for s in specs for k in range(seeds)]
    before = {(s.name, k) for s, k in pairs if RunDir(run_dir(study_dir, s.name, k)).is_finished()}
    if jobs > 1:
        _train_parallel(runner, pairs, before, study_dir, jobs, log)
    total = len(pairs)
    for i, (spec, seed) in enumerate(pairs):
        done = "(finished before)" if (spec.name, seed) in before else ""
        log(f"[{i + 1}/{total}] {name}: {spec.name} seed {seed} {done}".rstrip())
        r = runner.run(spec, seed, study_dir)
        results.append({"name": spec.name, "labels": spec.labels, "seed": seed,
                        "role": spec.role, "overrides": spec.overrides,
                        "teacher": None if spec.teacher is None else spec.teacher.label, **r})
    record = {"study": name, "title": study.title, "claim": study.claim, "budget": budget,
              "teacher_seconds": _teacher_seconds(runner, pairs, results),
              "budget_settings": {k: v for k, v in b.__dict__.items()}, "data": data,
              "seeds": seeds, "command": command or f"deitkit study {name} --data {data} "
                                                    f"--budget {budget} --seeds {seeds}",
              "runs": results, "teachers_trained": runner.teachers_trained,
              "teachers_reused": runner.teachers_reused,
              "wall_seconds_this_invocation": time.perf_counter() - t0,
              "machine": {**machine_facts(resolve_device(device)), "jobs": jobs}}
    _write_results(record, study_dir)
    write_html(study_dir)
    log(f"{name}: report in {study_dir / 'report.md'} and {study_dir / 'report.html'}")
    return study_dir


def _write_results(record: dict, study_dir: Path) -> Path:
    """Analyse `record` with its study's analysis, write results.json (atomically) and render
    the PNGs and report.md from it; return report.md's path."""
    record.update(STUDIES[record["study"]].analyze(record, study_dir))
    atomic_write_text(json.dumps(record, indent=1) + "\n", study_dir / "results.json")
    return write_report(study_dir)


def reanalyze(study_dir: str | Path) -> Path:
    """Recompute a study folder's tables, plots and findings from the runs recorded in its
    results.json (no training; the run folders are not needed) with this version's analysis,
    and rewrite the report; return report.md's path. For a study folder copied from another
    machine, or made before the analysis changed."""
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
