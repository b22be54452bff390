"""Teachers: any timm or torchvision classifier, from local weights or a deitkit run folder.

The teacher is wrapped in `Teacher`, which keeps it in eval mode without gradients (it never
joins the optimiser), and re-normalises the student's input when the teacher was trained with
another mean/std.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import timm
import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.fx.experimental.optimization import optimize_for_inference

from ..checkpoint import CheckpointError, load_checkpoint, load_state_file, unwrap_state
from .pretrained import hub_state, read_weights
from ..rundir import resolve_checkpoint
from .student import create_student


def teacher_digest(model: nn.Module) -> str:
    """sha256 of a model's state dict (names and raw bytes), the teacher's identity."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class Teacher(nn.Module):
    """A frozen classifier that reads student-normalised images."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 name: str = "", num_classes: Optional[int] = None):
        super().__init__()
        self.model = model
        self.name = name
        self.num_classes = num_classes
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.model.requires_grad_(False)
        self.register_buffer("scale", torch.ones(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1), persistent=False)
        self.renormalize = False
        self.input_size: Optional[int] = None  # resize the batch to this side first (None: no)
        self.classes: Optional[list] = None  # the class names it was trained on, when known
        self._digest: Optional[str] = None
        self.channels_last = False  # the model's input in channels_last (optimize decides)
        self.optimized = "no"
        self._optimized_for: Optional[tuple] = None
        self.eval()

    @property
    def digest(self) -> str:
        """sha256 (16 hex digits) of the original weights: the teacher's identity."""
        if self._digest is None:
            self._digest = teacher_digest(self.model)
        return self._digest

    def optimize(self, device: torch.device, amp_dtype: Optional[torch.dtype],
                 shape: Sequence[int]) -> str:
        """Make the frozen forward faster, the way measured fastest here; returns what was
        chosen, with the figures.

        Candidates: the plain model; a copy in channels_last (what oneDNN's bf16 convolutions
        and cuDNN are fastest with, but not always at fp32 on a CPU); on a CPU at fp32, torch.fx
        `optimize_for_inference`, which folds BatchNorm into the convolutions and keeps
        activations in oneDNN's blocked layout (1.4-1.5x on ResNet-18 at 64 px on 2 cores,
        measured), kept only if its outputs agree with the plain model's (some blocks, e.g.
        squeeze-excitation, trace but fail in oneDNN). Each is timed (`fastest_of`) on a random
        batch of the student's `shape` (batch, 3, H, W), resized as the teacher reads it, at
        the run's precision. Call after `.to(device)`; the digest is taken first."""
        _ = self.digest
        setting = (str(device), str(amp_dtype), tuple(shape))
        if self.optimized != "no" and self._optimized_for == setting:  # a race's later fits
            return f"{self.optimized} (chosen earlier in this process)"
        g = torch.Generator().manual_seed(0)
        x = self._prepare(torch.randn(tuple(shape), generator=g).to(device))
        plain, notes = self.model, []
        candidates = {"plain": (plain, False),
                      "channels_last": (copy.deepcopy(plain).to(memory_format=torch.channels_last),
                                        True)}
        if device.type == "cpu" and amp_dtype is None:
            try:
                with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                    warnings.simplefilter("ignore")  # torch.fx prints and warns as it traces
                    fast = optimize_for_inference(plain)
                    with torch.inference_mode():
                        ok = torch.allclose(fast(x), plain(x), rtol=1e-3, atol=1e-4)
                if ok:
                    candidates["fx-onednn"] = (fast, False)
                else:
                    notes.append("torch.fx oneDNN left out: its outputs differ")
            except Exception as e:  # noqa: BLE001 - any tracing or oneDNN failure: left out
                notes.append(f"torch.fx oneDNN left out: {type(e).__name__}")

        def forward(model: nn.Module, channels_last: bool):
            y = x.contiguous(memory_format=torch.channels_last) if channels_last else x

            def run() -> None:
                with torch.inference_mode(), torch.autocast(
                        device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
                    model(y)
            return run
        # measured once per process for a model of this architecture, shape and precision
        # (the planner's stand-in teacher and the run's own are the same)
        key = (type(plain).__name__, sum(p.numel() for p in plain.parameters()), tuple(shape),
               str(device), str(amp_dtype), tuple(candidates))
        secs = _MEASURED.get(key)
        if secs is None:
            sync = torch.cuda.synchronize if device.type == "cuda" else None
            secs = _MEASURED[key] = fastest_of({n: forward(*c) for n, c in candidates.items()},
                                               sync=sync)
        best = min(secs, key=secs.get)
        self.model, self.channels_last = candidates[best]
        self.optimized, self._optimized_for = best, setting
        others = ", ".join(f"{n} {secs['plain'] / t:.2f}x" for n, t in secs.items() if n != "plain")
        return (f"{best} (measured on a batch of {shape[0]}: {others} the speed of the plain "
                f"forward{''.join('; ' + n for n in notes)})")

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The student's batch as the teacher reads it: re-normalised, resized."""
        if self.renormalize:
            x = x * self.scale + self.shift
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size,) * 2:
            x = torch.nn.functional.interpolate(x, size=(self.input_size,) * 2,
                                                mode="bilinear", align_corners=False,
                                                antialias=True)
        return x

    def set_student_input(self, mean: Sequence[float], std: Sequence[float],
                          size: Optional[int] = None) -> None:
        """Read the student's images: x_teacher = (x * s_std + s_mean - t_mean) / t_std when
        the normalisations differ, resized to `size` x `size` first when given (on the
        device, bilinear, antialiased when shrinking; None: the student's size)."""
        self.input_size = size
        s_m, s_s = torch.tensor(mean), torch.tensor(std)
        t_m, t_s = torch.tensor(self.mean), torch.tensor(self.std)
        self.renormalize = not (torch.allclose(s_m, t_m) and torch.allclose(s_s, t_s))
        self.scale.copy_((s_s / t_s).view(1, 3, 1, 1))
        self.shift.copy_(((s_m - t_m) / t_s).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # a teacher is always in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = self._prepare(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.model(x)
        return out.clone()  # a normal tensor again: the loss may save it for backward


_MEASURED: dict = {}  # Teacher.optimize's timings, by (architecture, shape, device, precision)


def fastest_of(candidates: dict, repeats: int = 2, sync=None) -> dict:
    """Seconds of each zero-argument callable in `candidates`: one untimed call (warm-up:
    oneDNN primitives, cuDNN plans), then the best of `repeats` timed calls (`sync()` after
    each, e.g. torch.cuda.synchronize). Alternated, so a slow moment of the machine does not
    fall on one candidate only."""
    for run in candidates.values():
        run()
    best = {n: float("inf") for n in candidates}
    for _ in range(repeats):
        for n, run in candidates.items():
            t0 = time.perf_counter()
            run()
            if sync is not None:
                sync()
            best[n] = min(best[n], time.perf_counter() - t0)
    return best


def create_cnn(name: str, num_classes: int, small_stem: bool = False, **overrides) -> nn.Module:
    """A timm or torchvision classifier by name (random init).

    small_stem: replace a ResNet's 7x7/2 stem and max-pool by a 3x3/1 convolution (the usual
    CIFAR ResNet). timm has no switch for this, hence the two lines below.
    """
    if name in timm.list_models():
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **overrides)
    elif name in torchvision.models.list_models(module=torchvision.models):
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                             **overrides)
    else:
        raise ValueError(f"unknown model '{name}': not a timm or torchvision classifier "
                         "(see timm.list_models() and torchvision.models.list_models())")
    if small_stem:
        if not (isinstance(getattr(model, "conv1", None), nn.Conv2d)
                and hasattr(model, "maxpool")):
            raise ValueError(f"small_stem applies to ResNet-style models with one conv1 "
                             f"convolution; '{name}' has none (a deep stem?): set "
                             "model.small_stem=false")
        width = model.conv1.out_channels
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _model_norm(model: nn.Module) -> tuple[tuple, tuple]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(cfg.get("std", IMAGENET_DEFAULT_STD))


def model_from_checkpoint(ckpt: dict, path) -> nn.Module:
    """Rebuild the network a deitkit checkpoint describes (its `meta`) and load its weights."""
    meta = ckpt["meta"]
    if meta.get("role") == "pretrain":
        raise CheckpointError(
            f"'{path}' is a pretraining run's encoder (no classifier heads): it cannot teach, "
            "be evaluated or predict; start a student from it with `deitkit train --data "
            f"LABELLED model.weights={path}`")
    if meta.get("role") == "student":
        model = create_student(meta["model_name"], num_classes=meta["num_classes"],
                               img_size=meta["img_size"], patch_size=meta.get("patch_size"),
                               **meta.get("model_overrides", {}))
    else:
        model = create_cnn(meta["model_name"], meta["num_classes"],
                           small_stem=meta.get("small_stem", False),
                           **meta.get("model_overrides", {}))
    load_weights(model, ckpt["model"], path)
    return model


def _from_deitkit_checkpoint(path: Path, num_classes: Optional[int]) -> Teacher:
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    model = model_from_checkpoint(ckpt, path)
    if hasattr(model, "set_distilled_training"):  # a distilled DeiT can teach too:
        model.set_distilled_training(False)       # its eval forward fuses the heads
    _check_classes(meta["num_classes"], num_classes, path)
    teacher = Teacher(model, meta["mean"], meta["std"], name=meta["model_name"],
                      num_classes=meta["num_classes"])
    teacher.classes = meta.get("classes")
    return teacher


def _check_classes(teacher_classes: int, dataset_classes: Optional[int], where) -> None:
    if dataset_classes is not None and teacher_classes != dataset_classes:
        raise ValueError(f"teacher {where} predicts {teacher_classes} classes but the dataset has "
                         f"{dataset_classes}; train a teacher on this dataset "
                         "(`deitkit teacher --data ...`) or pick one with matching classes")


def check_class_names(model_classes: Optional[Sequence[str]], data_classes: Sequence[str],
                      what: str) -> None:
    """A model that predicts other classes than the data's, by name, is refused (a count
    that matches is not enough: five CIFAR-10 classes are not the other five). Models
    without recorded names (timm, torchvision) pass."""
    if model_classes is None or list(model_classes) == list(data_classes):
        return
    raise ValueError(f"{what} was trained on the classes {list(model_classes)}, the data's are "
                     f"{list(data_classes)}: train it on this data, or give data with those "
                     "classes (same names, same order)")


def load_weights(model: nn.Module, state: dict, path) -> None:
    state = unwrap_state(state)
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"weights in '{path}' do not fit the model: '{k}' has shape "
                                  f"{tuple(v.shape)}, the model expects {tuple(own[k].shape)} "
                                  "(a different class count or architecture?)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"weights in '{path}' do not fit the model: missing keys "
                              f"{missing[:5]}, unexpected keys {unexpected[:5]}")


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict names of a CNN's classifier (timm's `get_classifier()`, else the last
    Linear layer, as in torchvision's classifiers)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        return []
    name = next(n for n, m in model.named_modules() if m is head)
    return [f"{name}.{k}" if name else k for k in head.state_dict()]


def _hub_cnn_state(name: str) -> dict:
    """The hub weights of a timm or torchvision CNN (needs the internet)."""
    if name in timm.list_models():
        return hub_state(name)
    try:
        return torchvision.models.get_model(name, weights="DEFAULT").state_dict()
    except Exception as e:  # noqa: BLE001 - hub failures come as many types (offline, proxy)
        raise CheckpointError(
            f"could not download the pretrained weights of '{name}' ({type(e).__name__}). "
            "Offline? Save them on a connected machine and pass model.weights=FILE") from None


def init_cnn(model: nn.Module, weights: Optional[str] = None,
             hub_name: Optional[str] = None, classes: Optional[list] = None) -> list[str]:
    """Fine-tuning's start: load a timm/torchvision/deitkit weights file (`weights_only`, or
    safetensors) or the hub weights of `hub_name` into CNN `model`, built for the data's
    classes. Every tensor whose name and shape match is loaded; the classifier is
    re-initialised when its shape differs (a 1000-class ImageNet file into a 10-class
    teacher); any other difference is an error naming the keys and shapes. Returns what was
    done, one line each.

    `classes`: the data's class names; a deitkit checkpoint trained on other names of the
    same count keeps its body but not its classifier.

    Written here because timm's `create_model(pretrained=True, num_classes=N)` drops a
    mismatched classifier without a word, and torchvision's loaders refuse any mismatch."""
    theirs = None
    if weights:
        w = read_weights(weights, what="model.weights folder")
        state, theirs, source = unwrap_state(w.state), w.classes, f"'{w.path}'"
    elif hub_name:
        state, source = unwrap_state(_hub_cnn_state(hub_name)), f"the hub weights of {hub_name}"
    else:
        return []
    own = model.state_dict()
    head = set(classifier_keys(model))
    shape = {k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)}
    missing = {k for k in own if k not in state}
    renamed = classes is not None and theirs is not None and list(theirs) != list(classes)
    reinit = sorted(head if renamed else (shape | missing) & head)
    bad = sorted(shape - head)
    if bad:
        hint = (" (the file has an ImageNet stem; this model a CIFAR stem: set "
                "model.small_stem=false to load it)" if any(k.startswith("conv1.") for k in bad)
                else "")
        raise CheckpointError(f"weights {source} do not fit the model: " + "; ".join(
            f"'{k}' is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
            for k in bad[:6]) + hint)
    lost = sorted(k for k in missing - head if not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    if lost:
        raise CheckpointError(f"weights {source} do not fit the model: it has no "
                              f"{', '.join(lost[:6])}{' ...' if len(lost) > 6 else ''} "
                              f"({len(lost)} tensors; the file's first keys: "
                              f"{', '.join(list(state)[:4])}): another architecture?")
    load = {k: v for k, v in state.items() if k in own and k not in reinit}
    model.load_state_dict(load, strict=False)
    lines = [f"loaded {len(load)} of {len(own)} tensors from {source}"]
    if reinit and renamed:
        lines.append(f"classifier re-initialised ({', '.join(reinit)}): the weights were "
                     f"trained on the classes {list(theirs)}, this data's are {list(classes)}")
    elif reinit:
        was = [tuple(state[k].shape) for k in reinit if k in state]
        lines.append(f"classifier re-initialised for the data's classes: {', '.join(reinit)}"
                     + (f" (the file's: {', '.join(map(str, was))})" if was else ""))
    if unexpected:
        lines.append(f"not used from the file: {', '.join(unexpected[:5])}"
                     + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    return lines


def create_teacher(name_or_path: str, num_classes: Optional[int] = None,
                   weights: Optional[str] = None, pretrained: bool = False) -> Teacher:
    """A frozen teacher from a model name, a deitkit run folder or a deitkit checkpoint.

    name_or_path: a timm/torchvision model name (random init unless `weights` or `pretrained`),
      a folder made by `deitkit teacher`/`deitkit train` (its best checkpoint), or a `.pt`
      deitkit checkpoint. `weights`: a local timm/torchvision/deitkit weights file, always read
      with `weights_only=True`. `pretrained`: download hub weights (needs the internet).
    Raises ValueError when the teacher's class count differs from `num_classes`.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return _from_deitkit_checkpoint(resolve_checkpoint(p, what="teacher folder"), num_classes)
    if p.is_file():
        return _from_deitkit_checkpoint(p, num_classes)
    name = name_or_path
    if num_classes is None:
        raise ValueError("num_classes is needed to build a teacher by name")
    model_classes = 1000 if (pretrained and not weights) else num_classes
    try:
        if pretrained and name in timm.list_models():
            model = timm.create_model(name, pretrained=True)
        elif pretrained:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        else:
            model = create_cnn(name, model_classes)
    except (OSError, RuntimeError) as e:  # hub download failures (offline, proxy, ...)
        if pretrained:
            raise CheckpointError(
                f"could not download pretrained weights for teacher '{name}' ({e}). Offline? "
                "Save them on a connected machine and pass --teacher-weights FILE") from None
        raise
    if weights:
        load_weights(model, load_state_file(weights), weights)
    out = _num_outputs(model)
    _check_classes(out, num_classes, f"'{name}'" + (f" with weights '{weights}'" if weights else ""))
    mean, std = _model_norm(model)
    return Teacher(model, mean, std, name=name, num_classes=out)


def _num_outputs(model: nn.Module) -> int:
    if hasattr(model, "num_classes") and isinstance(model.num_classes, int):
        return model.num_classes
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    model.train(was)
    return out.shape[-1]
