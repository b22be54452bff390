"""data-scale: CNN, ViT and distilled ViT against training-set size."""
from __future__ import annotations

import math
from typing import Optional
from pathlib import Path

from .spec import FULL_DEIT, Budget, RunSpec, Study, cnn_teacher, epoch_args, student_args
from .stats import (chance_note, judged, mean_of, metric, paired, pts, runs_of)


SCALE_CNN = "resnet10t"  # 4.9 M parameters, against DeiT-Tiny's 5.4 M at depth 12


def _data_scale_runs(b: Budget) -> list:
    runs = []
    for f in b.scale_fractions:
        cnn = cnn_teacher(b, f, SCALE_CNN)
        e = epoch_args(b, f, b.epochs)
        runs += [RunSpec(f"cnn-f{f:g}", {"fraction": f, "model": "CNN"}, role="teacher",
                         teacher=cnn),
                 RunSpec(f"vit-f{f:g}", {"fraction": f, "model": "ViT"},
                         [*student_args(b, False), *FULL_DEIT, "distill.kind=none",
                          f"data.train_fraction={f}", *e]),
                 RunSpec(f"distilled-f{f:g}", {"fraction": f, "model": "distilled ViT"},
                         [*student_args(b, True), *FULL_DEIT, "distill.kind=hard",
                          f"data.train_fraction={f}", *e], teacher=cnn)]
    return runs


def _crossover(xs: list, a: list, b: list) -> Optional[float]:
    """x (log-interpolated) where a - b changes sign, or None."""
    d = [x - y for x, y in zip(a, b)]
    for i in range(len(d) - 1):
        if d[i] == 0:
            return xs[i]
        if d[i] * d[i + 1] < 0:
            lx0, lx1 = math.log10(xs[i]), math.log10(xs[i + 1])
            t = d[i] / (d[i] - d[i + 1])
            return 10 ** (lx0 + t * (lx1 - lx0))
    return None


def _data_scale_analyze(record: dict, study_dir: Path) -> dict:
    fr = sorted({r["labels"]["fraction"] for r in record["runs"]})
    rows = []
    for f in fr:
        n_img = runs_of(record, f"vit-f{f:g}")[0]["summary"]["train_images"]
        rows.append([f, n_img, metric(record, f"cnn-f{f:g}", "fused_top1"),
                     metric(record, f"vit-f{f:g}", "fused_top1"),
                     metric(record, f"distilled-f{f:g}", "fused_top1")])
    xs = [r[1] for r in rows]
    cnn, vit, dis = ([mean_of(r[i]) for r in rows] for i in (2, 3, 4))
    params = {r["labels"]["model"]: r["summary"].get("parameters") for r in record["runs"]}
    findings = chance_note(record) + [
        f"Parameters: CNN ({SCALE_CNN}) {params.get('CNN', 0) / 1e6:.2f} M, ViT "
        f"{params.get('ViT', 0) / 1e6:.2f} M, distilled ViT "
        f"{params.get('distilled ViT', 0) / 1e6:.2f} M."]
    for label, line in (("ViT", vit), ("distilled ViT", dis)):
        x = _crossover(xs, line, cnn)
        if x is not None:
            findings.append(f"The {label} and the CNN cross at about {x:,.0f} training images.")
        else:
            lead = "CNN" if cnn[-1] > line[-1] else label
            findings.append(f"No crossover between the {label} and the CNN in the measured range "
                            f"({xs[0]:,} to {xs[-1]:,} images): the {lead} leads throughout.")
    d0 = paired(record, f"distilled-f{fr[0]:g}", f"vit-f{fr[0]:g}")
    d1 = paired(record, f"distilled-f{fr[-1]:g}", f"vit-f{fr[-1]:g}")
    word = {"up": "helped", "same": "within noise", "down": "hurt"}
    findings.append(f"Distillation changed the ViT's top-1 by {pts(d0)} at {xs[0]:,} images "
                    f"({judged(d0, **word)}) and {pts(d1)} at {xs[-1]:,} ({judged(d1, **word)}), "
                    "paired over seeds.")
    return {
        "tables": [{"title": "Accuracy against training-set size",
                    "columns": ["fraction", "train images", f"CNN ({SCALE_CNN})", "ViT (DeiT-Tiny)",
                                "distilled ViT"], "rows": rows}],
        "plots": [{"file": "accuracy_vs_data.png", "title": "Validation top-1 vs training images",
                   "xlabel": "training images", "ylabel": "top-1 (%)", "xlog": True,
                   "series": [{"label": lab, "x": xs, "y": [mean_of(r[i]) for r in rows],
                               "yerr": [r[i]["std"] if r[i] else 0 for r in rows]}
                              for lab, i in (("CNN", 2), ("ViT", 3), ("distilled ViT", 4))]}],
        "findings": findings}


STUDY = Study("Data scale",
              "CNNs win on small data, ViTs catch up as data grows; distillation "
              "moves the ViT's curve towards the CNN's on small data.",
              _data_scale_runs, _data_scale_analyze)
