"""Which regime a run ended in, in words: still learning, over-fitting, or fitted.

Computed from the clean training accuracy (a fixed subset of training images under the
evaluation transform, `train_clean_top1`), the validation accuracy, the teacher's accuracy
when there is one, and how much validation moved over the last quarter of the epochs.
"""
from __future__ import annotations

from typing import Optional

OVERFIT_GAP = 0.10      # training this far above validation: over-fitting
CEILING_GAP = 0.05      # training this far below the ceiling (teacher, else 100 %): learning
STILL_RISING = 0.01     # validation rose this much over the last quarter: still learning


def diagnose(train_clean: Optional[float], val: Optional[float], teacher: Optional[float] = None,
             last_quarter_change: Optional[float] = None) -> tuple[str, str]:
    """(regime, sentence); regime is `still learning`, `over-fitting`, `fitted` or `unknown`.
    Accuracies are fractions in [0, 1]."""
    if train_clean is None or val is None:
        return "unknown", ("unknown: no clean training accuracy was measured "
                           "(eval_train_images=0)")
    gap = train_clean - val
    ceiling, what = (teacher, "the teacher") if teacher is not None else (1.0, "100 %")
    numbers = (f"clean training top-1 {100 * train_clean:.1f} %, validation {100 * val:.1f} %"
               + (f", teacher {100 * teacher:.1f} %" if teacher is not None else ""))
    if gap > OVERFIT_GAP:
        return "over-fitting", (
            f"over-fitting: {numbers}; training is {100 * gap:.1f} points above validation, "
            "so stronger augmentation or regularisation (or more data) would help")
    rising = last_quarter_change is not None and last_quarter_change > STILL_RISING
    if ceiling - train_clean > CEILING_GAP or rising:
        why = (f"training is {100 * (ceiling - train_clean):.1f} points below {what}"
               if ceiling - train_clean > CEILING_GAP else
               f"validation still rose {100 * last_quarter_change:.1f} points over the last "
               "quarter of the epochs")
        return "still learning", (
            f"still learning: {numbers}; {why} and close to validation, so more epochs or "
            "less augmentation would help")
    return "fitted", (f"fitted: {numbers}; training is close to validation and to {what}, and "
                      "validation has levelled off")


def last_quarter_change(curve: list[dict], key: str = "fused_top1") -> Optional[float]:
    """Validation change over the last quarter of the epochs (None with under 2 evaluations
    in the run)."""
    pts = [(r["epoch"], r[key]) for r in curve if r.get(key) is not None]
    if len(pts) < 2:
        return None
    last = pts[-1][0]
    start = last - max(1, round(last / 4))
    before = [v for e, v in pts if e <= start]
    return pts[-1][1] - (before[-1] if before else pts[0][1])
