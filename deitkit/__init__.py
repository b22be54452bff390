"""deitkit: train Vision Transformers on modest data, the DeiT way.

Library API (the CLI is a thin layer over these):

    create_student(name, num_classes=..., img_size=..., patch_size=None, **overrides)
    create_teacher(name_or_path, num_classes=...)
    DistillationLoss(kind="hard"|"soft"|"none", alpha=0.5, tau=1.0, kl_norm="per_element")
    fuse(cls_logits, dist_logits, mode="logits"|"probs")
    build_config(recipe, config_file, overrides) -> TrainConfig
    train(cfg) / train_teacher(cfg) -> summary dict
"""
from .config import ConfigError, TrainConfig, build_config, list_recipes
from .distill import DistillationLoss, fuse
from .models import create_student, create_teacher, student_forward
from .pipeline import train, train_teacher

__version__ = "0.1.0"
__all__ = ["ConfigError", "TrainConfig", "build_config", "list_recipes", "DistillationLoss",
           "fuse", "create_student", "create_teacher", "student_forward", "train",
           "train_teacher", "__version__"]
