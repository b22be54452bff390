"""MAE pretraining on CIFAR-10 without labels, then distilled students fine-tuned on 1,000 and
5,000 labelled images, from the MAE encoder and from scratch, same teacher, same budget,
3 seeds: the measurement behind docs/pretrain.md.

    python scripts/mae_cifar.py --data /tmp/data/cifar10 --root /tmp/mae_study

Every step is a `deitkit` command into its own run folder under --root; a finished run is
kept and an interrupted one resumed, so the script can be stopped and started again. At the
end it prints (and writes ROOT/effect.json) the paired per-seed effect of the pretraining,
with its 95 % interval, per label count. Runs one thing at a time (timings stay fair).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from deitkit.rundir import RunDir
from deitkit.studies.stats import agg, interval, verdict

ENCODER = ["model.name=deit_tiny_distilled_patch16_224", "data.img_size=32",
           "model.patch_size=4", "model.overrides.depth=4"]
COMMON = ["amp=off", "data.num_workers=1"]
# small-data-cpu's DeiT rule gives lr 1.25e-4 at batch 128, made for 300-epoch runs; these
# budgets are a few hundred steps, so an absolute lr of 5e-4 and a 2-epoch warm-up, the same
# for both initialisations
STUDENT = ["optim.lr=5e-4", "optim.warmup_epochs=2"]
LABELS = {1000: 0.02, 5000: 0.1}


def deitkit(args: list[str], out: Path, log) -> dict:
    """Run `deitkit ARGS --out OUT` unless OUT is finished (resume it when interrupted)."""
    rd = RunDir(out)
    if rd.is_finished():
        return rd.read_summary()
    cmd = [sys.executable, "-m", "deitkit", *args]
    cmd += ["--resume", str(out)] if rd.has_last() else ["--out", str(out), "--overwrite"]
    log(f"$ deitkit {' '.join(cmd[3:])}")
    t0 = time.perf_counter()
    subprocess.run(cmd + ["--no-progress"], check=True)
    log(f"  {time.perf_counter() - t0:.0f} s")
    return rd.read_summary()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 ImageFolder (train/, test/)")
    ap.add_argument("--root", default="runs/mae-cifar")
    ap.add_argument("--pretrain-epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs-1000", type=int, default=30)
    ap.add_argument("--epochs-5000", type=int, default=8)
    ap.add_argument("--labels", type=int, nargs="*", default=[1000, 5000])
    a = ap.parse_args()
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    logf = open(root / "log.txt", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    mae_dir = root / f"mae-{a.pretrain_epochs}ep"
    times = {}
    t0 = time.perf_counter()
    s = deitkit(["pretrain", "--data", a.data, "--epochs", str(a.pretrain_epochs), *ENCODER,
                 *COMMON], mae_dir, log)
    times["pretrain"] = s["wall_seconds"]
    results = {"pretrain": s, "labels": {}}
    for n in a.labels:
        frac = LABELS[n]
        epochs = a.epochs_1000 if n == 1000 else a.epochs_5000
        data = ["--data", a.data, f"data.train_fraction={frac}"]
        teacher = deitkit(["teacher", *data, "--model", "resnet10t", "model.small_stem=false",
                           "--epochs", str(2 * epochs), "eval_train_images=0",
                           f"eval_every={2 * epochs}", *COMMON],
                          root / f"teacher-{n}", log)
        rows = []
        for seed in range(a.seeds):
            row = {"seed": seed}
            for init in ("scratch", "mae"):
                extra = [f"model.weights={mae_dir}"] if init == "mae" else []
                out = root / f"student-{n}-{init}-s{seed}"
                st = deitkit(["train", "--recipe", "small-data-cpu", *data, "--teacher",
                              str(root / f"teacher-{n}"), "--epochs", str(epochs),
                              "--seed", str(seed), f"eval_every={epochs}",
                              "eval_train_images=0", *STUDENT, *ENCODER, *COMMON, *extra],
                             out, log)
                row[init] = {k: st.get(k) for k in ("fused_top1", "cls_top1", "dist_top1",
                                                   "ema_fused_top1", "wall_seconds")}
            rows.append(row)
        diff = agg([r["mae"]["fused_top1"] - r["scratch"]["fused_top1"] for r in rows])  # points
        results["labels"][n] = {"teacher_top1": teacher.get("teacher_top1"),
                                "student_epochs": epochs, "runs": rows, "effect": diff,
                                "interval": interval(diff), "verdict": verdict(diff)}
        ci = interval(diff)
        log(f"{n} labels: MAE minus scratch, fused top-1: {diff['mean']:+.2f} ± "
            f"{diff['std']:.2f} points over {diff['n']} seeds"
            + (f", 95 % interval [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""))
    results["wall_seconds"] = time.perf_counter() - t0
    (root / "effect.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
