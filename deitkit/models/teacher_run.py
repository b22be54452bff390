"""The CNN-teacher run that a student run trains when no teacher is named: its configuration
(derived from the student's), its recipe, and where its configuration errors are reported.

Used by the run (`pipeline`) and the planner (`plan`, which measures that teacher's epochs
before it exists); kept below both so that the planner does not import the run.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from pathlib import Path

from ..config import ConfigError, TrainConfig, build_config, recipe_dict, replace_keys


def teacher_config_for(cfg: TrainConfig, out: Path) -> TrainConfig:
    """The CNN-teacher run that a student run needs: same data, split and seed. By rule, every
    `data.*` setting of the student carries over except those the teacher's own recipe or
    `teacher.train_overrides` set (the teacher recipe's batch size, say)."""
    t = cfg.teacher
    overrides = list(t.train_overrides)
    recipe = teacher_recipe(cfg)
    tcfg = build_config(recipe, overrides=overrides)
    own = {f"data.{k}" for k in recipe_dict(recipe).get("data", {})}
    own |= {o.split("=", 1)[0].strip() for o in overrides}
    shared = {f"data.{f.name}": copy.deepcopy(getattr(cfg.data, f.name))
              for f in dataclasses.fields(cfg.data) if f"data.{f.name}" not in own}
    if t.img_size is not None:  # the teacher's own resolution
        shared["data.img_size"] = t.img_size
    if t.train_epochs is not None:
        shared["epochs"] = t.train_epochs
    if t.train_weights is not None:
        shared["model.weights"] = t.train_weights
    if t.train_pretrained:
        shared["model.pretrained"] = True
    return replace_keys(tcfg, **shared, **{"model.name": cfg.teacher.train_model},
                        seed=cfg.seed, amp=cfg.amp, device=cfg.device, progress=cfg.progress,
                        out=str(out))


def teacher_recipe(cfg: TrainConfig) -> str:
    """The recipe of the CNN a student run trains: `teacher.train_recipe`, except that a
    fine-tuning from pretrained weights left at the default gets `cnn-finetune`."""
    t = cfg.teacher
    if (t.train_weights or t.train_pretrained) and t.train_recipe == "cnn-teacher":
        return "cnn-finetune"
    return t.train_recipe


@contextmanager
def teacher_settings(cfg: TrainConfig, tdir: Path):
    """A configuration error of the teacher run a student run trains is reported with where
    its settings are given: the student run's teacher.train_overrides."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(
            f"the teacher run in '{tdir}' (recipe {teacher_recipe(cfg)}): {e}. Its "
            "settings are given as teacher.train_overrides=[key=value, ...] (now "
            f"{list(cfg.teacher.train_overrides)})") from None
