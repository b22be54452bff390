"""Trained models out of deitkit: load for inference, export to safetensors or ONNX.

A model is a run folder (its best checkpoint), a deitkit checkpoint (`.pt`) or a safetensors
export with its JSON metadata beside it. `export_model(src, "m.safetensors")` writes timm's
names and a JSON file with what `timm.create_model` needs; `export_model(src, "m.onnx")`
writes the fused prediction with a dynamic batch and the image size, normalisation and class
names in the ONNX metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from .checkpoint import (CheckpointError, atomic_write, atomic_write_text, load_checkpoint,
                         unwrap_state)
from .distill import MEAN_WEIGHT, fuse, recorded_weight
from .models import student_forward
from .rundir import resolve_checkpoint
from .models.teacher import model_from_checkpoint

try:  # optional: pip install 'deitkit[onnx]'
    import onnx
except ImportError:
    onnx = None


def resolve_model_file(src: str | Path) -> Path:
    p = resolve_checkpoint(src)
    if not p.is_file():
        raise CheckpointError(f"model '{p}' does not exist (a run folder, a checkpoint .pt, or "
                              "an export .safetensors with its .json)")
    return p


def load_for_inference(src: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, its metadata: model_name, classes, img_size, mean, std, fusion)."""
    path = resolve_model_file(src)
    if path.suffix == ".safetensors":
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise CheckpointError(f"'{path}' has no metadata file '{meta_path}' beside it "
                                  "(deitkit export writes both)")
        ckpt = {"meta": json.loads(meta_path.read_text()),
                "model": safetensors.torch.load_file(str(path))}
    else:
        ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).eval()
    if hasattr(model, "set_distilled_training"):
        model.set_distilled_training(False)
    return model, ckpt["meta"]


class FusedHeads(nn.Module):
    """A student whose output is the fused prediction (logits; or probabilities for
    fusion=probs), or a CNN's logits: what `deitkit predict` and the ONNX file compute."""

    def __init__(self, model: nn.Module, fusion: str = "logits", head: str = "fused",
                 weight: float = MEAN_WEIGHT):
        super().__init__()
        self.model, self.fusion, self.head, self.weight = model, fusion, head, weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.model, "cls_token"):
            return self.model(x)
        out = student_forward(self.model, x)                       # [B, C] per head
        if self.head == "cls" or out.dist_logits is None:
            return out.cls_logits
        if self.head == "dist":
            return out.dist_logits
        return fuse(out.cls_logits, out.dist_logits, self.fusion, self.weight)


def timm_kwargs(meta: dict) -> dict:
    """What `timm.create_model(meta['model_name'], **kwargs)` needs to build this student."""
    kw = {"num_classes": meta["num_classes"], "img_size": meta["img_size"],
          **meta.get("model_overrides", {})}
    if meta.get("patch_size"):
        kw["patch_size"] = meta["patch_size"]
    return kw


def export_safetensors(src: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Weights under timm's names, plus OUT.json: the checkpoint's metadata and `timm_kwargs`,
    so that `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=OUT,
    num_classes=N), **timm_kwargs)` rebuilds the model with these weights."""
    ckpt = load_checkpoint(resolve_model_file(src))
    out = Path(out)
    state = {k: v.contiguous() for k, v in unwrap_state(ckpt["model"]).items()}
    meta = ckpt["meta"]
    if meta.get("role") == "pretrain":  # the encoder alone: a plain timm ViT without a head
        meta = {**meta, "model_name": meta["encoder"], "num_classes": 0}
    atomic_write(out, lambda f: f.write(safetensors.torch.save(state)))
    meta = {**meta, "timm_kwargs": timm_kwargs(meta)}
    meta_path = out.with_suffix(".json")
    atomic_write_text(json.dumps(meta, indent=2) + "\n", meta_path)
    return out, meta_path


def export_onnx(src: str | Path, out: str | Path, opset: int = 18) -> Path:
    """The fused prediction as ONNX (input `image` [batch, 3, H, W] normalised as in
    training; output `logits` [batch, classes]); metadata: img_size, mean, std, classes,
    fusion, fusion_weight, model_name."""
    if onnx is None:
        raise CheckpointError("ONNX export needs onnx and onnxscript: pip install "
                              "'deitkit[onnx]'")
    model, meta = load_for_inference(src)
    net = FusedHeads(model, meta.get("fusion", "logits"),
                     weight=recorded_weight(meta)).eval()
    size = meta["img_size"]
    example = torch.zeros(2, 3, size, size)
    program = torch.onnx.export(net, (example,), dynamo=True, input_names=["image"],
                                output_names=["logits"], opset_version=opset,
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                                verbose=False)
    proto = program.model_proto
    for key in ("model_name", "img_size", "mean", "std", "classes", "fusion", "fusion_weight",
                "num_classes"):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(meta.get(key))
    onnx.checker.check_model(proto)
    out = Path(out)
    atomic_write(out, lambda f: f.write(proto.SerializeToString()))
    return out


def export_model(src: str | Path, out: str | Path, force: bool = False) -> list[Path]:
    """By the output's suffix: .safetensors (+ .json) or .onnx. An existing output file (for
    .safetensors also its .json sibling) is refused unless `force`."""
    suffix = Path(out).suffix
    targets = [Path(out)] + ([Path(out).with_suffix(".json")] if suffix == ".safetensors" else [])
    taken = [str(t) for t in targets if t.exists()]
    if taken and not force:
        raise CheckpointError(f"export would overwrite {', '.join(taken)}: choose another name, "
                              "or pass --force")
    if suffix == ".safetensors":
        return list(export_safetensors(src, out))
    if suffix == ".onnx":
        return [export_onnx(src, out)]
    raise CheckpointError(f"cannot export to '{out}': use a .safetensors or .onnx file name")
