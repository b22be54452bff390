"""Distillation objectives and the fusion of the two heads."""
from .losses import DistillationLoss, fuse

__all__ = ["DistillationLoss", "fuse"]
