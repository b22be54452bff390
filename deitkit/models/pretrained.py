"""Start a student from pretrained weights: a timm, Hugging Face, official DeiT or deitkit file,
or the timm hub weights of the student's name.

Files are read with `weights_only=True` or as safetensors (`checkpoint.load_state_file`). The
adaptation to the student at hand uses timm where timm has it: `checkpoint_filter_fn`
(position-embedding resampling to the new patch grid with `resample_abs_pos_embed`, patch-
embedding kernels with `resample_patch_embed`). Written here, because timm lacks them: the
Hugging Face key names, a plain DeiT/ViT into a distilled student (the distillation token and
its position start from the class token's) and back, heads re-initialised when the class count
differs, and errors that name each mismatched key and shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from ..checkpoint import (CheckpointError, load_state_file, safe_torch_load, state_of,
                          unwrap_state)
from ..rundir import resolve_checkpoint

HEADS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


def from_hugging_face(state: dict) -> dict:
    """transformers' DeiT/ViT names -> timm's: the layout of the hub files
    (`deit.encoder.layer.0.attention.attention.query`) and of transformers 5
    (`deit.layers.0.attention.q_proj`); query, key and value become one qkv."""
    prefix = next((p for p in ("deit.", "vit.") if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        return state
    top = {"embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token",
           "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    layer = {"attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
             "layernorm_before": "norm1", "layernorm_after": "norm2",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    qkv_names = {"attention.attention.query": "q", "attention.attention.key": "k",
                 "attention.attention.value": "v", "attention.q_proj": "q",
                 "attention.k_proj": "k", "attention.v_proj": "v"}
    out, qkv = {}, {}
    for k, v in state.items():
        name, kind = k.rsplit(".", 1)
        if name in ("cls_classifier", "cls_classifier.linear", "classifier"):
            out[f"head.{kind}"] = v
        elif name in ("distillation_classifier", "distillation_classifier.linear"):
            out[f"head_dist.{kind}"] = v
        elif k.startswith(prefix) and k[len(prefix):] in top:
            out[top[k[len(prefix):]]] = v
        else:
            m = re.match(rf"{re.escape(prefix)}(?:encoder\.layer|layers)\.(\d+)\.(.+)", name)
            if m and m.group(2) in qkv_names:
                qkv.setdefault((m.group(1), kind), {})[qkv_names[m.group(2)]] = v
            elif m and m.group(2) in layer:
                out[f"blocks.{m.group(1)}.{layer[m.group(2)]}.{kind}"] = v
            else:
                out[k] = v  # unknown: reported as unexpected below
    for (i, kind), t in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([t["q"], t["k"], t["v"]])
    return out


def _tokens(state: dict, model: nn.Module, log: list[str]) -> dict:
    """Make the prefix tokens of `state` those of `model`: plain <-> distilled."""
    want = hasattr(model, "dist_token") and model.dist_token is not None
    has = "dist_token" in state
    if want and not has:
        state["dist_token"] = state["cls_token"].clone()
        pos = state["pos_embed"]                                    # [1, 1 + N, D]
        state["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
        log.append("distillation token and its position started from the class token's "
                   "(the weights had none)")
    elif has and not want:
        state.pop("dist_token")
        state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], state["pos_embed"][:, 2:]], 1)
        for k in ("head_dist.weight", "head_dist.bias"):
            state.pop(k, None)
        log.append("distillation token, its position and head dropped (plain student)")
    return state


def adapt_state(state: dict, model: nn.Module, source: str) -> tuple[dict, list[str]]:
    """`state` made to fit `model`; the list says what was changed."""
    log: list[str] = []
    state = unwrap_state(state)
    hf = from_hugging_face(state)
    if hf is not state:
        log.append("Hugging Face names converted to timm's")
    state = hf
    if "cls_token" not in state or "pos_embed" not in state:
        raise CheckpointError(f"'{source}' is not a ViT/DeiT state dict (no cls_token/pos_embed; "
                              f"first keys: {list(state)[:5]})")
    state = _tokens(state, model, log)
    before = {k: tuple(v.shape) for k, v in state.items()}
    state = checkpoint_filter_fn(state, model)                  # timm: pos embed, patch embed
    for k in ("pos_embed", "patch_embed.proj.weight"):
        if k in state and before.get(k) != tuple(state[k].shape):
            log.append(f"{k} resampled from {before[k]} to {tuple(state[k].shape)}")
    own = model.state_dict()
    heads = [k for k in HEADS if k in state and k in own and state[k].shape != own[k].shape]
    if heads:
        log.append(f"heads re-initialised for {own['head.weight'].shape[0]} classes (the weights "
                   f"had {state['head.weight'].shape[0]})")
        for k in heads:
            state.pop(k)
    bad = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and k not in HEADS]
    unexpected = [k for k in state if k not in own]
    if bad or missing or unexpected:
        raise CheckpointError(
            f"the weights in '{source}' do not fit this student: "
            + "; ".join(filter(None, [
                f"shapes differ ({len(bad)} keys): {', '.join(bad[:6])}" if bad else "",
                f"missing ({len(missing)} keys): {', '.join(missing[:6])}" if missing else "",
                f"unexpected ({len(unexpected)} keys): {', '.join(unexpected[:6])}"
                if unexpected else ""]))
            + " (another depth, width or model family? set model.overrides to match)")
    return state, log


def hub_state(name: str) -> dict:
    """The timm hub weights of `name` (needs the internet)."""
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as e:  # noqa: BLE001 - hub failures come as many types (offline, proxy)
        raise CheckpointError(
            f"could not download the pretrained weights of '{name}' ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Offline? Save them on a connected "
            "machine (timm.create_model(name, pretrained=True) then "
            "safetensors.torch.save_file(model.state_dict(), 'w.safetensors')) and pass "
            "model.weights=w.safetensors") from None


@dataclass
class WeightsFile:
    """What a weights file holds: its state dict, and what a deitkit checkpoint recorded."""
    path: Path
    state: dict
    meta: dict = field(default_factory=dict)  # empty for safetensors and foreign files
    epoch: Any = None

    @property
    def classes(self) -> Optional[list]:
        return self.meta.get("classes")


def read_weights(weights: str | Path, what: str) -> WeightsFile:
    """Read `weights`: a .safetensors/.pt/.pth/.bin file or a deitkit run folder (its best or
    last checkpoint; `what` names the setting in the error when it has none)."""
    path = Path(weights).expanduser()
    if path.is_dir():
        path = resolve_checkpoint(path, what=what)
    if path.suffix == ".safetensors":
        return WeightsFile(path, load_state_file(path))
    obj = safe_torch_load(path)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    return WeightsFile(path, state_of(obj, path), meta if isinstance(meta, dict) else {},
                       obj.get("epoch") if isinstance(obj, dict) else None)


def load_pretrained(model: nn.Module, weights: Optional[str] = None,
                    hub_name: Optional[str] = None,
                    classes: Optional[list] = None) -> list[str]:
    """Load `weights` (a file or a deitkit run folder) or the hub weights of `hub_name` into
    `model`; return what was loaded, resampled and re-initialised, one line each. `classes`:
    the data's class names; a deitkit checkpoint trained on other names of the same count
    keeps its body but not its heads."""
    theirs = None
    if weights:
        w = read_weights(weights, what="model.weights folder")
        state, theirs, meta = w.state, w.classes, w.meta
        source = (f"{w.path} (deitkit export)" if w.path.suffix == ".safetensors"
                  and w.path.with_suffix(".json").is_file() else str(w.path))
        if meta.get("role") == "pretrain":
            source = (f"{w.path} (deitkit MAE pretraining of {meta.get('encoder')}, "
                      f"epoch {w.epoch})")
    elif hub_name:
        state, source = hub_state(hub_name), f"timm hub weights of {hub_name}"
    else:
        return []
    state, log = adapt_state(state, model, source)
    if (classes is not None and theirs is not None and list(theirs) != list(classes)
            and any(k in state for k in HEADS)):
        for k in HEADS:
            state.pop(k, None)
        log.append(f"heads re-initialised: the weights were trained on the classes "
                   f"{list(theirs)}, this data's are {list(classes)}")
    model.load_state_dict(state, strict=False)
    n = sum(v.numel() for v in state.values())
    fresh = [k for k in HEADS if k in model.state_dict() and k not in state]
    if fresh and "heads re-initialised" not in " ".join(log):
        log.append(f"heads fresh ({', '.join(sorted({k.split('.')[0] for k in fresh}))}: the "
                   "weights have none)")
    return [f"loaded {len(state)} tensors ({n / 1e6:.2f} M values) from {source}", *log]
