"""Today's `deitkit train --data DIR --time-budget MIN` against an earlier commit's, paired per
seed (issue 32), one run at a time (two trainings at once on 2 cores do not share fairly).

    python scripts/budget_compare.py DATA OUT --old-code DIR [--seeds 3] [--budget 8]

DIR holds an earlier deitkit (e.g. `git archive d989584 | tar x -C DIR`); the new one is the
package this script is run with. Each run goes to OUT/{old,new}-s{seed}; a finished one
(summary.json) is not run again, so an interrupted comparison resumes. Prints each run's
fused top-1, teacher top-1, wall time and the paired differences (new - old) with a 95 %
t interval over the seeds."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from scipy import stats


def run(data: str, out: Path, budget: float, seed: int, code: str | None) -> dict:
    if not (out / "summary.json").is_file():
        env = dict(os.environ)
        if code:
            env["PYTHONPATH"] = code
        log = out.with_suffix(".log")
        with open(log, "w") as f:
            subprocess.run([sys.executable, "-m", "deitkit", "train", "--data", data,
                            "--out", str(out), "--time-budget", str(budget), f"seed={seed}",
                            "progress=false"], env=env, stdout=f, stderr=subprocess.STDOUT,
                           check=True)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("out", type=Path)
    p.add_argument("--old-code", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=8.0)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in range(a.seeds):
        pair = {}
        for name, code in (("old", a.old_code), ("new", None)):
            s = run(a.data, a.out / f"{name}-s{seed}", a.budget, seed, code)
            pair[name] = s
            print(f"{name} seed {seed}: fused {100 * s['fused_top1']:.2f} % (cls "
                  f"{100 * s['cls_top1']:.2f}, dist {100 * s['dist_top1']:.2f}), teacher "
                  f"{100 * s['teacher_top1']:.2f} %, {s['epochs']} student epochs, "
                  f"wall {s['wall_seconds']:.0f} s, fusion weight {s.get('fusion_weight', 0.5)}",
                  flush=True)
        rows.append(pair)
    for key in ("fused_top1", "teacher_top1"):
        d = [100 * (r["new"][key] - r["old"][key]) for r in rows]
        if len(d) > 1:
            half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
            print(f"{key}: new - old = {statistics.mean(d):+.2f} points, 95 % t interval "
                  f"[{statistics.mean(d) - half:+.2f}, {statistics.mean(d) + half:+.2f}] "
                  f"({len(d)} seeds: {', '.join(f'{x:+.2f}' for x in d)})")
    gap = [100 * (r["new"]["teacher_top1"] - r["new"]["fused_top1"]) for r in rows]
    print(f"new: teacher - fused student = {statistics.mean(gap):.2f} points on average")


if __name__ == "__main__":
    main()
