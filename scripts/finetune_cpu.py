"""Issue 25's measurement on the CPU: a CNN teacher from scratch against one fine-tuned from
pretrained weights, each teaching a pretrained DeiT student, paired per seed; plus the
`cnn-finetune` recipe's choices (lr, length, layer-wise lr decay) on the teacher alone.

    python scripts/finetune_cpu.py WORK OUT [--seeds 3] [--student-epochs 20] [--code DIR]

WORK/data must hold `cifar5-pretrain` and `cifar5-finetune-500` (made by
`python scripts/imagefolder_subsets.py WORK/data --finetune-split --cifar CIFAR_TAR`). The
"pretrained" weights are made here, offline, on the five pretraining classes (disjoint from the
five fine-tuned): a DeiT-Tiny student (32 px) and an ImageNet-stem ResNet-18 (64 px). Runs
land in WORK/runs/NAME; a run with a summary.json is reused, so the script resumes where it
stopped. OUT/finetune-cpu.json gets every run's figures and the paired differences.
`--code DIR` runs another copy of deitkit (PYTHONPATH)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scipy import stats

TEACHER_PX = 64  # the ImageNet-stem CNN at twice the student's 32 px (docs/finetune.md)
CNN = ["--model", "resnet18", "model.small_stem=false", f"data.img_size={TEACHER_PX}"]
QUIET = ["eval_train_images=0", "--no-progress"]
KEPT = ("fused_top1", "cls_top1", "dist_top1", "ema_fused_top1", "teacher_top1", "epochs",
        "wall_seconds", "train_images", "eval_images")
# the cnn-finetune recipe's choices measured on the teacher alone (its defaults: lr 0.01, 10 epochs)
VARIANTS = {"lr0.003": ["optim.base_lr=0.003"], "lr0.03": ["optim.base_lr=0.03"],
            "ep5": ["--epochs", "5"], "ep20": ["--epochs", "20"],
            "ld0.7": ["optim.layer_decay=0.7"]}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def run(work: Path, name: str, argv: list[str], code: str | None, limit: int) -> dict:
    """One deitkit run into WORK/runs/NAME (reused when finished); its summary."""
    out = work / "runs" / name
    summary = out / "summary.json"
    if not summary.is_file():
        shutil.rmtree(out, ignore_errors=True)  # an interrupted run of this script: start over
        env = dict(os.environ, **({"PYTHONPATH": code} if code else {}))
        start = time.time()
        with open(work / "runs" / f"{name}.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "deitkit", *argv, "--out", str(out),
                                   *QUIET], stdout=log, stderr=subprocess.STDOUT, env=env,
                                  timeout=limit)
        if proc.returncode or not summary.is_file():
            raise SystemExit(f"{name} failed (status {proc.returncode}): see {log.name}")
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
    full = json.loads(summary.read_text())
    return {k: full[k] for k in KEPT if k in full}


def paired(a: list[float], b: list[float]) -> dict:
    d = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(d)
    half = (stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
            if len(d) > 1 else float("nan"))
    return {"mean": round(mean, 2), "ci95": [round(mean - half, 2), round(mean + half, 2)],
            "per_seed": [round(x, 2) for x in d]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--student-epochs", type=int, default=20)
    p.add_argument("--code", default=None)
    p.add_argument("--limit", type=int, default=1800, help="seconds per run at most")
    a = p.parse_args()
    (a.work / "runs").mkdir(parents=True, exist_ok=True)
    pre, ft = str(a.work / "data" / "cifar5-pretrain"), str(a.work / "data" / "cifar5-finetune-500")
    go = lambda name, argv: run(a.work, name, argv, a.code, a.limit)  # noqa: E731
    res: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "runs": {}}

    # the offline "pretrained elsewhere" weights: 10,000 images of the five other classes
    res["runs"]["pre-student"] = go("pre-student", [
        "train", "--recipe", "small-data-cpu", "--data", pre, "--epochs", "3", "distill.kind=none",
        "data.train_fraction=0.4", "data.batch_size=128", "optim.lr=1e-3",
        "optim.warmup_epochs=1", "eval_every=3", "ema.decay=0.999"])
    res["runs"]["pre-teacher"] = go("pre-teacher", [
        "teacher", "--data", pre, *CNN, "data.train_fraction=0.4", "--epochs", "4", "eval_every=4"])
    pre_s = str(a.work / "runs" / "pre-student" / "checkpoint-best.pt")
    pre_t = str(a.work / "runs" / "pre-teacher" / "checkpoint-best.pt")
    e = str(a.student_epochs)
    student = ["train", "--recipe", "finetune", "--data", ft, "--epochs", e, f"eval_every={e}",
               f"model.weights={pre_s}"]
    seeds = range(a.seeds)
    for k in seeds:  # the comparison first: the figures that matter most arrive first
        s = f"seed={k}"
        res["runs"][f"T-scratch-s{k}"] = go(f"T-scratch-s{k}", [
            "teacher", "--data", ft, *CNN, "--epochs", "30", "eval_every=30", s])
        res["runs"][f"T-ft-s{k}"] = go(f"T-ft-s{k}", [
            "teacher", "--recipe", "cnn-finetune", "--data", ft, *CNN, f"model.weights={pre_t}",
            "eval_every=10", s])
        res["runs"][f"S-none-s{k}"] = go(f"S-none-s{k}", [*student, "distill.kind=none", s])
        for t in ("scratch", "ft"):
            res["runs"][f"S-{t}-s{k}"] = go(f"S-{t}-s{k}", [
                *student, "--teacher", str(a.work / "runs" / f"T-{t}-s{k}"),
                f"teacher.img_size={TEACHER_PX}", s])
        write(a.out, res, seeds)
    for k in seeds:
        for v, extra in VARIANTS.items():
            res["runs"][f"T-ft-{v}-s{k}"] = go(f"T-ft-{v}-s{k}", [
                "teacher", "--recipe", "cnn-finetune", "--data", ft, *CNN,
                f"model.weights={pre_t}", "eval_every=20", f"seed={k}", *extra])
        write(a.out, res, seeds)
    for k in seeds:  # the finetune recipe's teacher when none is given: CIFAR ResNet-18, 32 px
        res["runs"][f"T-cifar-s{k}"] = go(f"T-cifar-s{k}", [
            "teacher", "--data", ft, "--epochs", "30", "eval_every=30", f"seed={k}"])
        write(a.out, res, seeds)


def write(out: Path, res: dict, seeds) -> None:
    runs = res["runs"]
    top = lambda name: [100 * runs[f"{name}-s{k}"]["fused_top1"]  # noqa: E731  points
                        for k in seeds if f"{name}-s{k}" in runs]
    cmp = {}
    n = len(top("S-ft"))
    if n:
        cmp["student: ft teacher - scratch teacher"] = paired(top("S-ft"), top("S-scratch")[:n])
        cmp["student: ft teacher - no teacher"] = paired(top("S-ft"), top("S-none")[:n])
        cmp["student: scratch teacher - no teacher"] = paired(top("S-scratch")[:n],
                                                              top("S-none")[:n])
        cmp["teacher: ft - scratch"] = paired(top("T-ft")[:n], top("T-scratch")[:n])
        cmp["ft teacher - student without teacher"] = paired(top("T-ft")[:n], top("S-none")[:n])
    for v in VARIANTS:
        m = len(top(f"T-ft-{v}"))
        if m:
            cmp[f"teacher: {v} - recipe default"] = paired(top(f"T-ft-{v}"), top("T-ft")[:m])
    res["paired"] = cmp
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune-cpu.json").write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
