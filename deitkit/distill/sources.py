"""Where a student's distillation targets come from: one interface, two sources.

`OnlineTeacher` runs the frozen teacher on the batch the student sees; `StoredTeacher` reads
what `deitkit store` recorded for exactly that (epoch, step) and checks the view's checksum on
the first batches of each epoch. The train step calls either as `source(images, epoch, step)`
and gets [B, C] logits (or log-probabilities, which give the same softmax and argmax).
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch

from ..models.teacher import Teacher
from ..runtime import autocast
from .store import TeacherStore, view_checksum


class TeacherSource(Protocol):
    def __call__(self, images: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """[B, C] teacher logits for the (mixed) batch `images` of (epoch, step)."""
        ...


class OnlineTeacher:
    """Run the teacher on the batch, under the run's autocast."""

    def __init__(self, teacher: Teacher, device: torch.device,
                 amp_dtype: Optional[torch.dtype] = None):
        self.teacher, self.device, self.amp_dtype = teacher, device, amp_dtype

    def __call__(self, images: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        with autocast(self.device, self.amp_dtype):
            return self.teacher(images).float()


class StoredTeacher:
    """Read the recorded targets; verify the first `verify_batches` views of each epoch
    (-1: all) against their recorded checksums."""

    def __init__(self, store: TeacherStore, device: torch.device, verify_batches: int = 1):
        self.store, self.device, self.verify_batches = store, device, verify_batches

    def __call__(self, images: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        if self.verify_batches < 0 or step < self.verify_batches:
            self.store.verify(epoch, step, view_checksum(images))
        return self.store.log_probs(epoch, step, self.device)
