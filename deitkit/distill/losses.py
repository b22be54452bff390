"""The DeiT distillation objective, written out so each variant can be checked by hand.

timm has `TokenDistillationTask`, but it couples the loss to its own training task, has no
`per_element` KL normalisation (the official code's) and no single-head modes, so the loss
is written here in a few lines.
"""
from __future__ import annotations

from typing import Optional, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillKind, Fusion, Heads, KlNorm, heads_kind_problem


def base_ce(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against class indices (with label smoothing) or soft targets (Mixup)."""
    if targets.dtype.is_floating_point:  # soft targets [B, C] from Mixup/CutMix: SoftTargetCE
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=smoothing)


def soft_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float,
            kl_norm: str) -> torch.Tensor:
    """KL(teacher || student) at temperature tau, scaled by tau^2.

    per_element: summed over batch and classes, divided by B * C (official DeiT code);
    batchmean:   summed, divided by B (Hinton et al.; timm).
    """
    log_p_s = F.log_softmax(student_logits / tau, dim=-1)                 # [B, C]
    log_p_t = F.log_softmax(teacher_logits.to(student_logits.dtype) / tau, dim=-1)  # [B, C]
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) * (tau * tau)
    if kl_norm == "per_element":
        return kl / student_logits.numel()
    return kl / student_logits.shape[0]


class DistillationLoss(nn.Module):
    """loss = (1 - alpha) * CE(cls_logits, y) + alpha * KD(dist_logits, teacher_logits).

    kind:  `hard` (CE against the teacher's argmax), `soft` (KL at `tau`), or `none` (the
           distillation head is trained on the labels too, with the same weights).
    heads: `both` (above); `cls` (class head only: loss = CE(cls, y), no teacher);
           `dist` (distillation head only: loss = KD(dist, teacher), labels unused).
    Targets may be class indices [B] or soft targets [B, C] (Mixup/CutMix). A student without
    a distillation head (dist_logits None) is trained with CE on the class head.
    Returns a dict with `loss`, `base_loss` and `distill_loss`.
    """

    def __init__(self, kind: DistillKind = "hard", alpha: float = 0.5, tau: float = 1.0,
                 kl_norm: KlNorm = "per_element", heads: Heads = "both",
                 smoothing: float = 0.0):
        super().__init__()
        for what, value, choices in (("kind", kind, DistillKind), ("kl_norm", kl_norm, KlNorm),
                                     ("heads", heads, Heads)):  # choices: the config's types
            if value not in get_args(choices):
                raise ValueError(f"{what} must be one of {get_args(choices)}, got {value!r}")
        problem = heads_kind_problem(kind, heads)
        if problem:
            raise ValueError(problem)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.kind, self.alpha, self.tau, self.kl_norm = kind, alpha, tau, kl_norm
        self.heads, self.smoothing = heads, smoothing

    @property
    def needs_teacher(self) -> bool:
        return self.kind != "none"

    def _kd(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "soft":
            return soft_kd(dist_logits, teacher_logits, self.tau, self.kl_norm)
        return F.cross_entropy(dist_logits, teacher_logits.argmax(dim=-1))

    def forward(self, cls_logits: torch.Tensor, dist_logits: Optional[torch.Tensor],
                targets: torch.Tensor, teacher_logits: Optional[torch.Tensor] = None) -> dict:
        zero = cls_logits.new_zeros(())
        if dist_logits is None or self.heads == "cls":
            if self.needs_teacher:
                raise ValueError(
                    f"distillation kind '{self.kind}' needs a student with a distillation token "
                    "(a *_distilled_* model); this student has only a class head")
            base = base_ce(cls_logits, targets, self.smoothing)
            return {"loss": base, "base_loss": base, "distill_loss": zero}
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"distillation kind '{self.kind}' needs teacher_logits")
        if self.heads == "dist":
            kd = self._kd(dist_logits, teacher_logits)
            return {"loss": kd, "base_loss": zero, "distill_loss": kd}
        base = base_ce(cls_logits, targets, self.smoothing)
        if self.kind == "none":
            kd = base_ce(dist_logits, targets, self.smoothing)
        else:
            kd = self._kd(dist_logits, teacher_logits)
        loss = (1.0 - self.alpha) * base + self.alpha * kd
        return {"loss": loss, "base_loss": base, "distill_loss": kd}


MEAN_WEIGHT = 0.5  # the class head's share in the plain mean of the two heads


def recorded_weight(meta: dict) -> float:
    """The fusion weight a checkpoint's metadata records (older ones: the plain mean)."""
    return meta.get("fusion_weight", MEAN_WEIGHT)


def fuse(cls_logits: torch.Tensor, dist_logits: Optional[torch.Tensor],
         mode: Fusion = "logits", weight: float = MEAN_WEIGHT) -> torch.Tensor:
    """Fuse the two heads at inference, the class head weighted by `weight`.

    `logits`: w * cls + (1 - w) * dist, a logit tensor (w = 0.5, the mean: official code, timm,
    Hugging Face; the default). `probs`: the same of the softmax probabilities (the paper's
    text). With no distillation head the class head is returned (as logits or probabilities).
    """
    if mode not in get_args(Fusion):
        raise ValueError(f"fusion mode must be one of {get_args(Fusion)}, got {mode!r}")
    if dist_logits is None:
        return cls_logits if mode == "logits" else cls_logits.softmax(-1)
    a, b = (cls_logits, dist_logits) if mode == "logits" else \
        (cls_logits.softmax(-1), dist_logits.softmax(-1))
    if weight == MEAN_WEIGHT:
        return (a + b) / 2
    return weight * a + (1 - weight) * b


FUSION_WEIGHTS = tuple(i / 10 for i in range(11))  # the class head's weights tried


def choose_fusion_weight(cls_logits: torch.Tensor, dist_logits: torch.Tensor,
                         labels: torch.Tensor, mode: Fusion = "logits") -> tuple[float, dict]:
    """The class head's fusion weight that scores best on held-out images ([N, C] logits of
    each head, [N] labels; ties go to the weight nearest 0.5, the plain mean), and the top-1
    of every weight tried. Written here: neither timm nor the DeiT code tunes the fusion."""
    acc = {w: (fuse(cls_logits, dist_logits, mode, w).argmax(-1) == labels).float().mean().item()
           for w in FUSION_WEIGHTS}
    best = max(acc.values())
    chosen = min((w for w, a in acc.items() if a == best), key=lambda w: abs(w - MEAN_WEIGHT))
    return chosen, acc
