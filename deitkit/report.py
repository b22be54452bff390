"""Plots and reports built from a study folder's results.json (itself built from the run
folders' metrics.jsonl and summary.json files): `write_report(study_dir)`.

A cell in a table is a number, a string, or {"mean", "std", "n"} (percent, over seeds); it is
printed as "mean ± std" exactly as stored, so the report's numbers are results.json's numbers.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text


def fmt(cell: Any) -> str:
    if cell is None:
        return "n/a"
    if isinstance(cell, dict):
        return f"{cell['mean']:.2f} ± {cell['std']:.2f}"
    if isinstance(cell, float):
        return f"{cell:g}" if abs(cell) < 1 and cell != 0 else f"{cell:.2f}"
    return str(cell)


def markdown_table(table: dict) -> str:
    head = "| " + " | ".join(table["columns"]) + " |"
    sep = "|" + "|".join("---" for _ in table["columns"]) + "|"
    body = ["| " + " | ".join(fmt(c) for c in row) + " |" for row in table["rows"]]
    return "\n".join([head, sep, *body])


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def caption(spec: dict, seeds: int) -> str:
    """What a plot's error bars (and band) are: the spec's `errors` (default: the standard
    deviation over the seeds of the points plotted) and `band_label`."""
    has_err = any(any(e or 0 for e in (s.get("yerr") or [])) for s in spec["series"])
    text = (f"Error bars: {spec.get('errors', 'standard deviation over the seeds')}, "
            f"{seeds} seed(s)." if has_err else
            f"No error bars ({seeds} seed(s)" + (": one seed has no spread)." if seeds == 1
                                                 else "; no spread among them)."))
    if spec.get("band"):
        text += f" Shaded: {spec.get('band_label', 'the noise band')}."
    return text


def plot_png(spec: dict, out: Path, seeds: int = 1) -> None:
    """A line plot (with error bars) or a grouped bar chart from a plot spec, its caption
    (`caption`) printed under it; `band` [lo, hi] shades that y range (e.g. the claims'
    practical threshold); `xticks` [[x, label], ...] labels the x axis of a line plot."""
    plt = _plt()
    series = spec["series"]
    # more than four lines: the legend goes beside the axes, where it hides no curve
    beside = spec.get("kind") != "bar" and len(series) > 4
    fig, ax = plt.subplots(figsize=(9.0 if beside else 6.4, 4.3), dpi=90)
    if spec.get("band"):
        lo, hi = spec["band"]
        ax.axhspan(lo, hi, color="grey", alpha=0.15, linewidth=0)
    if spec.get("kind") == "bar":
        labels = series[0]["x"]
        width = 0.8 / len(series)
        for i, s in enumerate(series):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
            ys = [0 if (y is None or (isinstance(y, float) and math.isnan(y))) else y
                  for y in s["y"]]
            err = s.get("yerr")
            ax.bar(xs, ys, width=width, label=s["label"],
                   yerr=err if err and any(err) else None, capsize=3)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
    else:
        colors: dict = {}  # series with the same color_key share a colour (train/val pairs)
        for s in series:
            if not s["x"]:
                continue
            key = s.get("color_key", s["label"])
            color = colors.setdefault(key, f"C{len(colors) % 10}")
            ax.errorbar(s["x"], s["y"], yerr=s.get("yerr"), marker="o", capsize=3,
                        label=s["label"], color=color, linestyle=s.get("linestyle", "-"))
        if spec.get("xlog"):
            ax.set_xscale("log")
        if spec.get("xticks"):  # [[x, label], ...]: e.g. a setting that is not a number
            ax.set_xticks([x for x, _ in spec["xticks"]])
            ax.set_xticklabels([lab for _, lab in spec["xticks"]])
    ax.set_title(spec["title"], fontsize=10)
    ax.set_xlabel(spec.get("xlabel", ""))
    ax.set_ylabel(spec.get("ylabel", ""))
    ax.grid(alpha=0.3)
    if len(series) > 1 or spec.get("kind") != "bar":
        ax.legend(fontsize=7, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
                                 if beside else {}))
    fig.text(0.01, 0.01, caption(spec, seeds), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out)
    plt.close(fig)


def gallery_png(items: list[dict], out: Path, cols: int = 4) -> None:
    """Images with captions: truth, class head, distillation head, teacher."""
    plt = _plt()
    n = max(1, len(items))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), dpi=80,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, it in zip(axes.flat, items):
        ax.imshow(it["image"])
        ax.set_title(f"true {it['truth']}\ncls {it['class_head']} | dist {it['dist_head']}"
                     f"\nteacher {it['teacher']}", fontsize=7)
    if not items:
        axes[0][0].text(0.5, 0.5, "the heads agreed on every image", ha="center")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_report(study_dir: str | Path) -> Path:
    """Render study_dir/results.json into PNG plots and report.md; return report.md's path."""
    study_dir = Path(study_dir)
    res = json.loads((study_dir / "results.json").read_text())
    for spec in res.get("plots", []):
        plot_png(spec, study_dir / spec["file"], res.get("seeds", 1))
    b = res["budget_settings"]
    n_runs = len({(r["name"], r["seed"]) for r in res["runs"]})
    lines = [f"# {res['title']}", ""]
    lines += [f"- **{c['status'].capitalize()}:** {c['line']}" for c in res.get("claims", [])]
    if res.get("advice"):
        lines += ["", "**What this means for your own data.** " + res["advice"]]
    lines += ["", f"**Claim tested.** {res['claim']}", "",
             f"Command: `{res['command']}`", "",
             f"Budget `{res['budget']}`: data `{res['data']}`, {b['img_size']} px, DeiT-Tiny "
             f"students with {b['depth']} blocks at patch {b['patch_size']}, "
             f"{_sizes(res)}, batch {b['batch_size']}. "
             f"{n_runs} runs, **{res['seeds']} seed(s) per setting**; cells are mean ± standard "
             f"deviation over seeds, top-1 in percent. Training accuracy is measured on up to "
             f"{b['eval_train_images']} training images without augmentation. "
             f"{compute_line(res)}", "",
             "## What the numbers say", ""]
    lines += [f"- {f}" for f in res.get("findings", [])]
    lines.append("")
    for t in res.get("tables", []):
        lines += [f"## {t['title']} ({res['seeds']} seed(s))", "", markdown_table(t), ""]
    for spec in res.get("plots", []):
        lines += [f"![{spec['title']}]({spec['file']})", "",
                  f"*{caption(spec, res.get('seeds', 1))}*", ""]
    g = res.get("gallery")
    if g:
        lines += ["## Where the heads disagree", "",
                  f"Validation images where the class head and the distillation head disagree "
                  f"(first {len(g['items'])}, from the run `{Path(_first_dir(res)).name}`).", "",
                  f"![disagreements]({g['file']})", ""]
    if res.get("teachers_trained") or res.get("teachers_reused"):
        lines += ["## Teachers", "",
                  f"Trained for this invocation: {len(res.get('teachers_trained', []))}; "
                  f"reused from earlier runs: {len(res.get('teachers_reused', []))} "
                  "(teachers are shared between studies, keyed by data, fraction, recipe and "
                  "seed).", ""]
    lines += ["## Runs", "", "| run | seed | fused top-1 | epochs | wall time (s) | folder |",
              "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        s = r["summary"]
        top1 = "n/a" if s.get("fused_top1") is None else f"{100 * s['fused_top1']:.2f}"
        lines.append(f"| {r['name']} | {r['seed']} | {top1} | {s.get('epochs')} | "
                     f"{s.get('wall_seconds', 0):.0f} | `{r['run_dir']}` |")
    path = study_dir / "report.md"
    atomic_write_text("\n".join(lines) + "\n", path)
    return path


CIFAR10_TRAIN = 50_000  # images in one CIFAR-10 training epoch, the unit of a study's compute
AMP_WORDS = {"off": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}  # summary "amp"


def compute_line(res: dict) -> str:
    """The compute the recorded runs took: CIFAR-10-epoch equivalents (epochs x training
    images / 50,000, summed) and wall time (their own, summed, plus the teachers they use that
    are not runs of the study, where recorded), the elapsed time that makes with the last
    invocation's runs at a time, and whether it fits the budget's target."""
    runs = {(r["name"], r["seed"]): r["summary"] for r in res["runs"]}
    equiv = sum((s.get("epochs") or 0) * (s.get("train_images") or 0)
                for s in runs.values()) / CIFAR10_TRAIN
    wall = sum(s.get("wall_seconds") or 0 for s in runs.values())
    m = res.get("machine")  # recorded since 2026-12-07; the last invocation's machine
    where = (f" Last run on {m.get('gpu') or m['cpu']} ({m['isa']} CPU code, {m['threads']} "
             f"thread(s), torch {m['torch']}), {m.get('jobs', 1)} run(s) at a time."
             if m else "")
    # the precision each run trained in (recorded in summary.json since 2026-12-07)
    amps = Counter(AMP_WORDS.get(s["amp"], s["amp"]) for s in runs.values() if s.get("amp"))
    prec = (" Precision: " + ", ".join(f"{a} ({n} run{'s' if n > 1 else ''})"
                                       for a, n in sorted(amps.items())) + "." if amps else "")
    line = (f"Compute of the {len(runs)} runs: {equiv:,.1f} CIFAR-10-epoch equivalents (epochs "
            f"x training images / {CIFAR10_TRAIN:,}), {wall / 60:,.1f} min of their wall time "
            "summed")
    teachers = res.get("teacher_seconds")  # recorded since 2026-12-07
    if teachers is None:
        return line + " (teachers shared with other runs not counted)." + where + prec
    jobs = (m or {}).get("jobs", 1)
    elapsed = (wall + teachers) / 60 / jobs
    line += (f", plus {teachers / 60:,.1f} min for the teachers they use that are not runs of "
             "the study (trained once, shared between studies). From scratch that is about "
             f"{elapsed:,.1f} min elapsed " +
             ("one run at a time (the sum" if jobs == 1 else
              f"{jobs} runs at a time (the sum divided by {jobs}") +
             "; estimated from the runs, not timed end to end)")
    target = res["budget_settings"].get("minutes_target")
    if target and res.get("seeds") == 3:
        fits = ("within it" if elapsed <= target else
                f"**above it by {elapsed - target:,.1f} min**")
        line += f"; the `{res['budget']}` budget's target is {target:g} min at 3 seeds: {fits}"
    return line + "." + where + prec


def _sizes(res: dict) -> str:
    """'160 epochs on 500 training images' (what this study's students ran; the sizes of a
    budget differ between studies)."""
    students = [r["summary"] for r in res["runs"] if r["role"] == "student"]
    pairs = sorted({(s.get("epochs"), s.get("train_images")) for s in students},
                   key=lambda p: (p[1] or 0))
    return ", ".join(f"{e} epochs on {n:,} training images" for e, n in pairs
                     if e is not None and n is not None) or "no student runs"


def _first_dir(res: dict) -> str:
    for r in res["runs"]:
        if r["name"] == "both-hard":
            return r["run_dir"]
    return ""
