"""Which regime a run ended in, in words: still learning, over-fitting, or fitted.

Computed from the clean training accuracy (a fixed subset of training images under the
evaluation transform, `train_clean_top1`), the validation accuracy, the teacher's accuracy
when there is one, and how much validation moved over the last quarter of the epochs.
"""
from __future__ import annotations

import math
from typing import Optional

from .distill import MEAN_WEIGHT

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


TEACHER_AHEAD = 0.03    # the CNN teacher this far above the student: said plainly at the end


def reach_epochs(curve: list[dict], target: float, key: str = "fused_top1") -> Optional[float]:
    """Epochs at which `key` would reach `target` on a line a + b ln(epoch) fitted (least
    squares) to the second half of the evaluated epochs (at least 3 points); None when the
    curve is too short or does not rise. A rough guide: a longer run follows its own schedule,
    and curves flatten faster than a logarithm once a model nears its capacity."""
    pts = [(r["epoch"], r[key]) for r in curve if r.get(key) is not None]
    pts = pts[len(pts) // 2:] if len(pts) >= 6 else pts
    if len(pts) < 3:
        return None
    xs, ys = [math.log(e) for e, _ in pts], [v for _, v in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    if b <= 1e-6:
        return None
    return math.exp(mx + (target - my) / b)


def teacher_gap(summary: dict, curve: list[dict], data: str,
                start: Optional[str] = None) -> list[str]:
    """The run's last lines when its CNN teacher beats the student by more than
    TEACHER_AHEAD: both numbers, what longer training would take by the measured curve, and
    the two starts that close such gaps (a pretrained or self-supervised encoder), with the
    commands (`start`: the weights the student already started from). [] when the student is
    within reach of its teacher (or has none)."""
    t, s = summary.get("teacher_top1"), summary.get("fused_top1")
    if t is None or s is None or t - s <= TEACHER_AHEAD:
        return []
    epochs, seconds = summary.get("epochs") or 1, summary.get("wall_seconds") or 0.0
    student_s = seconds - (summary.get("teacher_wall_seconds") or 0.0)
    lines = [f"the CNN teacher is the better model today: {100 * t:.1f} % against the "
             f"student's {100 * s:.1f} % (fused), {100 * (t - s):.1f} points, after "
             f"{epochs} student epochs ({student_s / 60:.1f} min)"]
    target = t - TEACHER_AHEAD
    need = reach_epochs(curve, target)
    per_epoch = student_s / epochs if epochs else 0.0
    if need is None:
        lines.append("training longer: the student's validation curve is too short or flat "
                     "to say how many epochs would close the gap")
    elif need <= 20 * epochs:
        extra = max(0.0, need - epochs) * per_epoch / 60
        lines.append(f"training longer: by this run's curve (log-linear in epochs; a rough "
                     f"guide) the student would reach {100 * target:.1f} % after about "
                     f"{need:.0f} epochs, about {extra:.0f} more minutes here (--time-budget)")
    else:
        lines.append(f"training longer: by this run's curve the student would need about "
                     f"{need:,.0f} epochs ({need / epochs:.0f}x this run) to come within "
                     f"{100 * TEACHER_AHEAD:.0f} points: out of reach by time alone")
    run = summary.get("run_dir", "RUN")
    if start:
        lines.append(f"the student started from {start}: longer pretraining (docs/pretrain.md) "
                     "or more labelled images are what is left to try")
    else:
            lines.append(f"a better start: self-supervised pretraining on your images, labelled "
                     f"or not (`deitkit pretrain --data {data} --out PRE`, then `deitkit train "
                     f"--data {data} model.weights=PRE`; docs/pretrain.md), or ImageNet weights "
                     f"(model.pretrained=true, or model.weights=FILE; docs/finetune.md)")
    teacher_dir = f"{run}/teacher"
    lines.append(f"until then the teacher is the model to use: `deitkit predict {teacher_dir} "
                 f"IMAGES`" if summary.get("teacher_wall_seconds") is not None else
                 "until then the teacher is the model to use")
    return lines


def fusion_line(summary: dict) -> Optional[str]:
    """How the fusion weight was chosen (None when the run held no images out)."""
    if summary.get("holdout_fused_top1") is None:
        return None
    w = summary["fusion_weight"]
    how = ("the class head alone" if w == 1.0 else "the distillation head alone" if w == 0.0
           else "the plain mean" if w == MEAN_WEIGHT else f"the class head weighted {w:g}")
    return (f"fusion: on {summary.get('holdout_images')} held-out training images the class "
            f"head scored {100 * summary['holdout_cls_top1']:.1f} %, the distillation head "
            f"{100 * summary['holdout_dist_top1']:.1f} %, their mean "
            f"{100 * summary['holdout_mean_top1']:.1f} %; predictions use {how} "
            f"({100 * summary['holdout_fused_top1']:.1f} % there)")
