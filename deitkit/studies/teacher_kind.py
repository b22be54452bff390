"""teacher-kind: a CNN teacher against a ViT teacher, across training-set sizes."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .spec import (Budget, RunSpec, Study, distill_aug, epoch_args, matched_cnn_teacher,
                   student_args, vit_teacher)
from .stats import (MATCHED_POINTS, agg, chance_note, claim, converged, judged, mean_of, metric,
                    paired, pts, runs_of, teacher_ahead)


def _teacher_kind_runs(b: Budget) -> list:
    epochs = b.teacher_kind_epochs or b.epochs
    runs, shared = [], b.teacher_fraction is not None
    for i, f in enumerate(b.fractions):
        tf = b.teacher_fraction if shared else f
        # the CNN is used at the epoch whose accuracy is closest to the ViT teacher's best
        vit = vit_teacher(b, tf, epochs)
        cnn = matched_cnn_teacher(b, tf, vit)
        if not shared or i == 0:  # the teachers' own runs, once each
            runs += [RunSpec(f"cnn-teacher-f{tf:g}", {"fraction": tf, "teacher": "cnn"},
                             role="teacher", teacher=cnn),
                     RunSpec(f"vit-teacher-f{tf:g}", {"fraction": tf, "teacher": "vit"},
                             role="teacher", teacher=vit)]
        data = [f"data.train_fraction={f}", *epoch_args(b, f, epochs)]
        student = [*student_args(b, True), *distill_aug(b), "distill.kind=hard", *data]
        runs += [RunSpec(f"student-cnn-f{f:g}", {"fraction": f, "teacher": "cnn"}, student,
                         teacher=cnn),
                 RunSpec(f"student-vit-f{f:g}", {"fraction": f, "teacher": "vit"}, student,
                         teacher=vit),
                 # the same ViT without a teacher: the kind of teacher can only matter where
                 # the teachers are well above what the student reaches on its own
                 RunSpec(f"student-none-f{f:g}", {"fraction": f, "teacher": "none"},
                         [*student_args(b, False), *distill_aug(b), "distill.kind=none", *data])]
    return runs


def _slope(xs: list, ys: list) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def _teacher_kind_analyze(record: dict, study_dir: Path) -> dict:
    # the students' fractions (the teachers may learn from a larger one, shared by all)
    fr = sorted({r["labels"]["fraction"] for r in record["runs"] if r["role"] == "student"})
    rows, adv = [], []
    for f in fr:
        # the teachers the students used (the CNN at its matched epoch), measured by the
        # students' own evaluation on the validation set
        tc, tv = metric(record, f"student-cnn-f{f:g}", "teacher_top1"), \
            metric(record, f"student-vit-f{f:g}", "teacher_top1")
        sc, sv = metric(record, f"student-cnn-f{f:g}", "fused_top1"), \
            metric(record, f"student-vit-f{f:g}", "fused_top1")
        a = agg([(c["summary"]["fused_top1"] - v["summary"]["fused_top1"])
                 for c, v in zip(runs_of(record, f"student-cnn-f{f:g}"),
                                 runs_of(record, f"student-vit-f{f:g}"))])
        n_img = runs_of(record, f"student-cnn-f{f:g}")[0]["summary"]["train_images"]
        rows.append([f, n_img, tc, tv, round(mean_of(tc) - mean_of(tv), 2), sc, sv,
                     metric(record, f"student-none-f{f:g}", "fused_top1"), a])
        adv.append(a)
    xs = [math.log10(r[1]) for r in rows]
    ys = [mean_of(a) for a in adv]
    slope = _slope(xs, ys) if len(xs) > 1 else 0.0
    signed = [r[4] for r in rows]  # CNN teacher minus ViT teacher, points
    tgap = [abs(g) for g in signed]
    shift = None
    if len(fr) > 1:  # per seed: (advantage at the largest fraction) - (at the smallest)
        def adv_by_seed(f):
            c = {r["seed"]: r["summary"]["fused_top1"]
                 for r in runs_of(record, f"student-cnn-f{f:g}")}
            return {r["seed"]: c[r["seed"]] - r["summary"]["fused_top1"]
                    for r in runs_of(record, f"student-vit-f{f:g}") if r["seed"] in c}
        first, last = adv_by_seed(fr[0]), adv_by_seed(fr[-1])
        shift = agg([last[k] - first[k] for k in last if k in first])
    matched = [abs(r[4]) <= MATCHED_POINTS for r in rows]
    done, regime = converged(record, [f"student-{k}-f{f:g}" for f in fr
                                      for k in ("cnn", "vit", "none")
                                      if runs_of(record, f"student-{k}-f{f:g}")])
    where = [i for i, m in enumerate(matched) if m]
    at = where[0] if where else 0
    match_text = (f"teachers matched within {MATCHED_POINTS:g} points at "
                  f"{', '.join(f'{rows[i][1]:,}' for i in where)} images" if where else
                  f"teachers not matched (closest {min(tgap):.2f} points apart; "
                  f"{MATCHED_POINTS:g} needed)")

    def ahead(i: int) -> tuple[bool, str]:
        # both teachers (as used) far enough above the student trained without one
        f = fr[i]
        if not runs_of(record, f"student-none-f{f:g}"):
            return False, ("no student trained without a teacher is in this record (it "
                           "predates that run), so whether the teachers have anything to "
                           "hand on is not known")
        checks = [teacher_ahead(record, f"student-{k}-f{f:g}", f"student-none-f{f:g}", kind)
                  for k, kind in (("cnn", "the CNN teacher"), ("vit", "the ViT teacher"))]
        return all(ok for ok, _ in checks), f"at {rows[i][1]:,} images " + "; ".join(
            why for _, why in checks)
    first_ok, first_why = ahead(at)
    ends = list(dict.fromkeys([ahead(0), ahead(len(fr) - 1)]))  # one line where they agree
    claims = [claim(f"a CNN teacher helps more than a ViT teacher of similar accuracy (at "
                    f"{rows[at][1]:,} images)", adv[at], +1, bool(where) and done and first_ok,
                    f"{match_text}; students {regime}; {first_why}",
                    "student with the CNN teacher minus with the ViT teacher"),
              claim("the CNN teacher's advantage shrinks as data grows", shift, -1,
                    len(fr) > 1 and matched[0] and matched[-1] and done
                    and all(ok for ok, _ in ends),
                    (f"{match_text}; students {regime}; " + "; ".join(w for _, w in ends)
                     if len(fr) > 1 else "one training-set size only"),
                    f"advantage at {rows[-1][1]:,} minus at {rows[0][1]:,} images")]
    a0 = mean_of(adv[at])
    advice = (f"At {rows[at][1]:,} training images, with teachers at {mean_of(rows[at][2]):.1f}% "
              f"(CNN) and {mean_of(rows[at][3]):.1f}% (ViT), the CNN teacher's student was "
              f"{a0:+.2f} points ahead. " + {
                  "supported": "So on data of this size, prefer a CNN teacher, even over a ViT "
                               "teacher as accurate: its convolutional bias is what the student "
                               "cannot get from its own data.",
                  "refuted": "Here the ViT teacher's student was ahead beyond noise: the CNN's "
                             "convolutional bias did not pay at this size; on your data, pick "
                             "the most accurate teacher you can afford, whatever its kind.",
              }.get(claims[0]["status"],
                    "Here the kind of teacher mattered less than the noise or the regime allows "
                    "to tell; on your data, pick the most accurate teacher you can afford."))
    lifts = [(rows[i][1], paired(record, f"student-cnn-f{f:g}", f"student-none-f{f:g}"),
              paired(record, f"student-vit-f{f:g}", f"student-none-f{f:g}"))
             for i, f in enumerate(fr)]
    teacher_images = sorted({r["summary"].get("train_images") for r in record["runs"]
                             if r["role"] == "teacher"} - {None})
    student_images = [r[1] for r in rows]
    findings = chance_note(record) + [
        (f"Both teachers learned from {teacher_images[0]:,} labelled images, a superset of the "
         f"students' {' and '.join(f'{n:,}' for n in student_images)}: a teacher that has seen "
         "more labelled data than its student, so that it has something to hand on."
         if len(teacher_images) == 1 and teacher_images[0] not in student_images else ""),
        "Against the same ViT trained without a teacher, distillation moved the student by " +
        "; ".join(f"{pts(c)} (CNN teacher) and {pts(v)} (ViT teacher) at {n:,} images"
                  for n, c, v in lifts) + "."
        if all(c and v for _, c, v in lifts) else ""] + [
        ("The CNN teacher minus the ViT teacher: " + (
            f"{signed[0]:+.2f} points of validation top-1 (one pair for every fraction"
            if len(set(signed)) == 1 else  # rows hold the gap rounded to 2 decimals
            f"{min(signed):+.2f} to {max(signed):+.2f} points of validation top-1 across "
            "fractions") + "; see the table), so the comparison is "
         + ("fair" if max(tgap) <= 3 else
            "confounded by teacher accuracy where the gap is large") + "."),
        (f"The CNN teacher's advantage (student top-1 with the CNN teacher minus with the ViT "
         f"teacher) went from {ys[0]:+.2f} points at {rows[0][1]} images to {ys[-1]:+.2f} at "
         f"{rows[-1][1]} (change {pts(shift)} paired over seeds; {slope:+.2f} points per "
         "tenfold data). The prediction \"the advantage "
         "shrinks as data grows\" " + judged(shift,
             down="held.", same="could not be decided: the change is within noise.",
             up="did not hold: the advantage grew.") +
         (" With teachers more than 3 points apart, this compares a stronger teacher with a "
          "weaker one as much as a CNN with a ViT." if max(tgap) > 3 else "")),
    ]
    return {
        "tables": [{"title": "CNN vs ViT teacher at each training-set size",
                    "columns": ["fraction", "train images", "CNN teacher (as used)",
                                "ViT teacher",
                                "teacher gap (points)", "student (CNN teacher)",
                                "student (ViT teacher)", "student (no teacher)",
                                "CNN advantage (points)"],
                    "rows": rows}],
        "plots": [{"file": "cnn_advantage.png", "title": "CNN teacher's advantage vs data size",
                   "xlabel": "training images", "ylabel": "points", "xlog": True,
                   "series": [{"label": "student(CNN teacher) - student(ViT teacher)",
                               "x": [r[1] for r in rows], "y": ys,
                               "yerr": [a["std"] if a else 0 for a in adv]}]}],
        "findings": [f for f in findings if f], "claims": claims, "advice": advice}


STUDY = Study("CNN vs ViT teacher",
              "A CNN teacher helps more than a ViT teacher of similar accuracy, and "
              "the advantage shrinks as data grows.", _teacher_kind_runs,
              _teacher_kind_analyze)
