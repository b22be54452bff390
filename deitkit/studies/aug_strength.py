"""aug-strength: RandAugment magnitude against the train-validation gap."""
from __future__ import annotations

from pathlib import Path

from .spec import FULL_DEIT, WEAK_BASE, Budget, RunSpec, Study, overfit_args, student_args
from .stats import (agg, chance_note, claim, curve_series, gap, judged, mean_of, metric,
                    overfits, paired, pct, pts, runs_of)


MAGNITUDES = (0, 5, 9, 14)
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
    return [RunSpec(f"m{m}", {"magnitude": m}, [*student_args(b, False), *FULL_DEIT,
                                                 *WEAK_BASE, "distill.kind=none",
                                                 f"aug.rand_augment={ra_spec(m)}",
                                                 *overfit_args(b)])
            for m in MAGNITUDES]


def _aug_strength_analyze(record: dict, study_dir: Path) -> dict:
    rows, train_s, val_s, gaps = [], [], [], []
    for m in MAGNITUDES:
        name = f"m{m}"
        tr, va = metric(record, name, "train_clean_top1"), metric(record, name, "fused_top1")
        g = agg([gap(r["summary"]) for r in runs_of(record, name)])
        rows.append([m, tr, va, g])
        train_s.append(tr)
        val_s.append(va)
        gaps.append(g)
    series = [{"label": lab, "x": list(MAGNITUDES), "y": [mean_of(c) for c in cs],
               "yerr": [c["std"] if c else 0 for c in cs]}
              for lab, cs in (("train (no augmentation)", train_s), ("validation", val_s),
                              ("gap: train minus validation (points)", gaps))]
    order = sorted(range(len(MAGNITUDES)), key=lambda i: -mean_of(val_s[i]))
    best, second = MAGNITUDES[order[0]], MAGNITUDES[order[1]]
    lead = paired(record, f"m{best}", f"m{second}")
    g0, g1 = mean_of(gaps[0]), mean_of(gaps[-1])
    change = paired(record, f"m{MAGNITUDES[-1]}", f"m{MAGNITUDES[0]}", gap)
    val_change = paired(record, f"m{MAGNITUDES[-1]}", f"m{MAGNITUDES[0]}")
    findings = chance_note(record) + [
        f"Validation top-1 was highest at magnitude {best} "
        f"({pct(val_s[MAGNITUDES.index(best)])}), {pts(lead)} above the next best "
        f"(magnitude {second}) paired over seeds: " + judged(
            lead, up="beyond the noise threshold.", same="within noise.", down="within noise."),
        f"From magnitude {MAGNITUDES[0]} to {MAGNITUDES[-1]} validation top-1 changed by "
        f"{pts(val_change)} (paired over seeds): " + judged(val_change,
            up="stronger augmentation paid off in accuracy.",
            same="within noise.",
            down="stronger augmentation cost accuracy at this budget (with few epochs a model "
                "can underfit heavily augmented data)."),
        f"The train-validation gap was {g0:.2f} points at magnitude {MAGNITUDES[0]} and "
        f"{g1:.2f} at {MAGNITUDES[-1]} (change {pts(change)}, paired over seeds): " + judged(
            change,
            down="stronger augmentation narrowed it, as claimed.",
            same="the change is within noise, so this run neither supports nor refutes the "
                 "claim.",
            up="stronger augmentation widened it, contrary to the claim."),
    ]
    testable, regime = overfits(record, f"m{MAGNITUDES[0]}",
                                f"the student at magnitude {MAGNITUDES[0]}")
    claims = [claim("stronger augmentation narrows the train-validation gap", change, -1,
                    testable, regime, f"gap change from magnitude {MAGNITUDES[0]} to "
                    f"{MAGNITUDES[-1]}"),
              claim("stronger augmentation raises validation accuracy", val_change, +1,
                    testable, regime, f"validation change from magnitude {MAGNITUDES[0]} to "
                    f"{MAGNITUDES[-1]}")]
    n_img = runs_of(record, f"m{MAGNITUDES[0]}")[0]["summary"].get("train_images")
    epochs = runs_of(record, f"m{MAGNITUDES[0]}")[0]["summary"].get("epochs")
    best_gap = mean_of(gaps[MAGNITUDES.index(best)])
    if testable:
        advice = (f"With {n_img:,} training images and {epochs} epochs, a DeiT-Tiny without "
                  f"RandAugment memorised its data ({g0:.1f} points between clean training and "
                  f"validation top-1). The best validation came at magnitude {best} "
                  f"({pct(val_s[MAGNITUDES.index(best)])}, gap {best_gap:.1f} points). On data "
                  "of about this size and length, start at that magnitude; if your run's clean "
                  "training accuracy (`train_clean_top1`) still sits far above validation, "
                  "raise the magnitude or add data.")
    else:
        advice = (f"With {n_img:,} training images and {epochs} epochs the students did not "
                  f"over-fit (gap {g0:.1f} points at magnitude {MAGNITUDES[0]}): they were "
                  "still learning, so augmentation had nothing to cure and can only slow "
                  "them. On your data, train until clean training accuracy pulls away from "
                  "validation (the run's regime line says so) before tuning the magnitude.")
    curves = [curve_series(record, f"m{m}", "fused_top1", f"m{m} validation")
              for m in MAGNITUDES]
    curves += [curve_series(record, f"m{m}", "train_clean_top1", f"m{m} train", train=True)
               for m in MAGNITUDES]
    return {
        "tables": [{"title": "Accuracy against RandAugment magnitude",
                    "columns": ["magnitude", "train top-1 (no aug.)", "val top-1",
                                "gap (points)"], "rows": rows}],
        "plots": [{"file": "accuracy_vs_magnitude.png", "title": "Accuracy vs RandAugment "
                   "magnitude", "xlabel": "magnitude", "ylabel": "top-1 (%)", "series": series},
                  {"file": "curves.png", "title": "Per-epoch accuracy", "xlabel": "epoch",
                   "ylabel": "top-1 (%)", "series": curves}],
        "findings": findings, "claims": claims, "advice": advice}


STUDY = Study("Augmentation strength (RandAugment magnitude)",
              "Stronger augmentation stands in for the inductive bias a ViT lacks: "
              "it narrows the gap between training and validation accuracy.",
              _aug_strength_runs, _aug_strength_analyze)
