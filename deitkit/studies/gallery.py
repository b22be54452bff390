"""The disagreement gallery: validation images on which a distilled student's two heads
disagree, with the truth and each head's and the teacher's prediction."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..config import from_dict
from ..data import build_eval_transform, load_dataset
from ..models import create_teacher, student_forward
from ..models.teacher import model_from_checkpoint
from ..report import gallery_png
from ..rundir import RunDir


def disagreement_gallery(run_dir: Path, out: Path, limit: int = 16) -> list[dict]:
    """Validation images where the class and distillation heads disagree, captioned with the
    truth and the class-head, distillation-head and teacher predictions."""
    path = RunDir(run_dir).best
    ckpt = load_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    bundle = load_dataset(cfg.data.name, cfg.data.root, False, digits_size=cfg.data.img_size)
    model = model_from_checkpoint(ckpt, path).eval()
    teacher = create_teacher(cfg.teacher.name, num_classes=bundle.num_classes) \
        if cfg.teacher.name else None
    if teacher is not None:
        teacher.set_student_input(cfg.data.mean, cfg.data.std, cfg.teacher.img_size)
    tf = build_eval_transform(cfg.aug, cfg.data.img_size, cfg.data.mean, cfg.data.std)
    val = bundle.val
    found: dict[int, list] = {}  # truth class -> disagreements, to show every class
    with torch.no_grad():
        for start in range(0, len(val), 256):
            idx = list(range(start, min(start + 256, len(val))))
            raw = [val._load(i) for i in idx]
            x = torch.stack([tf(img) for img, _ in raw])
            o = student_forward(model, x)
            c, d = o.cls_logits.argmax(-1), o.dist_logits.argmax(-1)
            t = teacher(x).argmax(-1) if teacher is not None else None
            for j, i in enumerate(idx):
                if c[j] != d[j]:
                    found.setdefault(raw[j][1], []).append({
                        "index": i, "truth": bundle.classes[raw[j][1]],
                        "class_head": bundle.classes[int(c[j])],
                        "dist_head": bundle.classes[int(d[j])],
                        "teacher": None if t is None else bundle.classes[int(t[j])],
                        "image": raw[j][0]})
    items, k = [], 0
    while len(items) < limit and any(len(v) > k for v in found.values()):
        items += [v[k] for _, v in sorted(found.items()) if len(v) > k]  # round-robin
        k += 1
    items = items[:limit]
    gallery_png(items, out)
    return [{k: v for k, v in it.items() if k != "image"} for it in items]
