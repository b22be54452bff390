"""One self-contained HTML page per run or study: `deitkit report DIR --html`.

Plots are embedded as base64 PNG data (no network, no other file needed to view the page).
Every number in a table comes from summary.json / results.json through `report.fmt` or the
percent formatter below; each cell carries `data-key` (run pages) so that a test can read
what a person sees. Why written here: TensorBoard needs a server, and neither timm nor the
official DeiT code writes a report page.
"""
from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Optional

from .checkpoint import atomic_write_text
from .config import ConfigError
from .regime import fusion_line
from .report import fmt, plot_png
from .rundir import RunDir

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; }
.verdict { background: #f4f4f0; border-left: 4px solid #888; padding: 0.6em 1em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 12px; }
"""

# the run page's results table: label, summary key (fractions shown in percent)
RUN_ROWS = [("class head top-1", "cls_top1"), ("distillation head top-1", "dist_top1"),
            ("fused top-1", "fused_top1"), ("fused top-5", "fused_top5"),
            ("EMA fused top-1", "ema_fused_top1"), ("best fused top-1", "best_fused_top1"),
            ("clean training top-1", "train_clean_top1"), ("teacher top-1", "teacher_top1"),
            ("head agreement", "head_agreement"),
            ("student-teacher agreement", "student_teacher_agreement"),
            ("token cosine", "token_cosine")]


def percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def cell(key: str, value: float) -> str:
    """A run-table cell: fractions in percent, the token cosine as it is."""
    return f"{value:.4f}" if key == "token_cosine" else percent(value)


def _img(png: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def _plot(spec: dict) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plot.png"
        plot_png(spec, path)
        return _img(path.read_bytes(), spec["title"])


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _table(columns: list[str], rows: list[list[str]], table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _curves(metrics: list[dict]) -> list[str]:
    def series(key: str, label: str, dashed: bool = False) -> dict:
        rows = [r for r in metrics if r.get(key) is not None]
        scale = 1.0 if "loss" in key else 100.0
        return {"label": label, "x": [r["epoch"] for r in rows],
                "y": [scale * r[key] for r in rows], "linestyle": "--" if dashed else "-"}
    loss = {"title": "Training loss", "xlabel": "epoch", "ylabel": "loss", "series": [
        series("train_loss", "total"), series("train_base_loss", "class head (labels)"),
        series("train_distill_loss", "distillation head")]}
    acc = {"title": "Accuracy per head", "xlabel": "epoch", "ylabel": "top-1 (%)", "series": [
        series("cls_top1", "class head (val)"), series("dist_top1", "distillation head (val)"),
        series("fused_top1", "fused (val)"), series("ema_fused_top1", "EMA fused (val)"),
        series("train_clean_top1", "clean training", dashed=True),
        series("train_top1", "augmented training batches", dashed=True)]}
    return [_plot({**spec, "series": [s for s in spec["series"] if s["x"]]})
            for spec in (loss, acc)]


def run_page(run_dir: Path) -> str:
    rd = RunDir(run_dir)
    summary, metrics = rd.read_summary(), rd.read_metrics()
    config = rd.config.read_text() if rd.config.is_file() else ""
    rows = "".join(f"<tr><td>{label}</td><td data-key=\"{key}\">{cell(key, summary[key])}"
                   "</td></tr>" for label, key in RUN_ROWS if summary.get(key) is not None)
    title = f"{summary.get('model')} on {summary.get('dataset')}: {run_dir.name}"
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{summary.get('role')} run, {summary.get('epochs')} epochs, "
            f"{summary.get('train_images')} training / {summary.get('eval_images')} validation "
            f"images, wall time <span data-key=\"wall_seconds\">"
            f"{summary.get('wall_seconds', 0):.1f}</span> s.</p>",
            "<h2>Results</h2>",
            f"<table id=\"results\"><thead><tr><th>metric</th><th>value</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"]
    if summary.get("regime_text"):
        body.append(f"<p class=\"verdict\" id=\"regime\"><b>Regime:</b> "
                    f"{html.escape(summary['regime_text'])}</p>")
    fusion = fusion_line(summary)
    if fusion:
        body.append(f"<p id=\"fusion\">{html.escape(fusion)}</p>")
    if summary.get("ending"):
        body.append("<ul class=\"verdict\" id=\"ending\">" + "".join(
            f"<li>{html.escape(line)}</li>" for line in summary["ending"]) + "</ul>")
    body += ["<h2>Curves</h2>", *_curves(metrics),
             "<h2>Configuration</h2>", f"<pre>{html.escape(config)}</pre>"]
    return _page(title, body)


def pretrain_page(run_dir: Path) -> str:
    """A pretraining run: its facts, the loss curves, and the reconstruction grids."""
    rd = RunDir(run_dir)
    summary, metrics = rd.read_summary(), rd.read_metrics()
    config = rd.config.read_text() if rd.config.is_file() else ""

    def series(key: str, label: str) -> dict:
        rows = [r for r in metrics if r.get(key) is not None]
        return {"label": label, "x": [r["epoch"] for r in rows], "y": [r[key] for r in rows]}
    loss = {"title": "Reconstruction loss (hidden patches)", "xlabel": "epoch",
            "ylabel": "loss", "series": [s for s in (series("train_loss", "training"),
                                                     series("val_loss", "validation"))
                                         if s["x"]]}
    title = f"MAE pretraining of {summary.get('encoder')} on {summary.get('dataset')}"
    facts = [("epochs", "epochs", str(summary.get("epochs"))),
             ("training images", "train_images", str(summary.get("train_images"))),
             ("validation images", "eval_images", str(summary.get("eval_images"))),
             ("mask ratio", "mask_ratio", f"{summary.get('mask_ratio')}"),
             ("validation loss, first evaluation", "first_val_loss",
              fmt(summary.get("first_val_loss"))),
             ("validation loss, end", "val_loss", fmt(summary.get("val_loss"))),
             ("wall time (s)", "wall_seconds", f"{summary.get('wall_seconds', 0):.1f}")]
    rows = "".join(f"<tr><td>{label}</td><td data-key=\"{key}\">{html.escape(value)}</td></tr>"
                   for label, key, value in facts)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Self-supervised run folder {html.escape(run_dir.name)}: the encoder saw "
            f"{100 * (1 - summary.get('mask_ratio', 0)):.0f} % of each image's patches and "
            "learnt to paint the rest. Start a student from it with <code>deitkit train "
            f"{html.escape(' '.join(summary.get('student_keys', [])))}</code>.</p>",
            f"<table id=\"results\"><thead><tr><th>fact</th><th>value</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>", "<h2>Loss</h2>", _plot(loss),
            "<h2>Reconstructions</h2>",
            "<p>Validation images, one per row: the original, what the encoder saw (hidden "
            "patches grey), and the reconstruction (visible patches pasted back). The masks "
            "are the same at every epoch.</p>"]
    for epoch, png in rd.pictures():
        body.append(f"<figure class=\"reconstruction\" data-epoch=\"{epoch}\">"
                    + _img(png.read_bytes(), f"reconstructions after epoch {epoch}")
                    .replace("<img ", "<img style=\"image-rendering: pixelated; "
                             "max-width: 300px\" ")
                    + f"<figcaption>after epoch {epoch}</figcaption></figure>")
    body += ["<h2>Configuration</h2>", f"<pre>{html.escape(config)}</pre>"]
    return _page(title, body)


def study_page(study_dir: Path) -> str:
    res = json.loads((study_dir / "results.json").read_text())
    body = [f"<h1>{html.escape(res['title'])}</h1>"]
    if res.get("claims"):
        items = [f"<li class=\"claim {c['status'].split()[0]}\"><b>"
                 f"{html.escape(c['status'].capitalize())}:</b>"
                 f" {html.escape(c['line'])}</li>" for c in res["claims"]]
        body += ["<ul id=\"claims\">", *items, "</ul>"]
    if res.get("advice"):
        body.append(f"<p id=\"advice\"><b>What this means for your own data.</b> "
                    f"{html.escape(res['advice'])}</p>")
    body += [f"<p><b>Claim tested.</b> {html.escape(res['claim'])}</p>",
            f"<p>Command: <code>{html.escape(res['command'])}</code>; budget "
            f"<code>{html.escape(res['budget'])}</code>, {res['seeds']} seed(s) per setting."
            "</p>", "<h2>What the numbers say</h2>", "<ul id=\"findings\">",
            *[f"<li>{html.escape(f)}</li>" for f in res.get("findings", [])], "</ul>"]
    for i, t in enumerate(res.get("tables", [])):
        body += [f"<h2>{html.escape(t['title'])}</h2>",
                 _table(t["columns"], [[fmt(c) for c in row] for row in t["rows"]],
                        f"table-{i}")]
    for spec in res.get("plots", []):
        png = study_dir / spec["file"]
        body.append(_img(png.read_bytes(), spec["title"]) if png.is_file() else _plot(spec))
    gallery = res.get("gallery")
    if gallery and (study_dir / gallery["file"]).is_file():
        body += ["<h2>Where the heads disagree</h2>",
                 _img((study_dir / gallery["file"]).read_bytes(), "disagreements")]
    if res.get("gallery_error"):
        body.append(f"<p class=\"verdict\">The disagreement gallery could not be drawn: "
                    f"{html.escape(res['gallery_error'])}</p>")
    runs = [[r["name"], str(r["seed"]), percent(r["summary"].get("fused_top1")),
             str(r["summary"].get("epochs")), f"{r['summary'].get('wall_seconds', 0):.0f}"]
            for r in res["runs"]]
    body += ["<h2>Runs</h2>",
             _table(["run", "seed", "fused top-1", "epochs", "wall time (s)"], runs, "runs")]
    return _page(res["title"], body)


def write_html(folder: str | Path) -> Path:
    """Write FOLDER/report.html for a run folder or a study folder; return its path."""
    folder = Path(folder)
    if (folder / "results.json").is_file():
        text = study_page(folder)
    elif RunDir(folder).is_finished() and RunDir(folder).metrics.is_file():
        pretraining = RunDir(folder).read_summary().get("role") == "pretrain"
        text = (pretrain_page if pretraining else run_page)(folder)
    else:
        raise ConfigError(f"'{folder}' is neither a run folder (summary.json, metrics.jsonl) "
                          "nor a study folder (results.json)")
    return atomic_write_text(text, folder / "report.html")
