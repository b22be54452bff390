"""train_one_epoch / evaluate: the whole training step on one screen."""
from __future__ import annotations

import time
import zlib
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from tqdm.auto import tqdm

from .data.sources import ForkRng
from .distill import DistillationLoss, fuse
from .distributed import all_reduce_sum
from .models import Teacher, student_forward


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite."""


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """Autocast to `amp_dtype` (None: fp32)."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def batch_seed(run_seed: int, epoch: int, rank: int, step: int) -> int:
    """The seed of one batch's Mixup/CutMix draw: a hash of (run seed, epoch, rank, step)."""
    return zlib.crc32(f"mix/{run_seed}/{epoch}/{rank}/{step}".encode())


def mix_batch(mixer, images: torch.Tensor, labels: torch.Tensor, seed: int):
    """Mixup/CutMix under a per-batch seed, so the mixed view can be replayed exactly (the
    per-image augmentation is seeded per item by the dataset)."""
    if mixer is None:
        return images, labels
    with ForkRng(seed):
        return mixer(images, labels)                               # targets: [B, C] soft


def view_checksum(images: torch.Tensor) -> int:
    """crc32 of a batch's bytes: recorded with stored teacher outputs, checked on replay."""
    return zlib.crc32(images.detach().cpu().contiguous().numpy().tobytes())


def forward_heads(model: nn.Module, x: torch.Tensor):
    """(cls_logits, dist_logits or None) for DeiT students and plain CNNs alike.

    Calls model(x), never its parts, so that a DDP wrapper sees the forward pass. A distilled
    timm DeiT in training mode with `set_distilled_training(True)` (see create_student) returns
    both heads' logits.
    """
    out = model(x)
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def train_one_epoch(model: nn.Module, criterion: DistillationLoss, loader, optimizer,
                    device: torch.device, epoch: int, scheduler=None, mixer=None,
                    teacher: Optional[Teacher] = None, ema=None, scaler=None,
                    amp_dtype: Optional[torch.dtype] = None, clip_grad: Optional[float] = None,
                    progress: bool = True, nonfinite: str = "error",
                    max_skipped_steps: int = 20, seed: int = 0, rank: int = 0,
                    store=None, store_verify_batches: int = 1) -> dict:
    """One epoch. The teacher's logits come from `teacher` (run online) or from `store`
    (a `TeacherStore` recorded for exactly these views). The loss is checked for NaN/inf every
    step on a CPU or with nonfinite=skip; on a GPU with nonfinite=error every 20 steps, so the
    hot loop does not wait for the device each step."""
    model.train()
    check_every = 1 if (device.type == "cpu" or nonfinite == "skip") else 20
    bad = torch.zeros((), dtype=torch.bool, device=device)
    skipped = 0
    n_steps = len(loader)
    sums = torch.zeros(4, device=device)   # loss, base_loss, distill_loss, correct (summed)
    seen, t0 = 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress,
               dynamic_ncols=True)
    for step, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with record_function("mix"):
            images, targets = mix_batch(mixer, images, labels,
                                        batch_seed(seed, epoch, rank, step))
        teacher_logits = None
        if criterion.needs_teacher and store is not None:
            with record_function("teacher"):
                if store_verify_batches < 0 or step < store_verify_batches:
                    store.verify(epoch, step, view_checksum(images))
                teacher_logits = store.logits(epoch, step, device)  # [B, C] log-probabilities
        with autocast(device, amp_dtype):
            if criterion.needs_teacher and teacher_logits is None:
                with record_function("teacher"):
                    teacher_logits = teacher(images).float()
            with record_function("student_forward"):
                cls_logits, dist_logits = forward_heads(model, images)
                parts = criterion(cls_logits.float(),
                                  None if dist_logits is None else dist_logits.float(),
                                  targets, teacher_logits)
        loss = parts["loss"]
        bad |= ~torch.isfinite(loss.detach())
        what = None
        if ((step + 1) % check_every == 0 or step == n_steps - 1) and bad.item():
            first = step + 1 if check_every == 1 else max(step + 2 - check_every, 1)
            where = f"step {step + 1}" if first == step + 1 else f"steps {first}..{step + 1}"
            what = (f"non-finite loss at epoch {epoch + 1}, {where}: " +
                    ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items()))
            bad.zero_()
        if what is not None:
            skipped += 1
            if nonfinite != "skip":
                raise NonFiniteLossError(what + ". The last good checkpoint is intact; lower "
                                         "the lr, set optim.clip_grad, or nonfinite=skip")
            if skipped > max_skipped_steps:
                raise NonFiniteLossError(f"{what}: {skipped} non-finite steps in this epoch, "
                                         f"more than max_skipped_steps={max_skipped_steps}")
            optimizer.zero_grad(set_to_none=True)
            continue
        optimizer.zero_grad(set_to_none=True)
        with record_function("backward"):
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
        with record_function("optimizer"):
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step_update(num_updates=epoch * n_steps + step + 1)
        if ema is not None:
            with record_function("ema"):
                ema.update(model, step=epoch * n_steps + step + 1)
        with torch.no_grad():
            pred = fuse(cls_logits.float(), None if dist_logits is None else dist_logits.float())
            correct = (pred.argmax(-1) == labels).sum() if mixer is None else \
                (pred.argmax(-1) == targets.argmax(-1)).sum()
            sums += torch.stack([loss.detach() * len(images),
                                 parts["base_loss"].detach() * len(images),
                                 parts["distill_loss"].detach() * len(images),
                                 correct.float()])
        seen += len(images)
        if progress and (step % 10 == 0 or step == n_steps - 1):
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    elapsed = time.perf_counter() - t0
    totals = all_reduce_sum(torch.cat([sums, sums.new_tensor([seen, skipped])]))  # all ranks
    seen_all = int(totals[4].item())
    skipped = int(totals[5].item())
    s = (totals[:4] / max(seen_all, 1)).tolist()
    seen = seen_all
    return {"train_loss": s[0], "train_base_loss": s[1], "train_distill_loss": s[2],
            "train_top1": s[3], "lr": optimizer.param_groups[0]["lr"],
            "skipped_steps": skipped, "epoch_seconds": elapsed,
            "images_per_second": seen / elapsed}


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).sum()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, teacher: Optional[Teacher] = None,
             fusion: str = "logits", amp_dtype: Optional[torch.dtype] = None,
             progress: bool = False, prefix: str = "") -> dict:
    """Top-1/top-5 of the class head, distillation head and fusion; head agreement; token
    cosine similarity; teacher accuracy and student-teacher agreement (fractions in [0, 1])."""
    model.eval()
    keys = ["cls_top1", "cls_top5", "dist_top1", "dist_top5", "fused_top1", "fused_top5",
            "head_agreement", "token_cosine", "teacher_top1", "teacher_top5",
            "student_teacher_agreement"]
    sums = dict.fromkeys(keys, 0.0)
    n, has_dist = 0, False
    model = getattr(model, "module", model)  # evaluate the bare model, never through DDP
    for images, labels in tqdm(loader, desc="eval", leave=False, disable=not progress):
        images, labels = images.to(device), labels.to(device)
        with autocast(device, amp_dtype):
            if hasattr(model, "cls_token"):
                out = student_forward(model, images)
                cls_l, dist_l = out.cls_logits.float(), out.dist_logits
                tok_c, tok_d = out.cls_token.float(), out.dist_token
            else:
                cls_l, dist_l, tok_c, tok_d = model(images).float(), None, None, None
            t_logits = teacher(images).float() if teacher is not None else None
        fused = fuse(cls_l, None if dist_l is None else dist_l.float(), fusion)
        sums["cls_top1"] += _topk_correct(cls_l, labels, 1).item()
        sums["cls_top5"] += _topk_correct(cls_l, labels, 5).item()
        sums["fused_top1"] += _topk_correct(fused, labels, 1).item()
        sums["fused_top5"] += _topk_correct(fused, labels, 5).item()
        if dist_l is not None:
            has_dist = True
            dist_l = dist_l.float()
            sums["dist_top1"] += _topk_correct(dist_l, labels, 1).item()
            sums["dist_top5"] += _topk_correct(dist_l, labels, 5).item()
            sums["head_agreement"] += (cls_l.argmax(-1) == dist_l.argmax(-1)).sum().item()
            sums["token_cosine"] += F.cosine_similarity(tok_c, tok_d.float(), dim=-1).sum().item()
        if t_logits is not None:
            sums["teacher_top1"] += _topk_correct(t_logits, labels, 1).item()
            sums["teacher_top5"] += _topk_correct(t_logits, labels, 5).item()
            sums["student_teacher_agreement"] += \
                (fused.argmax(-1) == t_logits.argmax(-1)).sum().item()
        n += len(labels)
    # sum over ranks (each rank saw a disjoint shard): exact, each image counted once
    tot = all_reduce_sum(torch.tensor([sums[k] for k in keys] + [n, float(has_dist)],
                                      dtype=torch.float64, device=device)).tolist()
    sums, n, has_dist = dict(zip(keys, tot[:-2])), int(tot[-2]), tot[-1] > 0
    res = {k: v / max(n, 1) for k, v in sums.items()}
    if not has_dist:
        for k in ("dist_top1", "dist_top5", "head_agreement", "token_cosine"):
            res[k] = None
    if teacher is None:
        for k in ("teacher_top1", "teacher_top5", "student_teacher_agreement"):
            res[k] = None
    res["eval_images"] = n
    return {f"{prefix}{k}": v for k, v in res.items()}
