"""DeiT students, built by timm, with the overrides that make small images work."""
from __future__ import annotations

from typing import NamedTuple, Optional

import timm
import torch
from torch import nn

DEIT_NAMES = tuple(
    f"deit_{size}{'_distilled' if dist else ''}_patch16_{res}"
    for size in ("tiny", "small", "base") for dist in (False, True) for res in (224, 384)
)


class StudentOutput(NamedTuple):
    cls_logits: torch.Tensor          # [B, C]
    dist_logits: Optional[torch.Tensor]  # [B, C], None without a distillation token
    cls_token: torch.Tensor           # [B, D] final (normed) class-token representation
    dist_token: Optional[torch.Tensor]  # [B, D]


def has_dist_token(model: nn.Module) -> bool:
    return hasattr(model, "dist_token") and hasattr(model, "head_dist")


def create_student(name: str, num_classes: int = 1000, img_size: Optional[int] = None,
                   patch_size: Optional[int] = None, drop_path_rate: float = 0.1,
                   **overrides) -> nn.Module:
    """Build a DeiT student with timm (`VisionTransformerDistilled` for `*_distilled_*`).

    img_size / patch_size / num_classes / drop_path_rate override the named architecture, so
    `create_student("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32,
    patch_size=4)` gives a 64-patch tiny DeiT for CIFAR. Further keyword arguments go to the
    timm constructor (e.g. depth=6). Weights are randomly initialised (no download).
    """
    if not name.startswith("deit"):
        raise ValueError(f"unknown student '{name}': expected a DeiT name, one of "
                         f"{', '.join(DEIT_NAMES)}")
    kwargs = dict(num_classes=num_classes, drop_path_rate=drop_path_rate, **overrides)
    timm_name = name
    if name not in timm.list_models("deit*"):
        if name not in DEIT_NAMES:
            raise ValueError(f"unknown student '{name}': timm has no such model. DeiT names: "
                             f"{', '.join(DEIT_NAMES)}")
        # timm registers only DeiT-B at 384; tiny/small at 384 are the 224 architectures at
        # 384 px (the paper's fine-tuning resolution), built from the 224 entry.
        timm_name = name.replace("_384", "_224")
        kwargs["img_size"] = 384
    if img_size is not None:
        kwargs["img_size"] = img_size
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    size = kwargs.get("img_size", 224)
    patch = kwargs.get("patch_size", 16)
    if not (isinstance(patch, int) and patch >= 1):
        raise ValueError(f"model.patch_size must be a whole number of pixels, at least 1; got "
                         f"{patch!r}")
    if size % patch:
        raise ValueError(f"img_size {size} is not a multiple of patch_size {patch}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"model.drop_path must be in [0, 1); got {drop_path_rate!r}")
    for key in ("depth", "num_heads", "embed_dim"):
        value = overrides.get(key)
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"model.overrides.{key} must be a whole number, at least 1; got "
                             f"{value!r}")
    try:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    except (TypeError, AssertionError, ValueError, RuntimeError) as e:
        # timm's own message is an assertion or an unexpected keyword: say which settings
        raise ValueError(f"model.overrides {overrides} do not make a '{name}' "
                         f"({type(e).__name__}: {e or 'e.g. the width must divide by num_heads'})"
                         ) from None
    if has_dist_token(model):
        model.set_distilled_training(True)
    return model


def student_forward(model: nn.Module, x: torch.Tensor) -> StudentOutput:
    """Both heads and both token representations in one pass."""
    tokens = model.forward_features(x)                         # [B, N, D], after the final norm
    if has_dist_token(model):
        cls_tok, dist_tok = tokens[:, 0], tokens[:, 1]         # [B, D] each
        cls_logits = model.head(model.head_drop(cls_tok))
        dist_logits = model.head_dist(model.head_drop(dist_tok))
        return StudentOutput(cls_logits, dist_logits, cls_tok, dist_tok)
    pooled = model.forward_head(tokens, pre_logits=True)       # [B, D]
    return StudentOutput(model.head(pooled), None, pooled, None)


def tune_attention(model: nn.Module, device: torch.device,
                   amp_dtype: Optional[torch.dtype]) -> bool:
    """On a CPU in bf16, switch timm's attention blocks to their explicit form.

    timm calls torch's fused `scaled_dot_product_attention`. On a CPU in bf16 its flash
    kernel's backward is slow (12.8 ms per block vs 1.0 ms in fp32 for DeiT-Tiny at 64 px,
    batch 64: half the step), and its math kernel computes the softmax in bf16, which cost a
    4-block student 32 points of accuracy in an 8-epoch digits run (0.175 vs 0.50). timm's
    explicit form runs the matmuls in bf16 and, under autocast, the softmax in fp32: as fast
    as the math kernel and as accurate as fp32 (0.51). Returns whether anything changed.
    """
    if device.type != "cpu" or amp_dtype != torch.bfloat16:
        return False
    changed = False
    for m in model.modules():
        if getattr(m, "fused_attn", False):
            m.fused_attn = False
            changed = True
    return changed
