"""Statistics and wording shared by the studies' analyses: means and spreads over seeds,
paired per-seed differences, the verdict rule, and the phrases that report them.

The verdict rule (`verdict`, `claim`): a paired effect is real in one direction when its 95 %
confidence interval (t distribution over the seeds' differences) excludes 0 that way, with
at least MIN_SEEDS seeds, and counts as supporting a claim only when its mean is also at
least EFFECT_POINTS. The interval narrows with more seeds, so a small consistent effect
becomes detectable; the earlier rule (within twice the seeds' standard deviation) did not."""
from __future__ import annotations

import math
import statistics
from typing import Optional

from ..regime import last_quarter_change


def agg(values: list) -> Optional[dict]:
    """Mean and standard deviation (over seeds) of fractions, in percent."""
    vals = [100.0 * v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": round(statistics.fmean(vals), 2),
            "std": round(statistics.stdev(vals), 2) if len(vals) > 1 else 0.0, "n": len(vals)}


def runs_of(record: dict, name: str) -> list[dict]:
    return [r for r in record["runs"] if r["name"] == name]


def metric(record: dict, name: str, key: str) -> Optional[dict]:
    return agg([r["summary"].get(key) for r in runs_of(record, name)])


def mean_of(cell: Optional[dict]) -> float:
    return math.nan if cell is None else cell["mean"]


def curve_series(record: dict, name: str, key: str, label: str,
                 train: bool = False) -> dict:
    """Per-epoch mean (and spread) over seeds of metric `key` of run `name`."""
    by_epoch: dict[int, list] = {}
    for r in runs_of(record, name):
        for row in r["curve"]:
            if row.get(key) is not None:
                by_epoch.setdefault(row["epoch"], []).append(row[key])
    xs = sorted(by_epoch)
    cells = [agg(by_epoch[x]) for x in xs]
    return {"label": label, "x": xs, "y": [c["mean"] for c in cells],
            "yerr": [c["std"] for c in cells], "color_key": name,
            "linestyle": "--" if train else "-"}


NOISE_POINTS = 1.0


def gap(summary: dict) -> Optional[float]:
    """Train (un-augmented) minus validation top-1 of one run, as a fraction."""
    tr, va = summary.get("train_clean_top1"), summary.get("fused_top1")
    return None if tr is None or va is None else tr - va


def _value(summary: dict, key) -> Optional[float]:
    return key(summary) if callable(key) else summary.get(key)


def paired(record: dict, a: str, b: str, key="fused_top1", key_b=None) -> Optional[dict]:
    """Per-seed difference, run `a` minus run `b` (points), mean and std over the seeds both
    have. Runs of one seed share the training subset, the initialisation and the data order,
    so the seed-to-seed variation they share cancels in the difference; comparing
    unpaired means would let it swamp real effects (seen on CIFAR-10 at 3 seeds: one seed
    was 2-3 points above the others in every setting). `key_b` compares another metric of
    run `b` (e.g. two heads of one run)."""
    other = {r["seed"]: _value(r["summary"], key_b or key) for r in runs_of(record, b)}
    diffs = [_value(r["summary"], key) - other[r["seed"]] for r in runs_of(record, a)
             if _value(r["summary"], key) is not None and other.get(r["seed"]) is not None]
    return agg(diffs)


MIN_SEEDS = 3          # a verdict needs at least this many paired seeds
EFFECT_POINTS = 1.0    # the smallest effect that supports a claim (points of top-1)
CONFIDENCE = 0.95


def interval(diff: Optional[dict]) -> Optional[tuple[float, float]]:
    """The two-sided 95 % confidence interval (points) of a paired mean difference, from the
    t distribution over its seeds (None with fewer than 2 seeds)."""
    if diff is None or diff["n"] < 2:
        return None
    from scipy.stats import t  # scipy comes with scikit-learn
    half = float(t.ppf(0.5 + CONFIDENCE / 2, diff["n"] - 1)) * diff["std"] / math.sqrt(diff["n"])
    return diff["mean"] - half, diff["mean"] + half


def verdict(diff: Optional[dict], threshold: float = EFFECT_POINTS) -> int:
    """+1 / -1 when a paired difference is real and practical: at least MIN_SEEDS seeds, the
    95 % interval above / below 0, and the mean at least `threshold` points that way; else 0."""
    ci = interval(diff)
    if ci is None or diff["n"] < MIN_SEEDS:
        return 0
    if ci[0] > 0 and diff["mean"] >= threshold:
        return 1
    if ci[1] < 0 and diff["mean"] <= -threshold:
        return -1
    return 0


def judged(diff: Optional[dict], up: str, same: str, down: str) -> str:
    """The phrase for a paired difference above (`up`), within (`same`) or below (`down`)
    the rule of `verdict`."""
    return {1: up, 0: same, -1: down}[verdict(diff)]


def pts(diff: Optional[dict]) -> str:
    """'+1.23 ± 0.45 points' (the ± only with more than one seed)."""
    if diff is None:
        return "n/a"
    return f"{diff['mean']:+.2f}" + (f" ± {diff['std']:.2f}" if diff["n"] > 1 else "") + \
        " points"


def compare(a: float, b: float, spread: float = 0.0) -> int:
    """+1 / -1 when a is above / below b by more than the noise (1 point or twice the seeds'
    standard deviation, whichever is larger); 0 when the difference is within it."""
    if any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
        return 0
    tol = max(NOISE_POINTS, 2 * spread)
    return 0 if abs(a - b) <= tol else (1 if a > b else -1)


def chance_note(record: dict) -> list[str]:
    """A warning when every run is near chance: the budget then tests the pipeline only."""
    tops = [r["summary"].get("fused_top1") for r in record["runs"] if r["role"] == "student"]
    tops = [t for t in tops if t is not None]
    classes = max([r["summary"].get("num_classes") or 10 for r in record["runs"]])
    if tops and max(tops) < 2.0 / classes:
        return [f"Every student stayed below twice chance ({100 * max(tops):.1f}% at best, "
                f"chance {100 / classes:.0f}%): this budget checks that the study runs, it "
                "cannot test the claim."]
    return []


def pct(cell: Optional[dict]) -> str:
    return "n/a" if cell is None else f"{cell['mean']:.2f}%"


# ---------------------------------------------------------------------------------------------
# claims: one line each, opening the report

SUPPORTED, REFUTED, NOT_SHOWN = "supported", "refuted", "not shown at this budget"
OVERFIT_POINTS = 15.0      # clean training minus validation top-1: an over-fitting student
CONVERGED_POINTS = 1.0     # validation change over the last quarter of epochs: converged
MATCHED_POINTS = 2.0       # teachers this close in validation top-1: of matched accuracy


def claim(text: str, diff: Optional[dict], want: int, testable: bool, regime: str,
          effect: str) -> dict:
    """One claim's verdict from a paired effect `diff` (points; `want` +1 or -1 is the sign
    the claim predicts) in the regime the study reached (`testable`, described by `regime`):
    supported when `verdict` says `want` (interval excluding 0 that way, mean at least
    EFFECT_POINTS, MIN_SEEDS seeds); refuted when the interval excludes 0 the other way; else
    not shown."""
    ci = interval(diff)
    if not testable:
        status, why = NOT_SHOWN, regime
    elif diff is None:
        status, why = NOT_SHOWN, "no paired runs to compare"
    elif diff["n"] < MIN_SEEDS:
        status, why = NOT_SHOWN, (f"{regime}; a verdict needs at least {MIN_SEEDS} seeds "
                                  f"({diff['n']} here)")
    elif verdict(diff) == want:
        status, why = SUPPORTED, regime
    elif (ci[1] < 0) if want > 0 else (ci[0] > 0):
        status, why = REFUTED, regime
    else:
        status, why = NOT_SHOWN, (f"{regime}; the interval includes 0 or the effect is under "
                                  f"the {EFFECT_POINTS:g}-point threshold")
    c = {"claim": text, "status": status, "effect": effect, "diff": diff, "why": why,
         "interval": None if ci is None else [round(ci[0], 2), round(ci[1], 2)],
         "threshold_points": EFFECT_POINTS}
    return {**c, "line": claim_line(c)}


def claim_line(c: dict) -> str:
    """'<claim> (effect: +1.2 ± 0.3 points, 3 seeds, 95 % interval [+0.5, +1.9], threshold 1
    point). <why>.' (reports put the status first)"""
    n = f", {c['diff']['n']} seed(s)" if c.get("diff") else ""
    ci = c.get("interval")
    band = (f", 95 % interval [{ci[0]:+.2f}, {ci[1]:+.2f}], threshold "
            f"{c.get('threshold_points', EFFECT_POINTS):g} point(s)" if ci else "")
    return (f"{c['claim']} ({c['effect']}: {pts(c.get('diff'))}{n}{band}). "
            f"{c['why'][0].upper()}{c['why'][1:]}.")


def gap_points(record: dict, name: str) -> float:
    """Mean (over seeds) clean training minus validation top-1 of run `name`, in points."""
    return mean_of(agg([gap(r["summary"]) for r in runs_of(record, name)]))


def last_quarter_points(record: dict, names: list) -> float:
    """The largest (over settings `names`) absolute change of validation top-1 over the last
    quarter of the epochs, in points, each setting's change averaged over its seeds first (nan
    when a run evaluated fewer than twice). Averaged, not the largest single run: the largest
    of n noisy runs grows with n, so more seeds made the gate harder to pass (teacher-kind
    passed at 1 seed and failed at 2); the mean over seeds gets more exact instead."""
    moved = []
    for name in names:
        changes = [last_quarter_change(r.get("curve", [])) for r in runs_of(record, name)]
        if not changes or any(c is None for c in changes):
            moved.append(math.nan)
        else:
            moved.append(abs(100 * sum(changes) / len(changes)))
    return max(moved) if moved else math.nan


def converged(record: dict, names: list) -> tuple[bool, str]:
    """(every setting `names` converged, the sentence that says how much they still moved,
    mean over seeds)."""
    moved = last_quarter_points(record, names)
    if math.isnan(moved):
        return False, "convergence unknown: too few evaluations per run"
    if moved < CONVERGED_POINTS:
        return True, (f"converged: validation moved at most {moved:.2f} points over the last "
                      "quarter of the epochs (mean over seeds)")
    return False, (f"not converged: validation still moved up to {moved:.2f} points over the "
                   f"last quarter of the epochs (mean over seeds; under {CONVERGED_POINTS:g} "
                   "needed)")


TEACHER_AHEAD_POINTS = 10.0  # a distillation claim needs a teacher this far above the student


def teacher_ahead(record: dict, distilled: str, plain: str,
                  who: str = "the teacher", key: str = "fused_top1") -> tuple[bool, str]:
    """(the teacher of run `distilled` is at least TEACHER_AHEAD_POINTS above the student
    trained without one (run `plain`), the sentence); means over seeds. Below that the
    teacher has little to hand on (the quick distillation studies measured a 12-point teacher
    and distillation within noise), so claims about how to distil cannot be tested. `key`:
    the metric that is `plain`'s prediction."""
    teacher = metric(record, distilled, "teacher_top1")
    student = metric(record, plain, key)
    if teacher is None:
        return False, f"no accuracy was recorded for {who}"
    if student is None:
        return False, (f"no student trained without a teacher ('{plain}') is in this record, so "
                       f"whether {who} has anything to hand on is not known")
    lead = teacher["mean"] - student["mean"]
    if lead >= TEACHER_AHEAD_POINTS:
        return True, (f"{who} ({teacher['mean']:.1f} %) is {lead:.1f} points above the "
                      "student trained without it")
    return False, (f"{who} ({teacher['mean']:.1f} %) is only {lead:.1f} points above the "
                   f"student trained without it ({TEACHER_AHEAD_POINTS:g} needed): it has too "
                   "little to hand on to test how to distil")


def overfits(record: dict, name: str, label: str) -> tuple[bool, str]:
    """(the weakly augmented run `name` over-fits by 15 points or more, the sentence)."""
    g = gap_points(record, name)
    if math.isnan(g):
        return False, f"no clean training accuracy was measured for {label}"
    if g >= OVERFIT_POINTS:
        return True, (f"in the regime the claim needs: {label} over-fits (clean training "
                      f"top-1 {g:.1f} points above validation)")
    return False, (f"{label} does not over-fit here (clean training top-1 {g:.1f} points above "
                   f"validation; {OVERFIT_POINTS:g} needed): there is no over-fitting for "
                   "augmentation to cure at this data size and length")
