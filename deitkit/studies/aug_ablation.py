"""aug-ablation: flips and crops against the full DeiT stack; leave one component out."""
from __future__ import annotations

from pathlib import Path

from .spec import FULL_DEIT, Budget, RunSpec, Study, student_args
from .stats import (agg, chance_note, curve_series, gap, judged, mean_of, metric, paired, pts,
                    runs_of, verdict)


LEAVE_ONE_OUT = [("no RandAugment", "aug.rand_augment="), ("no Mixup", "aug.mixup=0"),
                 ("no CutMix", "aug.cutmix=0"), ("no random erasing", "aug.reprob=0"),
                 ("no stochastic depth", "model.drop_path=0"),
                 ("no repeated augmentation", "aug.repeated_aug=1")]


def _slug(text: str) -> str:
    return text.replace(" ", "-")


def _aug_ablation_runs(b: Budget) -> list:
    base = [*student_args(b, False), *FULL_DEIT, "distill.kind=none"]
    runs = [RunSpec("flips-crops", {"setting": "flips and crops only"},
                    [*base, "aug.stack=light", "aug.repeated_aug=1", "model.drop_path=0"]),
            RunSpec("full", {"setting": "full DeiT stack"}, base)]
    runs += [RunSpec(_slug(label), {"setting": label}, [*base, o]) for label, o in LEAVE_ONE_OUT]
    return runs


def _components(rows: list) -> str:
    """'Mixup (-1.32 points)', or 'A (...), B (...) and C (...)' from leave-one-out rows."""
    parts = [f"{r[0].removeprefix('no ')} ({pts(r[2])})" for r in rows]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _aug_ablation_analyze(record: dict, study_dir: Path) -> dict:
    def row(name, label):
        tr, va = metric(record, name, "train_clean_top1"), metric(record, name, "fused_top1")
        return [label, tr, va, agg([gap(r["summary"]) for r in runs_of(record, name)])]
    gap_rows = [row("flips-crops", "(a) flips and crops only"),
                row("full", "(b) full DeiT stack with Mixup/CutMix")]
    full = mean_of(gap_rows[1][2])
    loo_rows = [["full recipe", gap_rows[1][2], "reference"]]
    for label, _ in LEAVE_ONE_OUT:  # change: paired over seeds with the full recipe's runs
        loo_rows.append([label, metric(record, _slug(label), "fused_top1"),
                         paired(record, _slug(label), "full")])
    light_val, light_gap, full_gap = mean_of(gap_rows[0][2]), mean_of(gap_rows[0][3]), \
        mean_of(gap_rows[1][3])
    win = paired(record, "full", "flips-crops")
    narrow = paired(record, "full", "flips-crops", gap)
    hurt = sorted([r for r in loo_rows[1:] if verdict(r[2]) < 0], key=lambda r: r[2]["mean"])
    helped = [r for r in loo_rows[1:] if verdict(r[2]) > 0]
    findings = chance_note(record) + [
        (f"The full stack reached {full:.2f}% validation top-1 against {light_val:.2f}% with "
         f"flips and crops only ({pts(win)}, paired over seeds): " + judged(win,
             up="the heavy stack won, as claimed.",
             same="within noise, no winner at this budget.",
             down="flips and crops won at this budget, contrary to the claim.")),
        (f"Its train-validation gap was {full_gap:.2f} points against {light_gap:.2f} "
         f"({pts(narrow)}): " + judged(narrow,
             down="the heavy stack regularised, as claimed.",
             same="the difference is within noise.",
             up="the heavy stack did not narrow the gap at this budget.")),
        (f"Removing {_components(hurt)} lowered validation accuracy beyond the noise: "
         f"{'that component helped' if len(hurt) == 1 else 'those components helped'}."
         if hurt else
         "No single removal lowered validation accuracy by more than the noise: at this "
         "budget the components' individual benefits are not visible."),
    ]
    if helped:
        findings.append(f"Removing {_components(helped)} raised validation accuracy beyond the "
                        "noise: at this budget " + ("that component" if len(helped) == 1 else
                                                    "those components") +
                        " hurt, contrary to the claim.")
    curves = []
    for name, label in (("flips-crops", "flips+crops"), ("full", "full DeiT")):
        curves.append(curve_series(record, name, "train_clean_top1", f"{label} train",
                                   train=True))
        curves.append(curve_series(record, name, "fused_top1", f"{label} validation"))
    return {
        "tables": [{"title": "Flips and crops vs the full DeiT stack",
                    "columns": ["setting", "train top-1 (no aug.)", "val top-1", "gap (points)"],
                    "rows": gap_rows},
                   {"title": "Leave one out (DeiT paper, Table 8 style)",
                    "columns": ["recipe", "val top-1", "change vs full (points, paired)"],
                    "rows": loo_rows}],
        "plots": [{"file": "curves.png", "title": "Training and validation accuracy",
                   "xlabel": "epoch", "ylabel": "top-1 (%)", "series": curves},
                  {"file": "leave_one_out.png", "title": "Change in validation top-1 when one "
                   "component is removed", "xlabel": "", "ylabel": "points", "kind": "bar",
                   "series": [{"label": "change", "x": [r[0] for r in loo_rows[1:]],
                               "y": [mean_of(r[2]) for r in loo_rows[1:]],
                               "yerr": [r[2]["std"] if r[2] else 0 for r in loo_rows[1:]]}]}],
        "findings": findings}


STUDY = Study("Augmentation ablation",
              "The full DeiT stack (RandAugment, Mixup, CutMix, random erasing, "
              "stochastic depth, repeated augmentation) beats flips and crops, and "
              "each component contributes.", _aug_ablation_runs, _aug_ablation_analyze)
