"""aug-strength: RandAugment magnitude against the train-validation gap."""
from __future__ import annotations

from pathlib import Path

from .spec import FULL_DEIT, RA_OFF, WEAK_BASE, Budget, RunSpec, Study, overfit_args, student_args
from .stats import (agg, chance_note, claim, curve_series, gap, judged, mean_of, metric,
                    overfits, paired, pct, pts, runs_of)


MAGNITUDES = (0, 5, 9, 14)
BEST_EXPECTED = 9   # the DeiT recipe's magnitude: the claim is that the gap narrows up to it
# and that validation falls again beyond it (at the largest magnitude)
OFF = "off"         # RandAugment off: flips and crops only. Magnitude 0 is not "off": timm's
# autocontrast, equalize and invert take no level, posterize at level 0 keeps 4 bits, and
# mstd0.5 draws levels around the magnitude (clipped at 0)
OFF_X = -3          # where "off" sits on the magnitude axis (labelled "off")
# RandAugment alone on flips and crops (WEAK_BASE): with Mixup, CutMix, erasing, repeated
# augmentation and stochastic depth also on, a DeiT-Tiny did not over-fit 1,000 CIFAR-10 images
# in 80 epochs at magnitude 0 (clean training top-1 32.5 %, validation 29.1 %; without the
# mixing 42.6 % and 31.4 %: measured), so the magnitude had little to cure; without them it is
# the one regulariser that varies


def ra_spec(m: int) -> str:
    """The RandAugment spec of magnitude `m`. timm (and the device augmentation) clip levels
    to [0, mmax], 10 by default, so a magnitude above 10 needs mmax raised or it runs as 10
    (the committed reports before this rule ran "m14" as m10); m + 1 keeps the headroom that
    m9 has under the default."""
    return f"rand-m{m}-mstd0.5-inc1" + (f"-mmax{m + 1}" if m >= 10 else "")


def _aug_strength_runs(b: Budget) -> list:
    base = [*student_args(b, False), *FULL_DEIT, *WEAK_BASE, "distill.kind=none"]
    return [RunSpec(OFF, {"magnitude": OFF}, [*base, *RA_OFF, *overfit_args(b)])] + \
        [RunSpec(f"m{m}", {"magnitude": m}, [*base, f"aug.rand_augment={ra_spec(m)}",
                                              *overfit_args(b)])
         for m in MAGNITUDES]


def _aug_strength_analyze(record: dict, study_dir: Path) -> dict:
    # "off" is in reports made since it was added; older results.json have magnitudes only
    settings = ([(OFF, OFF, OFF_X)] if runs_of(record, OFF) else []) + \
        [(f"m{m}", m, m) for m in MAGNITUDES]
    rows, xs, train_s, val_s, gaps = [], [], [], [], []
    for name, label, x in settings:
        tr, va = metric(record, name, "train_clean_top1"), metric(record, name, "fused_top1")
        g = agg([gap(r["summary"]) for r in runs_of(record, name)])
        rows.append([label, tr, va, g])
        xs.append(x)
        train_s.append(tr)
        val_s.append(va)
        gaps.append(g)
    series = [{"label": lab, "x": xs, "y": [mean_of(c) for c in cs],
               "yerr": [c["std"] if c else 0 for c in cs]}
              for lab, cs in (("train (no augmentation)", train_s), ("validation", val_s),
                              ("gap: train minus validation (points)", gaps))]
    by_name = {name: (val_s[i], gaps[i]) for i, (name, _, _) in enumerate(settings)}
    mags = [f"m{m}" for m in MAGNITUDES]
    order = sorted(mags, key=lambda n: -mean_of(by_name[n][0]))
    best, second = order[0], order[1]
    lead = paired(record, best, second)
    lo, mid, hi = "m0", f"m{BEST_EXPECTED}", f"m{MAGNITUDES[-1]}"
    gap_change = paired(record, mid, lo, gap)       # the claim: negative
    val_change = paired(record, mid, lo)            # the claim: positive
    val_beyond = paired(record, hi, mid)            # the claim: negative (too strong)
    findings = chance_note(record) + [
        f"Validation top-1 was highest at magnitude {best[1:]} ({pct(by_name[best][0])}), "
        f"{pts(lead)} above the next best (magnitude {second[1:]}) paired over seeds: " + judged(
            lead, up="beyond the noise threshold.", same="within noise.", down="within noise."),
        f"From magnitude 0 to {BEST_EXPECTED} the train-validation gap went from "
        f"{mean_of(by_name[lo][1]):.2f} to {mean_of(by_name[mid][1]):.2f} points (change "
        f"{pts(gap_change)}, paired over seeds): " + judged(
            gap_change,
            down="stronger augmentation narrowed it, as claimed.",
            same="the change is within noise, so this run neither supports nor refutes the "
                 "claim.",
            up="stronger augmentation widened it, contrary to the claim."),
        f"From magnitude 0 to {BEST_EXPECTED} validation top-1 changed by {pts(val_change)} "
        "(paired over seeds): " + judged(
            val_change, up="stronger augmentation paid off in accuracy.", same="within noise.",
            down="stronger augmentation cost accuracy at this budget (with few epochs a model "
                 "can underfit heavily augmented data)."),
        f"From magnitude {BEST_EXPECTED} to {MAGNITUDES[-1]} validation top-1 changed by "
        f"{pts(val_beyond)} (paired over seeds): " + judged(
            val_beyond, up="the largest magnitude was better still.", same="within noise.",
            down="past the recipe's magnitude, augmentation cost accuracy again."),
    ]
    if runs_of(record, OFF):
        off_val, off_gap = paired(record, lo, OFF), paired(record, lo, OFF, gap)
        findings.append(
            f"Magnitude 0 against RandAugment off (flips and crops only): validation "
            f"{pts(off_val)}, gap {pts(off_gap)} (paired over seeds; at magnitude 0 "
            "RandAugment's autocontrast, equalize, invert and posterize still change images): "
            + judged(off_val, up="that alone raised validation.", same="within noise.",
                     down="that alone cost validation."))
        rec_val, rec_gap = paired(record, mid, OFF), paired(record, mid, OFF, gap)
        findings.append(
            f"Magnitude {BEST_EXPECTED} against RandAugment off: validation {pts(rec_val)}, "
            f"gap {pts(rec_gap)} (paired over seeds): " + judged(
                rec_val, up="RandAugment paid off over flips and crops alone.",
                same="validation not distinguishable from flips and crops alone at this "
                     "budget, whatever it did to the gap.",
                down="RandAugment cost validation against flips and crops alone."))
    testable, regime = overfits(record, lo, "the student at magnitude 0")
    claims = [claim("stronger augmentation narrows the train-validation gap", gap_change, -1,
                    testable, regime, f"gap change from magnitude 0 to {BEST_EXPECTED}"),
              claim("stronger augmentation raises validation accuracy", val_change, +1,
                    testable, regime, f"validation change from magnitude 0 to "
                    f"{BEST_EXPECTED}"),
              claim("past the recipe's magnitude, validation falls again", val_beyond, -1,
                    testable, regime, f"validation change from magnitude {BEST_EXPECTED} to "
                    f"{MAGNITUDES[-1]}")]
    first = runs_of(record, lo)[0]["summary"]
    n_img, epochs = first.get("train_images"), first.get("epochs")
    tr0, va0, g0 = (mean_of(c) for c in (train_s[xs.index(0)], val_s[xs.index(0)],
                                          gaps[xs.index(0)]))
    if testable:
        advice = (f"With {n_img:,} training images and {epochs} epochs, a DeiT-Tiny at "
                  f"RandAugment magnitude 0 reached {tr0:.1f} % clean training top-1 against "
                  f"{va0:.1f} % validation ({g0:.1f} points apart). The best validation came at "
                  f"magnitude {best[1:]} ({pct(by_name[best][0])}, gap "
                  f"{mean_of(by_name[best][1]):.1f} points). On data of about this size and "
                  f"length, start at that magnitude; if your run's clean training accuracy "
                  "(`train_clean_top1`) still sits far above validation, raise the magnitude or "
                  "add data.")
    else:
        advice = (f"With {n_img:,} training images and {epochs} epochs the students did not "
                  f"over-fit (gap {g0:.1f} points at magnitude 0): they were still learning, "
                  "so augmentation had nothing to cure and can only slow them. On your data, "
                  "train until clean training accuracy pulls away from validation (the run's "
                  "regime line says so) before tuning the magnitude.")
    curves = [curve_series(record, name, "fused_top1", f"{name} validation")
              for name, _, _ in settings]
    curves += [curve_series(record, name, "train_clean_top1", f"{name} train", train=True)
               for name, _, _ in settings]
    ticks = [[x, "off" if x == OFF_X else str(x)] for x in xs]
    return {
        "tables": [{"title": "Accuracy against RandAugment magnitude",
                    "columns": ["magnitude", "train top-1 (no aug.)", "val top-1",
                                "gap (points)"], "rows": rows}],
        "plots": [{"file": "accuracy_vs_magnitude.png", "title": "Accuracy vs RandAugment "
                   "magnitude", "xlabel": "RandAugment magnitude (off: flips and crops only)",
                   "ylabel": "top-1 (%)", "xticks": ticks, "series": series},
                  {"file": "curves.png", "title": "Per-epoch accuracy", "xlabel": "epoch",
                   "ylabel": "top-1 (%)", "series": curves}],
        "findings": findings, "claims": claims, "advice": advice}


STUDY = Study("Augmentation strength (RandAugment magnitude)",
              "Stronger augmentation stands in for the inductive bias a ViT lacks: it narrows "
              f"the gap between training and validation accuracy up to the recipe's magnitude "
              f"({BEST_EXPECTED}), and beyond it validation falls again.",
              _aug_strength_runs, _aug_strength_analyze)
