"""distill-heads: what each token learns, hard against soft, and the fusion of the heads."""
from __future__ import annotations

import logging
import statistics
from pathlib import Path

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..data import DataError
from .gallery import disagreement_gallery
from .spec import Budget, RunSpec, Study, cnn_teacher, distill_aug, student_args
from .stats import (chance_note, claim, converged, judged, mean_of, metric, paired, pts, runs_of,
                    teacher_ahead)

log = logging.getLogger(__name__)


HEAD_RUNS = [("no-distill", "no distillation (DeiT without dist. token)"),
             ("class-only", "class token only (no teacher)"),
             ("dist-only", "distillation token only (teacher labels only)"),
             ("both-hard", "both tokens, hard distillation"),
             ("both-soft", "both tokens, soft distillation")]


def _distill_heads_runs(b: Budget) -> list:
    t = cnn_teacher(b, b.train_fraction)
    base = [*student_args(b, True), *distill_aug(b)]
    runs = [RunSpec("no-distill", {"setting": HEAD_RUNS[0][1]},
                    [*student_args(b, False), *distill_aug(b), "distill.kind=none"]),
            RunSpec("class-only", {"setting": HEAD_RUNS[1][1]},
                    [*base, "distill.kind=none", "distill.heads=cls"]),
            RunSpec("dist-only", {"setting": HEAD_RUNS[2][1]},
                    [*base, "distill.kind=hard", "distill.heads=dist"], teacher=t),
            RunSpec("both-hard", {"setting": HEAD_RUNS[3][1]},
                    [*base, "distill.kind=hard"], teacher=t),
            RunSpec("both-soft", {"setting": HEAD_RUNS[4][1]},
                    [*base, "distill.kind=soft", "distill.tau=3.0"], teacher=t)]
    return [r for r in runs if b.head_runs is None or r.name in b.head_runs]


def _plain(record: dict) -> tuple[str, str]:
    """The student trained without a teacher, and the metric that is its prediction: the
    no-distillation run, or where the budget skips it the class-only run's class head (its
    distillation head is untrained)."""
    return ("no-distill", "fused_top1") if runs_of(record, "no-distill") else \
        ("class-only", "cls_top1")


def _distill_heads_analyze(record: dict, study_dir: Path) -> dict:
    rows, present = [], [(n, label) for n, label in HEAD_RUNS if runs_of(record, n)]
    for name, label in present:
        cos = [r["summary"].get("token_cosine") for r in runs_of(record, name)]
        cos = [c for c in cos if c is not None]
        rows.append([label, metric(record, name, "cls_top1"), metric(record, name, "dist_top1"),
                     metric(record, name, "fused_top1"), metric(record, name, "head_agreement"),
                     round(statistics.fmean(cos), 3) if cos else None,
                     metric(record, name, "student_teacher_agreement")])
    by_name = {n: row for (n, _), row in zip(present, rows)}
    hard = dict(zip(["label", "cls", "dist", "fused", "agree", "cos", "st"], by_name["both-hard"]))
    plain, plain_key = _plain(record)
    soft_f = mean_of(metric(record, "both-soft", "fused_top1"))
    none_f = mean_of(metric(record, plain, plain_key))
    fused = mean_of(hard["fused"])
    single = "cls_top1" if mean_of(hard["cls"]) >= mean_of(hard["dist"]) else "dist_top1"
    best_single = mean_of(hard["cls" if single == "cls_top1" else "dist"])
    # paired over seeds: the fused and single-head scores of the same runs
    second = paired(record, "both-hard", "both-hard", "fused_top1", single)
    hard_soft = paired(record, "both-hard", "both-soft")
    vs_none = paired(record, "both-hard", plain, "fused_top1", plain_key)
    findings = chance_note(record) + [
        (f"With both tokens and hard distillation, the fused prediction scored {fused:.2f}% "
         f"against {best_single:.2f}% for the better single head ({pts(second)}): " + judged(
             second,
             up="the second opinion helped.",
             same="the difference is within noise.",
             down="fusing the heads did worse than the better head here.")),
        (f"The heads agreed on {mean_of(hard['agree']):.2f}% of validation images; the cosine "
         f"similarity of the two final tokens was {hard['cos']} (the paper reports 0.93 at the "
         "last layer for DeiT-B)." if hard["cos"] is not None else ""),
        (f"Hard distillation scored {fused:.2f}% and soft {soft_f:.2f}% ({pts(hard_soft)}): " +
         judged(hard_soft,
            up="hard won, as in the paper.",
            same="within noise (the paper finds hard better).",
            down="soft won here (the paper finds hard better).")),
        (f"Against the no-distillation baseline ({none_f:.2f}%"
         + ("" if plain == "no-distill" else ", the class-only run's class head")
         + f"), hard distillation changed fused top-1 by {pts(vs_none)}: " + judged(vs_none,
             up="distillation helped.", same="within noise.",
             down="distillation hurt at this budget.")),
    ]
    done, regime = converged(record, [n for n, _ in present])
    ahead, ahead_regime = teacher_ahead(record, "both-hard", plain, key=plain_key)
    testable, why = done and ahead, (f"{regime}; {ahead_regime}" if done else regime)
    # the class-only run's prediction is its class head (its distillation head is untrained:
    # its fused output would average that in and flatter "the distillation token adds")
    vs_class = paired(record, "both-hard", "class-only", "fused_top1", "cls_top1")
    claims = [claim("the distillation token adds to the class token (both tokens with a "
                    "teacher beat the class token alone)", vs_class, +1, testable, why,
                    "fused, both tokens hard minus the class-only run's class head"),
              claim("fusing the two heads beats the better single head", second, +1, testable,
                    why, "fused minus the better head, same runs"),
              claim("hard distillation beats soft (the paper's finding)", hard_soft, +1,
                    testable, why, "fused, hard minus soft")]
    hard_runs = runs_of(record, "both-hard")
    n_img = hard_runs[0]["summary"].get("train_images") if hard_runs else None
    teacher = metric(record, "both-hard", "teacher_top1")
    state = ("trained to convergence" if done else
             "stopped before converging (" + regime.split(": ", 1)[-1] + ")")
    lead = judged(
        vs_none,
        up="Distillation paid here: on data like this, train the distilled student with both "
           "tokens and predict with the fused heads: ",
        same="Distillation did not pay beyond noise here, and it costs a teacher forward pass "
             "every step: distil only with a teacher well above your student on the views it "
             "trains on, and then train with both tokens and predict with the fused heads: ",
        down="Distillation cost accuracy here: on data like this, train without a teacher or "
             "find a better one; if you distil, train with both tokens and predict with the "
             "fused heads: ")
    fusion = judged(second, up="fusion beat either head here. ",
                    same="fusion cost nothing here, though it did not beat the better head "
                         "beyond noise. ",
                    down=f"here the better single head ({single.split('_')[0]}) beat fusion, "
                         "so check both heads on your validation set. ")
    kind = judged(hard_soft, up="Prefer hard distillation.",
                  same="Hard and soft distillation were within noise here; hard is the cheaper "
                       "default.",
                  down="Soft distillation won here; try it on your data.")
    advice = (f"With {n_img:,} training images, students {state}, a CNN teacher at "
              f"{mean_of(teacher):.1f}% moved the distilled student by {pts(vs_none)} against "
              f"no distillation and by {pts(vs_class)} against the class token alone. "
              if n_img else "") + lead + fusion + kind
    gallery, gallery_error = [], None
    if hard_runs and not Path(hard_runs[0]["run_dir"]).is_dir() and record.get("gallery"):
        gallery = record["gallery"]["items"]  # re-analysed elsewhere: keep the drawn gallery
    elif hard_runs:
        try:
            gallery = disagreement_gallery(Path(hard_runs[0]["run_dir"]),
                                           study_dir / "disagreements.png")
        except (CheckpointError, ConfigError, DataError, OSError, ValueError) as e:
            # the numbers stand without the pictures; the failure is logged and reported
            gallery_error = f"{type(e).__name__}: {e}"
            log.warning("the disagreement gallery could not be drawn: %s", gallery_error)
            findings.append(f"(The disagreement gallery could not be drawn: {gallery_error}.)")
    return {
        "tables": [{"title": "Heads and fusion",
                    "columns": ["setting", "class head", "dist. head", "fused", "head agreement",
                                "token cosine", "student-teacher agreement"], "rows": rows}],
        "plots": [{"file": "heads.png", "title": "Validation top-1 by head", "kind": "bar",
                   "xlabel": "", "ylabel": "top-1 (%)",
                   "series": [{"label": head, "x": [r[0] for r in rows],
                               "y": [mean_of(r[i]) for r in rows],
                               "yerr": [r[i]["std"] if r[i] else 0 for r in rows]}
                              for head, i in (("class head", 1), ("dist. head", 2),
                                              ("fused", 3))]}],
        "gallery": {"file": "disagreements.png", "items": gallery} if gallery else None,
        **({"gallery_error": gallery_error} if gallery_error else {}),
        "findings": [f for f in findings if f], "claims": claims, "advice": advice}


STUDY = Study("Distillation heads",
              "The distillation token learns something the class token does not; "
              "fusing the two heads gives a second opinion that helps.",
              _distill_heads_runs, _distill_heads_analyze)
