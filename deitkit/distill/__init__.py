"""Distillation objectives and the fusion of the two heads."""
from .losses import (FUSION_WEIGHTS, MEAN_WEIGHT, DistillationLoss, choose_fusion_weight, fuse,
                     recorded_weight)

__all__ = ["FUSION_WEIGHTS", "MEAN_WEIGHT", "DistillationLoss", "choose_fusion_weight", "fuse",
           "recorded_weight"]
