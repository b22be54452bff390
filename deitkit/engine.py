"""The training step and evaluation: `train_one_epoch` reads on one screen.

What one step touches is one `Step` object (model, loss, optimiser, and the optional schedule,
EMA, fp16 scaler, Mixup/CutMix and teacher source); how it runs is one `StepOptions`.
The teacher's targets come from a `TeacherSource` (online teacher or stored outputs, see
`distill.sources`), so the step has no branch for where they come from.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from tqdm.auto import tqdm

from .config import OnError
from .data import student_views
from .distill import MEAN_WEIGHT, DistillationLoss, choose_fusion_weight, fuse
from .distill.sources import TeacherSource
from .distributed import all_reduce_sum
from .models import Teacher, student_forward
from .runtime import autocast

# every metric `evaluate` returns (fractions in [0, 1]); runs add `train_clean_top1`
EVAL_KEYS = ("cls_top1", "cls_top5", "dist_top1", "dist_top5", "fused_top1", "fused_top5",
             "head_agreement", "token_cosine", "teacher_top1", "teacher_top5",
             "student_teacher_agreement")
# what `holdout_fusion` returns: each head's top-1 on the held-out images, their plain mean's,
# the fused top-1 at the chosen weight, the weight and the image count
HOLDOUT_KEYS = ("holdout_cls_top1", "holdout_dist_top1", "holdout_mean_top1",
                "holdout_fused_top1", "fusion_weight", "holdout_images")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """How the step runs."""
    amp_dtype: Optional[torch.dtype] = None
    """Autocast dtype (None: fp32)."""
    clip_grad: Optional[float] = None
    """Clip the global gradient norm to this (None: no clipping)."""
    nonfinite: OnError = "error"
    """A NaN/inf loss: `error` (raise) or `skip` (drop the step, count it)."""
    max_skipped_steps: int = 20
    """With nonfinite=skip, raise anyway after this many skipped steps in one epoch."""
    seed: int = 0
    """Run seed: with (epoch, rank, step) it seeds each batch's Mixup/CutMix."""
    rank: int = 0
    progress: bool = True


@dataclass(kw_only=True)
class Step:
    """What one training step touches."""
    model: nn.Module                       # the student (or CNN), possibly DDP-wrapped
    criterion: DistillationLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any = None                  # timm scheduler, stepped per update
    ema: Any = None                        # timm ModelEmaV3
    scaler: Optional[torch.amp.GradScaler] = None  # fp16 only
    mixer: Any = None                      # (images, labels) -> (images, soft targets)
    teacher: Optional[TeacherSource] = None


def forward_heads(model: nn.Module, x: torch.Tensor):
    """(cls_logits, dist_logits or None) for DeiT students and plain CNNs alike. Calls
    model(x), so a DDP wrapper sees the pass; a distilled timm DeiT in training mode (see
    create_student) returns both heads."""
    out = model(x)
    return (out[0], out[1]) if isinstance(out, tuple) else (out, None)


def train_one_epoch(s: Step, loader, device: torch.device, epoch: int,
                    opts: StepOptions = StepOptions()) -> dict:
    """One epoch. The loss is checked for NaN/inf every step on a CPU or with nonfinite=skip;
    on a GPU every 20 steps, so the hot loop does not wait for the device each step."""
    s.model.train()
    guard = _FiniteGuard(device, opts, len(loader))
    sums = torch.zeros(4, device=device)   # loss, base_loss, distill_loss, correct (summed)
    seen, n_steps, t0 = 0, len(loader), time.perf_counter()
    refresh = 10 if device.type == "cpu" else 50  # the bar's loss reads the device: rarely
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not opts.progress,
               dynamic_ncols=True)
    for step, images, labels, targets in student_views(bar, s.mixer, device, opts.seed, epoch,
                                                       opts.rank):
        t_logits = None                                               # [B, C]
        if s.criterion.needs_teacher:
            with record_function("teacher"):
                t_logits = s.teacher(images, epoch, step)
        with autocast(device, opts.amp_dtype), record_function("student_forward"):
            cls_logits, dist_logits = forward_heads(s.model, images)  # [B, C] each
            parts = s.criterion(cls_logits.float(), _float(dist_logits), targets, t_logits)
        loss = parts["loss"]
        if not guard.ok(loss, parts, epoch, step):
            s.optimizer.zero_grad(set_to_none=True)
            continue
        s.optimizer.zero_grad(set_to_none=True)
        with record_function("backward"):
            (s.scaler.scale(loss) if s.scaler else loss).backward()
        with record_function("optimizer"):
            _optimizer_step(s, opts.clip_grad)
            if s.scheduler is not None:
                s.scheduler.step_update(num_updates=epoch * n_steps + step + 1)
        if s.ema is not None:
            with record_function("ema"):
                s.ema.update(s.model, step=epoch * n_steps + step + 1)
        with torch.no_grad():
            pred = fuse(cls_logits.float(), _float(dist_logits)).argmax(-1)
            truth = labels if targets.dim() == 1 else targets.argmax(-1)
            n = len(images)
            sums += torch.stack([loss.detach() * n, parts["base_loss"].detach() * n,
                                 parts["distill_loss"].detach() * n,
                                 (pred == truth).sum().float()])
        seen += len(images)
        if opts.progress and (step % refresh == 0 or step == n_steps - 1):
            bar.set_postfix(loss=f"{loss.item():.3f}",
                            lr=f"{s.optimizer.param_groups[0]['lr']:.2e}")
    if device.type == "cuda":  # the queued steps are part of the epoch's time
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    totals = all_reduce_sum(torch.cat([sums, sums.new_tensor([seen, guard.skipped])]))  # ranks
    seen = int(totals[4].item())
    mean = (totals[:4] / max(seen, 1)).tolist()
    return {"train_loss": mean[0], "train_base_loss": mean[1], "train_distill_loss": mean[2],
            "train_top1": mean[3], "lr": s.optimizer.param_groups[0]["lr"],
            "skipped_steps": int(totals[5].item()), "epoch_seconds": elapsed,
            "images_per_second": seen / elapsed}


def _float(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float()


def _optimizer_step(s: Step, clip_grad: Optional[float]) -> None:
    if s.scaler is not None:
        s.scaler.unscale_(s.optimizer)
    if clip_grad:
        nn.utils.clip_grad_norm_(s.model.parameters(), clip_grad)
    if s.scaler is not None:
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        s.optimizer.step()


class _FiniteGuard:
    """Watches the loss for NaN/inf without a host sync every step on a GPU (see
    train_one_epoch); raises or counts skipped steps according to `nonfinite`."""

    def __init__(self, device: torch.device, opts: StepOptions, n_steps: int):
        self.every = 1 if (device.type == "cpu" or opts.nonfinite == "skip") else 20
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.opts, self.n_steps, self.skipped = opts, n_steps, 0

    def ok(self, loss: torch.Tensor, parts: dict, epoch: int, step: int) -> bool:
        self.bad |= ~torch.isfinite(loss.detach())
        due = (step + 1) % self.every == 0 or step == self.n_steps - 1
        if not (due and self.bad.item()):
            return True
        self.bad.zero_()
        first = step + 1 if self.every == 1 else max(step + 2 - self.every, 1)
        where = f"step {step + 1}" if first == step + 1 else f"steps {first}..{step + 1}"
        what = (f"non-finite loss at epoch {epoch + 1}, {where}: " +
                ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items()))
        self.skipped += 1
        if self.opts.nonfinite != "skip":
            raise NonFiniteLossError(what + ". The last good checkpoint is intact; lower the lr, "
                                     "set optim.clip_grad, or nonfinite=skip")
        if self.skipped > self.opts.max_skipped_steps:
            raise NonFiniteLossError(f"{what}: {self.skipped} non-finite steps in this epoch, "
                                     f"more than max_skipped_steps={self.opts.max_skipped_steps}")
        return False


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).sum()


def _teacher_top5(teacher: Teacher, images: torch.Tensor, i: int,
                  memo: Optional[list]) -> torch.Tensor:
    """[B, min(5, C)] the teacher's best classes for batch `i`, from `memo` when it holds them."""
    if memo is not None and i < len(memo):
        if len(memo[i]) != len(images):
            raise RuntimeError(f"teacher memo: batch {i} held {len(memo[i])} images, the loader "
                               f"now gives {len(images)} (the memo must stay with one loader)")
        return memo[i]
    logits = teacher(images).float()
    top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
    if memo is not None:
        memo.append(top)
    return top


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, teacher: Optional[Teacher] = None,
             fusion: str = "logits", amp_dtype: Optional[torch.dtype] = None,
             progress: bool = False, fusion_weight: float = 0.5,
             teacher_memo: Optional[list] = None) -> dict:
    """Top-1/top-5 of the class head, distillation head and fusion; head agreement; token
    cosine similarity; teacher accuracy and student-teacher agreement (fractions in [0, 1]):
    the keys of EVAL_KEYS (None where a run has no such head or teacher), and `eval_images`.

    `teacher_memo`: a list kept by the caller across evaluations of the same `loader` (fixed
    order, no augmentation): the frozen teacher's top-5 classes per batch, filled on the first
    call and read back on later ones, so a run evaluates its teacher once, not every time."""
    model = getattr(model, "module", model).eval()  # the bare model, never through DDP
    sums = dict.fromkeys(EVAL_KEYS, 0.0)
    n, has_dist = 0, False
    for i, (images, labels) in enumerate(tqdm(loader, desc="eval", leave=False,
                                              disable=not progress)):
        images, labels = images.to(device), labels.to(device)
        with autocast(device, amp_dtype):
            if hasattr(model, "cls_token"):
                out = student_forward(model, images)
                cls_l, dist_l = out.cls_logits.float(), _float(out.dist_logits)
                tok_c, tok_d = out.cls_token.float(), _float(out.dist_token)
            else:
                cls_l, dist_l, tok_c, tok_d = model(images).float(), None, None, None
            t_top = None if teacher is None else _teacher_top5(teacher, images, i, teacher_memo)
        fused = fuse(cls_l, dist_l, fusion, fusion_weight)
        for head, logits in (("cls", cls_l), ("fused", fused), ("dist", dist_l)):
            if logits is not None:
                sums[f"{head}_top1"] += _topk_correct(logits, labels, 1).item()
                sums[f"{head}_top5"] += _topk_correct(logits, labels, 5).item()
        if dist_l is not None:
            has_dist = True
            sums["head_agreement"] += (cls_l.argmax(-1) == dist_l.argmax(-1)).sum().item()
            sums["token_cosine"] += F.cosine_similarity(tok_c, tok_d, dim=-1).sum().item()
        if t_top is not None:  # [B, k] classes, best first
            sums["teacher_top1"] += (t_top[:, 0] == labels).sum().item()
            sums["teacher_top5"] += (t_top == labels[:, None]).any(-1).sum().item()
            sums["student_teacher_agreement"] += (fused.argmax(-1) == t_top[:, 0]).sum().item()
        n += len(labels)
    # sum over ranks (each rank saw a disjoint shard): exact, each image counted once
    tot = all_reduce_sum(torch.tensor([sums[k] for k in EVAL_KEYS] + [n, float(has_dist)],
                                      dtype=torch.float64, device=device)).tolist()
    n, has_dist = int(tot[-2]), tot[-1] > 0
    res = {k: v / max(n, 1) for k, v in zip(EVAL_KEYS, tot[:-2])}
    if not has_dist:
        res.update(dict.fromkeys(("dist_top1", "dist_top5", "head_agreement", "token_cosine")))
    if teacher is None:
        res.update(dict.fromkeys(("teacher_top1", "teacher_top5", "student_teacher_agreement")))
    res["eval_images"] = n
    return res


@torch.no_grad()
def holdout_fusion(model: nn.Module, batches, device: torch.device, fusion: str = "logits",
                   amp_dtype: Optional[torch.dtype] = None) -> tuple[float, dict]:
    """The fusion weight chosen on held-out training images (`batches` of (images, labels)),
    and what it was chosen from: each head's top-1 there and the fused top-1 at the weight."""
    model = getattr(model, "module", model).eval()
    cls_l, dist_l, ys = [], [], []
    for images, labels in batches:
        with autocast(device, amp_dtype):
            out = student_forward(model, images.to(device))
        cls_l.append(out.cls_logits.float().cpu())
        dist_l.append(out.dist_logits.float().cpu())
        ys.append(labels)
    c, d, y = torch.cat(cls_l), torch.cat(dist_l), torch.cat(ys)
    weight, acc = choose_fusion_weight(c, d, y, fusion)
    return weight, dict(zip(HOLDOUT_KEYS, (acc[1.0], acc[0.0], acc[MEAN_WEIGHT], acc[weight],
                                           weight, len(y))))
