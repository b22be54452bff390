"""`deitkit runs compare DIR...`: the key metrics of several run folders in one sorted table.

A DIR is a run folder (summary.json) or a folder holding run folders (a study's `runs/`, a
study folder, any parent): every run folder found below it is listed once.
"""
from __future__ import annotations

from pathlib import Path

from .config import ConfigError
from .rundir import RunDir

COLUMNS = [("fused_top1", "fused"), ("cls_top1", "class"), ("dist_top1", "dist."),
           ("ema_fused_top1", "EMA"), ("train_clean_top1", "train (clean)"),
           ("teacher_top1", "teacher"), ("epochs", "epochs"), ("wall_seconds", "wall s"),
           ("regime", "regime")]


def find_runs(dirs: list[str]) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        p = Path(d).expanduser()
        if not p.is_dir():
            raise ConfigError(f"'{p}' is not a folder")
        runs = [p] if RunDir(p).is_finished() else \
            sorted(s.parent for s in p.rglob(RunDir.SUMMARY))
        if not runs:
            raise ConfigError(f"'{p}' holds no run folder (no summary.json in or below it)")
        found += [r for r in runs if r.resolve() not in {f.resolve() for f in found}]
    return found


def compare_runs(dirs: list[str], sort: str = "fused_top1") -> list[dict]:
    """One row per run folder: its name, model, data and COLUMNS, sorted by `sort`
    (descending; runs without it last)."""
    keys = [k for k, _ in COLUMNS]
    if sort not in keys:
        raise ConfigError(f"cannot sort by '{sort}'; one of {', '.join(keys)}")
    rows = []
    for run in find_runs(dirs):
        s = RunDir(run).read_summary()
        rows.append({"run": str(run), "role": s.get("role"), "model": s.get("model"),
                     "dataset": s.get("dataset"), **{k: s.get(k) for k in keys}})
    rows.sort(key=lambda r: (r[sort] is None, -(r[sort] or 0) if not isinstance(
        r[sort], str) else r[sort]))
    return rows


def format_rows(rows: list[dict]) -> str:
    def cell(key, v):
        if v is None:
            return "n/a"
        if key.endswith("top1"):
            return f"{100 * v:.2f}"
        if key == "wall_seconds":
            return f"{v:.0f}"
        return str(v)
    header = ["run", "model"] + [label for _, label in COLUMNS]
    table = [[r["run"], str(r["model"])] + [cell(k, r[k]) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *table)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(t) for t in table])
