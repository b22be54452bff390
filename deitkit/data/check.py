"""`deitkit data check PATH`: scan an ImageFolder tree before training on it."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .sources import DataError


def check_dataset(path: str, min_size: int = 0, progress: bool = True) -> dict:
    """Decode every image; report images per class, bad files, modes and sizes, per split.

    Returns a dict: {split: {"classes": {name: count}, "bad": [(file, reason)], "modes": {...},
    "sizes": {"min": [w, h], "max": [w, h], "median": [w, h]}, "small": [files below min_size],
    "empty_classes": [...], "non_images": n}}, plus "problems": a list of sentences.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS
    root = Path(path).expanduser()
    splits = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if not splits:
        raise DataError(f"'{root}' has none of train/, val/, test/")
    report: dict = {"root": str(root), "problems": []}
    for split in splits:
        classes = sorted(d for d in (root / split).iterdir() if d.is_dir())
        files = [(c.name, f) for c in classes for f in sorted(c.rglob("*")) if f.is_file()]
        counts, modes, widths, heights = Counter(), Counter(), [], []
        bad, small, non_images = [], [], 0
        for cls, f in tqdm(files, desc=f"checking {split}", disable=not progress, leave=False):
            if f.suffix.lower() not in IMG_EXTENSIONS:
                non_images += 1
                continue
            try:
                with Image.open(f) as img:
                    img.load()
                    modes[img.mode] += 1
                    w, h = img.size
            except Exception as e:  # any decoder failure is a bad file; report, never crash
                bad.append((str(f), f"{type(e).__name__}: {e}"))
                continue
            counts[cls] += 1
            widths.append(w)
            heights.append(h)
            if min(w, h) < min_size:
                small.append(str(f))
        empty = [c.name for c in classes if counts[c.name] == 0]
        med = lambda v: sorted(v)[len(v) // 2] if v else None  # noqa: E731
        report[split] = {
            "classes": {c.name: counts[c.name] for c in classes}, "bad": bad,
            "modes": dict(modes), "empty_classes": empty, "non_images": non_images,
            "small": small,
            "sizes": {"min": [min(widths, default=0), min(heights, default=0)],
                      "max": [max(widths, default=0), max(heights, default=0)],
                      "median": [med(widths), med(heights)]}}
        if bad:
            report["problems"].append(f"{split}: {len(bad)} unreadable image file(s)")
        if empty:
            report["problems"].append(f"{split}: class folder(s) without readable images: "
                                      f"{', '.join(empty)}")
        if small:
            report["problems"].append(f"{split}: {len(small)} image(s) smaller than {min_size} px "
                                      "(they are upscaled/padded)")
    if "train" in splits:
        train_classes = set(report["train"]["classes"])
        for split in splits:
            extra = sorted(set(report[split]["classes"]) - train_classes)
            if extra:
                report["problems"].append(f"{split}: classes the training split lacks: {extra}")
    return report


def format_report(report: dict) -> str:
    lines = [f"dataset {report['root']}"]
    for split in ("train", "val", "test"):
        if split not in report:
            continue
        r = report[split]
        n = sum(r["classes"].values())
        lines.append(f"{split}: {n} readable images in {len(r['classes'])} classes; modes "
                     f"{r['modes']}; sizes min {r['sizes']['min']}, median {r['sizes']['median']}, "
                     f"max {r['sizes']['max']}; {r['non_images']} non-image file(s) ignored")
        for cls, c in r["classes"].items():
            lines.append(f"  {cls:<24}{c:>8}")
        for f, why in r["bad"]:
            lines.append(f"  BAD {f}: {why}")
    lines += [f"problem: {p}" for p in report["problems"]] or ["no problems found"]
    return "\n".join(lines)
