"""`deitkit eval`: every metric of `engine.evaluate` for any deitkit checkpoint."""
from __future__ import annotations

from typing import Optional

import torch

from .checkpoint import CheckpointError, load_checkpoint
from .config import from_dict, replace_keys
from .data import build_eval_transform, load_dataset
from .distill import MEAN_WEIGHT, recorded_weight
from .engine import EVAL_KEYS, evaluate
from .models import create_teacher
from .models.teacher import check_class_names, model_from_checkpoint
from .rundir import RunDir, resolve_checkpoint
from .runtime import recorded_amp, resolve_amp, resolve_device


def evaluate_checkpoint(run: str, data: Optional[str] = None, teacher: Optional[str] = None,
                        teacher_weights: Optional[str] = None, fusion: Optional[str] = None,
                        last: bool = False, device: str = "auto") -> dict:
    path = resolve_checkpoint(run, last=last)
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    model = model_from_checkpoint(ckpt, path)  # first: a checkpoint it cannot use is refused
    cfg = from_dict(ckpt["config"], source=f"config stored in '{path}'")
    if data is not None:
        cfg = replace_keys(cfg, **{"data.name": data})
    dev = resolve_device(device)
    # the precision the run trained in (recorded), where it was left to `auto`
    stored = recorded_amp(meta.get("amp"), dev) if cfg.amp == "auto" else None
    amp_dtype = resolve_amp(stored or cfg.amp, dev)
    bundle = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download,
                          digits_size=meta["img_size"])
    if bundle.num_classes != meta["num_classes"]:
        raise CheckpointError(f"'{path}' predicts {meta['num_classes']} classes but dataset "
                              f"'{cfg.data.name}' has {bundle.num_classes}")
    check_class_names(meta.get("classes"), bundle.classes, f"'{path}'")

    model.to(dev)
    t = None
    run_dir = path.parent
    if teacher is None and meta["role"] == "student":
        if RunDir(run_dir).teacher.has_best():
            teacher = str(RunDir(run_dir).teacher)
        elif cfg.teacher.name is not None:
            teacher, teacher_weights = cfg.teacher.name, teacher_weights or cfg.teacher.weights
    if teacher is not None:
        t = create_teacher(teacher, num_classes=bundle.num_classes, weights=teacher_weights)
        t.set_student_input(meta["mean"], meta["std"], cfg.teacher.img_size)
        check_class_names(t.classes, bundle.classes, f"the teacher '{teacher}'")
        t.to(dev)
    val = bundle.val.with_transform(build_eval_transform(cfg.aug, meta["img_size"], meta["mean"],
                                                         meta["std"]))
    loader = torch.utils.data.DataLoader(val, batch_size=cfg.data.eval_batch_size,
                                         num_workers=cfg.data.num_workers)
    weight = recorded_weight(meta)  # the run's (chosen on its held-out images)
    res = evaluate(model, loader, dev, t, fusion or cfg.distill.fusion, amp_dtype, progress=True,
                   fusion_weight=weight)
    res.update({"checkpoint": str(path), "epoch": ckpt.get("epoch"), "dataset": cfg.data.name,
                "split": bundle.val_split, "teacher": teacher,
                "fusion": fusion or cfg.distill.fusion, "fusion_weight": weight})
    return res


def format_eval(res: dict) -> str:
    lines = [f"{res['checkpoint']} (epoch {res['epoch']}) on {res['dataset']} {res['split']} "
             f"({res['eval_images']} images), fusion {res['fusion']}"
             + (f" (class head weight {res['fusion_weight']:g})"
                if res.get("fusion_weight", MEAN_WEIGHT) != MEAN_WEIGHT else "")]
    for k in EVAL_KEYS:
        v = res.get(k)
        if v is not None:
            lines.append(f"  {k:<28}{v:.4f}")
    return "\n".join(lines)
