"""`deitkit predict MODEL INPUTS...`: top-k classes of images with a trained model.

MODEL is a run folder, a checkpoint or a safetensors export; INPUTS are image files and folders
(searched recursively). Images go through the run's evaluation transform in batches; the fused
heads answer by default. An unreadable file is reported and skipped, never a crash.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, atomic_write_text
from .config import AugConfig, Fusion
from .data import build_eval_transform
from .data.sources import load_image
from .distill import recorded_weight
from .export import FusedHeads, load_for_inference
from .runtime import resolve_device



def folder_labels(inputs: list[str], files: list[Path]) -> dict[Path, str]:
    """image -> its class folder's name, for the `files` (from `gather_images`) that lie in a
    subfolder of an input folder (one subfolder per class, as in an ImageFolder split)."""
    labels = {}
    for root in (Path(item).expanduser() for item in inputs):
        if root.is_dir():
            for f in files:
                if f.is_relative_to(root) and len(f.relative_to(root).parts) > 1:
                    labels.setdefault(f, f.relative_to(root).parts[0])
    return labels


def check_folder_classes(labels: dict[Path, str], classes: list[str], model: str) -> bool:
    """Whether the inputs are labelled with this model's class names: True when every class
    folder is one of them; False when none is (folders named otherwise, by date say: not
    labels); a mix is refused, naming the folders the model does not know (a model for other
    classes, or a misspelt folder)."""
    names = sorted(set(labels.values()))
    known = [n for n in names if n in classes]
    if not known:
        return False
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise CheckpointError(f"the input folders are labelled by class folders "
                              f"({', '.join(names)}) but '{model}' predicts {classes}: "
                              f"{', '.join(unknown)} "
                              "are not among its classes (a model for other classes, or a "
                              "misspelt folder?)")
    return True


def gather_images(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*")
                            if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise CheckpointError(f"input '{p}' is neither an image file nor a folder")
    return files


def predict(model_path: str, inputs: list[str], topk: int = 5, head: str = "fused",
            batch_size: int = 64, device: str = "auto", progress: bool = True,
            log=print) -> tuple[list[dict], list[dict]]:
    """(records, skipped): one record per readable image, {"path", "top": [{"label",
    "probability"}, ...]} best first; one {"path", "error"} per file that could not be read."""
    if head not in ("fused", "cls", "dist"):
        raise CheckpointError(f"--head must be fused, cls or dist, got {head!r}")
    for flag, value in (("--topk", topk), ("--batch-size", batch_size)):
        if value < 1:
            raise CheckpointError(f"{flag} must be at least 1, got {value}")
    model, meta = load_for_inference(model_path)
    fusion: Fusion = meta.get("fusion", "logits")
    if head != "fused" and not hasattr(model, "head_dist"):
        raise CheckpointError(f"--head {head} needs a distilled student; '{model_path}' has "
                              "one head")
    dev = resolve_device(device)
    net = FusedHeads(model, fusion, head, recorded_weight(meta)).to(dev).eval()
    tf = build_eval_transform(AugConfig(eval_crop_pct=1.0), meta["img_size"], meta["mean"],
                              meta["std"])
    classes = meta.get("classes") or [str(i) for i in range(meta["num_classes"])]
    k = min(topk, len(classes))
    files = gather_images(inputs)
    if not files:
        raise CheckpointError(f"no images found in {', '.join(inputs)}")
    labels = folder_labels(inputs, files)
    labelled = check_folder_classes(labels, classes, model_path)
    correct = scored = 0
    records, skipped = [], []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        batch, paths = [], []
        for f in files[start:start + batch_size]:
            try:
                batch.append(tf(load_image(str(f))))
                paths.append(f)
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for bad files
                skipped.append({"path": str(f), "error": f"{type(e).__name__}: {e}"})
                log(f"skipped {f}: cannot read it ({type(e).__name__}: {e})")
        bar.update(len(files[start:start + batch_size]))
        if not batch:
            continue
        with torch.no_grad():
            out = net(torch.stack(batch).to(dev)).float()           # [B, C]
        probs = out if (head == "fused" and fusion == "probs") else out.softmax(-1)
        top = probs.topk(k, dim=-1)
        for p, vals, idx in zip(paths, top.values.tolist(), top.indices.tolist()):
            records.append({"path": str(p), "top": [
                {"label": classes[i], "probability": round(v, 6)} for v, i in zip(vals, idx)]})
            if labelled and p in labels:
                scored += 1
                correct += classes[idx[0]] == labels[p]
    bar.close()
    if scored:
        log(f"labelled by class folders: top-1 {100 * correct / scored:.1f} % of {scored} "
            "images (the folder's name as the label)")
    return records, skipped


def write_predictions(records: list[dict], skipped: list[dict], json_path: Optional[str] = None,
                      csv_path: Optional[str] = None) -> None:
    if json_path:
        atomic_write_text(json.dumps({"predictions": records, "skipped": skipped}, indent=1)
                          + "\n", json_path)
    if csv_path:
        buf = io.StringIO()
        w = csv.writer(buf)
        k = max((len(r["top"]) for r in records), default=0)
        w.writerow(["path"] + [c for i in range(1, k + 1) for c in (f"label{i}", f"prob{i}")])
        for r in records:
            w.writerow([r["path"]] + [x for t in r["top"] for x in (t["label"],
                                                                     t["probability"])])
        atomic_write_text(buf.getvalue(), csv_path)


def format_predictions(records: list[dict]) -> str:
    return "\n".join(f"{r['path']}\t" + ", ".join(f"{t['label']} {100 * t['probability']:.1f}%"
                                                  for t in r["top"]) for r in records)
