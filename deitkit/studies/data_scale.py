"""data-scale: CNN, ViT and distilled ViT against training-set size."""
from __future__ import annotations

import math
from typing import Optional
from pathlib import Path

from .spec import Budget, RunSpec, Study, cnn_teacher, distill_aug, epoch_args, student_args
from .stats import (agg, chance_note, claim, converged, judged, mean_of, metric, paired, pts,
                    runs_of)


SCALE_CNN = "resnet10t"
# its stage widths per student depth, so that CNN and ViT have about as many parameters (the
# claim compares architectures, not sizes; 10 classes): at 6 blocks (quick, gpu) the DeiT-Tiny
# has 2.71 M and resnet10t at three quarters of its width 2.77 M; at 2 blocks (tiny) 0.93 M
# against 0.95 M; at 12 (full) 5.4 M against timm's full width, 4.93 M. The reports before
# this rule compared a full-width resnet10t (4.93 M) with the 2.71-M ViT.
SCALE_CNN_WIDTHS = {2: (28, 56, 112, 224), 6: (48, 96, 192, 384)}
MATCHED_SIZE = 1.25  # CNN and ViT within this factor of parameters: of similar size


def scale_cnn_overrides(b: Budget) -> tuple:
    widths = SCALE_CNN_WIDTHS.get(b.depth)
    if widths is None:
        return ()
    return (f"model.overrides={{channels: [{', '.join(map(str, widths))}], "
            f"stem_width: {widths[0] // 2}}}",)


def _data_scale_runs(b: Budget) -> list:
    runs = []
    for f in b.scale_fractions:
        cnn = cnn_teacher(b, f, SCALE_CNN, scale_cnn_overrides(b))
        e = epoch_args(b, f, b.epochs)
        runs += [RunSpec(f"cnn-f{f:g}", {"fraction": f, "model": "CNN"}, role="teacher",
                         teacher=cnn),
                 RunSpec(f"vit-f{f:g}", {"fraction": f, "model": "ViT"},
                         [*student_args(b, False), *distill_aug(b), "distill.kind=none",
                          f"data.train_fraction={f}", *e]),
                 RunSpec(f"distilled-f{f:g}", {"fraction": f, "model": "distilled ViT"},
                         [*student_args(b, True), *distill_aug(b), "distill.kind=hard",
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


def _similar_size(cnn: Optional[int], vit: Optional[int]) -> tuple[bool, str]:
    """(CNN and ViT within MATCHED_SIZE of each other's parameter count, the sentence)."""
    if not cnn or not vit:
        return False, "the parameter counts were not recorded"
    ratio = max(cnn, vit) / min(cnn, vit)
    sizes = f"CNN {cnn / 1e6:.2f} M and ViT {vit / 1e6:.2f} M parameters"
    if ratio <= MATCHED_SIZE:
        return True, f"{sizes}: of similar size"
    return False, (f"{sizes} ({ratio:.2f}x; within {MATCHED_SIZE:g}x needed): a shrinking "
                   "deficit would compare sizes, not architectures")


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
    done, regime = converged(record, [f"{k}-f{f:g}" for f in fr for k in ("cnn", "vit", "distilled")])
    small = paired(record, f"cnn-f{fr[0]:g}", f"vit-f{fr[0]:g}")
    # per seed: (ViT - CNN at the largest size) - (ViT - CNN at the smallest)
    def lead(f):
        c = {r["seed"]: r["summary"]["fused_top1"] for r in runs_of(record, f"cnn-f{f:g}")}
        return {r["seed"]: r["summary"]["fused_top1"] - c[r["seed"]]
                for r in runs_of(record, f"vit-f{f:g}") if r["seed"] in c}
    l0, l1 = lead(fr[0]), lead(fr[-1])
    catch_up = agg([l1[k] - l0[k] for k in l1 if k in l0]) if len(fr) > 1 else None
    x_vit = _crossover(xs, vit, cnn)
    sized, size_regime = _similar_size(params.get("CNN"), params.get("ViT"))
    claims = [claim("CNNs win on small data", small, +1, done, f"students {regime}",
                    f"CNN minus ViT at {xs[0]:,} images"),
              claim("the ViT's deficit to the CNN shrinks as data grows", catch_up, +1,
                    done and len(fr) > 1 and sized,
                    f"students {regime}; {size_regime}" if done else f"students {regime}",
                    f"ViT minus CNN at {xs[-1]:,} images, minus the same at {xs[0]:,}"),
              claim("distillation moves the ViT towards the CNN on small data", d0, +1, done,
                    f"students {regime}", f"distilled minus plain ViT at {xs[0]:,} images")]
    best = max(("CNN", cnn), ("ViT", vit), ("distilled ViT", dis), key=lambda kv: kv[1][-1])
    advice = (f"From {xs[0]:,} to {xs[-1]:,} training images the CNN went from {cnn[0]:.1f}% to "
              f"{cnn[-1]:.1f}%, the ViT from {vit[0]:.1f}% to {vit[-1]:.1f}% and the distilled "
              f"ViT from {dis[0]:.1f}% to {dis[-1]:.1f}%. With about {xs[-1]:,} images of your "
              f"own, the {best[0]} is the one to start from" +
              (f"; below about {x_vit:,.0f} images prefer the CNN." if x_vit is not None else
               "; " + ("the ViT already leads here." if best[0] == "ViT" else judged(
                   d1, up=f"distil a ViT from a CNN if you want a ViT at this size (it added "
                          f"{pts(d1)} here).",
                   same="if you want a ViT at this size, distillation from this CNN did not "
                        "lift it beyond noise here: train it on labels, or distil from a "
                        "stronger teacher.",
                   down=f"if you want a ViT at this size, train it on labels: distillation "
                        f"from this CNN cost it {pts(d1)} here."))))
    return {
        "tables": [{"title": "Accuracy against training-set size",
                    "columns": ["fraction", "train images", f"CNN ({SCALE_CNN})", "ViT (DeiT-Tiny)",
                                "distilled ViT"], "rows": rows}],
        "plots": [{"file": "accuracy_vs_data.png", "title": "Validation top-1 vs training images",
                   "xlabel": "training images", "ylabel": "top-1 (%)", "xlog": True,
                   "series": [{"label": lab, "x": xs, "y": [mean_of(r[i]) for r in rows],
                               "yerr": [r[i]["std"] if r[i] else 0 for r in rows]}
                              for lab, i in (("CNN", 2), ("ViT", 3), ("distilled ViT", 4))]}],
        "findings": findings, "claims": claims, "advice": advice}


STUDY = Study("Data scale",
              "CNNs win on small data and the ViT's deficit to a CNN of its size shrinks "
              "as data grows; distillation moves the ViT's curve towards the CNN's on small "
              "data.",
              _data_scale_runs, _data_scale_analyze)
