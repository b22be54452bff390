"""Soak test for crash safety and exact resume (not run in CI).

Runs short training runs, kills each with SIGKILL at random moments, resumes it with
`deitkit train --resume`, and compares the finished run with an uninterrupted reference run:
per-epoch metrics (timings aside) and final weights must be identical.

    python scripts/soak.py --kills 50

Kills come after a wait drawn between 10 % and 120 % of the reference run's measured wall time
(start-up included), so a slow machine gets proportionally longer waits and every run still
finishes (about one wait in six outlasts a whole run); `--max-wait` fixes the longest wait.

prints: runs, kills, resumes, corrupted checkpoints (a checkpoint left by a kill that does not
load), and resumed runs whose results differ from the reference. Both of the last two must be 0;
the exit status is 1 otherwise.
"""
from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from deitkit.rundir import RunDir

TIMING = ("epoch_seconds", "images_per_second")
CONFIG = ["--no-progress", "--epochs", "4", "data.train_fraction=0.12", "data.batch_size=32",
          "model.overrides={depth: 2}", "aug.mixup=0.8", "aug.cutmix=1.0", "aug.repeated_aug=3",
          "optim.warmup_epochs=1", "--device", "cpu"]


def deitkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "deitkit", *args]


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in RunDir(run).read_metrics()]


def same(a: Path, b: Path) -> bool:
    if metrics(a) != metrics(b):
        return False
    wa = torch.load(RunDir(a).last, weights_only=True)
    wb = torch.load(RunDir(b).last, weights_only=True)
    return all(torch.equal(wa[p][k], wb[p][k]) for p in ("model", "ema") for k in wa[p])


def loads(path: Path) -> bool:
    try:
        torch.load(path, weights_only=True)
        return True
    except Exception:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50, help="stop after this many kills")
    ap.add_argument("--max-wait", type=float, default=None,
                    help="longest wait before a kill (s; default 1.2 x the reference run's "
                         "measured wall time)")
    ap.add_argument("--workers", type=int, default=0, help="data.num_workers of the runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep the run folders here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.keep or tempfile.mkdtemp(prefix="deitkit-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    common = [*CONFIG, f"data.num_workers={args.workers}"]
    teacher = root / "teacher"
    subprocess.run(deitkit("teacher", "--out", str(teacher), "--no-progress", "--epochs", "1",
                           "data.train_fraction=0.12", "--device", "cpu"), check=True,
                   stdout=subprocess.DEVNULL)
    ref = root / "reference"
    t_ref = time.perf_counter()
    subprocess.run(deitkit("train", "--out", str(ref), "--teacher", str(teacher), *common),
                   check=True, stdout=subprocess.DEVNULL)
    t_ref = time.perf_counter() - t_ref
    longest = args.max_wait or 1.2 * t_ref
    shortest = min(0.5, longest / 2) if args.max_wait else 0.1 * t_ref
    print(f"reference run: {t_ref:.1f} s; kills after {shortest:.1f}-{longest:.1f} s",
          flush=True)
    runs = kills = resumes = corrupted = differ = 0
    t0 = time.time()
    while kills < args.kills:
        runs += 1
        run = root / f"run{runs:03d}"
        cmd = deitkit("train", "--out", str(run), "--teacher", str(teacher), *common)
        while True:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                proc.wait(timeout=rng.uniform(shortest, longest))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                last = RunDir(run).last
                for ck in (last, RunDir(run).best):
                    if ck.exists() and not loads(ck):
                        corrupted += 1
                        print(f"CORRUPT after kill {kills}: {ck}", flush=True)
                # a run resumes from any moment once its config is written (before that, the
                # folder holds nothing of it and the same command starts it again)
                begun = RunDir(run).config.is_file()
                if begun:
                    cmd = deitkit("train", "--resume", str(run), "--no-progress")
                    resumes += 1
                print(f"run {runs}: kill {kills} ({'resume' if begun else 'restart'})",
                      flush=True)
                continue
            if proc.returncode != 0:
                print(proc.stderr.read().decode()[-2000:])
                print(f"run {runs} failed with exit status {proc.returncode}")
                return 1
            break
        if not same(ref, run):
            differ += 1
            print(f"DIFFERS: {run}")
        if not args.keep:
            shutil.rmtree(run)
    print(f"runs {runs}, kills {kills}, resumes {resumes}, corrupted checkpoints {corrupted}, "
          f"resumed runs differing from the uninterrupted run {differ} "
          f"({time.time() - t0:.0f} s, folders in {root})")
    return 1 if corrupted or differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
