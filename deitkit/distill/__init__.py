"""Distillation objectives and the fusion of the two heads."""
from .losses import FUSION_WEIGHTS, DistillationLoss, choose_fusion_weight, fuse

__all__ = ["FUSION_WEIGHTS", "DistillationLoss", "choose_fusion_weight", "fuse"]
