"""Typed run configuration: dataclasses, YAML recipes, dotted overrides.

A run is described by one `TrainConfig`. It is built from a named recipe (a YAML file in
`deitkit/recipes/`), then an optional user YAML file, then dotted command-line overrides such as
`distill.kind=soft`. Every layer is checked against the dataclasses: an unknown key or a value
of the wrong type is a `ConfigError` that names the key. The resolved config is written to the
run folder as `config.yaml`, so every default that shaped a run can be read back.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


# the choices of every option, as types: the one place they are listed (checked on merge)
AugStack = Literal["deit", "v2", "light"]
CropKind = Literal["rrc", "pad"]
EraseMode = Literal["pixel", "rand", "const"]
DistillKind = Literal["none", "soft", "hard"]
KlNorm = Literal["per_element", "batchmean"]
Heads = Literal["both", "cls", "dist"]
Fusion = Literal["logits", "probs"]
Amp = Literal["auto", "bf16", "fp16", "off"]
OnError = Literal["error", "skip"]
OnDevice = Union[bool, Literal["auto"]]
Role = Literal["student", "teacher", "pretrain"]  # what a run trains: a DeiT student, a CNN
# teacher, or a student's encoder by masked-autoencoder pretraining (`deitkit pretrain`)


@dataclass(frozen=True)
class RecipeInfo:
    """What a recipe is for; shown by `deitkit recipes` and kept in the resolved config."""
    name: str = ""
    """Recipe name, e.g. `quickstart`."""
    description: str = ""
    """One paragraph: what the recipe reproduces and for whom."""
    command: str = ""
    """The command that runs it."""
    hardware: str = ""
    """The hardware the runtime and accuracy below were measured on (or taken from)."""
    runtime: str = ""
    """Expected wall-clock time on that hardware."""
    expected_accuracy: str = ""
    """Expected accuracy, with its source (our measurement or the paper)."""


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are batched."""
    name: str = "digits"
    """`digits` (scikit-learn's 8x8 digits, embedded), `cifar10`, `cifar100`, `mnist`,
    `fashion-mnist`, or a path to an ImageFolder tree with `train/` and `val/` or `test/`."""
    root: str = "~/.cache/deitkit/datasets"
    """Folder where torchvision datasets are downloaded to / looked for."""
    download: bool = True
    """Download torchvision datasets when they are missing (needs the internet)."""
    img_size: int = 32
    """Side of the square image the student sees, in pixels."""
    train_fraction: float = 1.0
    """Fraction of the training split to use (stratified by class, seeded by `fraction_seed`)."""
    fraction_seed: int = 0
    """Seed of the stratified training-fraction subset (independent of the run seed)."""
    holdout: float = 0.0
    """Fraction of the training images (per class, after `train_fraction`) that neither the
    student nor its teacher trains on: a student's fusion weight is chosen on them at every
    evaluation (`distill.fusion_weight`). 0: none held out."""
    batch_size: int = 64
    """Training batch size per process. The global batch is this times the world size."""
    eval_batch_size: int = 256
    """Evaluation batch size per process."""
    num_workers: int = 2
    """DataLoader worker processes (0 loads in the main process)."""
    on_bad_image: OnError = "error"
    """An unreadable image file: `error` (stop, naming the file) or `skip` (use the next
    readable image instead; skipped files are listed in RUN/skipped_images.txt and counted in
    the metrics)."""
    on_device: OnDevice = "auto"
    """Hold the data on the training device and augment it there, per sample (see
    `deitkit.data.device`): `auto` when the decoded images fit in `device_share` of the
    device's memory and the augmentation is one the device implements (`deit` with RandAugment
    `rand-...-inc1`, or `light`), `true` (an error when it cannot), `false` (worker loader)."""
    device_share: float = 0.5
    """The most of the device's memory (a GPU's; a CPU's RAM) the decoded images may take."""
    compile_augment: bool = False
    """With the data on the device: `torch.compile` the per-sample augmentation as one graph
    (about 1,400 small ops per batch fused into a few kernels; on an H100 the ops alone took
    about 28 ms per batch, launch-bound). Compiling takes a minute or more (75 s on the 2-core
    CPU), and on a CPU it runs the dense form (every op on every image): for GPUs. Views may
    differ from the uncompiled ones by one grey level at a few pixels (float rounding), so a
    teacher store records it."""
    cache_dir: str = "~/.cache/deitkit/decoded"
    """Where decoded image folders are cached (uint8 safetensors, keyed by a digest of the
    files and the decode size; rebuilt when a file changes)."""
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    """Per-channel normalisation mean (ImageNet's, as DeiT)."""
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    """Per-channel normalisation standard deviation."""


@dataclass(frozen=True)
class AugConfig:
    """Training augmentation and label regularisation (the DeiT recipe's heart)."""
    stack: AugStack = "deit"
    """`deit` (timm ops as in the official code), `v2` (the seed's torchvision-v2 formulation),
    or `light` (crop + flip only, a CNN-style stack, no mixing)."""
    crop: CropKind = "rrc"
    """`rrc`: bicubic RandomResizedCrop (ImageNet); `pad`: RandomCrop with 4-pixel padding
    (what the official code uses for 32-pixel images)."""
    scale_min: float = 0.08
    """Smallest area fraction of RandomResizedCrop."""
    hflip: float = 0.5
    """Horizontal-flip probability (0 for digits and text)."""
    rand_augment: str = "rand-m9-mstd0.5-inc1"
    """timm RandAugment spec; empty string disables it. The `v2` stack takes its magnitude
    (`m9`) for `v2.RandAugment(num_ops=2, magnitude=9)`."""
    color_jitter: float = 0.3
    """Colour-jitter strength. As in timm and the official code, it is applied only when
    RandAugment is off (timm ignores it when an auto-augment policy is given)."""
    reprob: float = 0.25
    """Random-erasing probability."""
    remode: EraseMode = "pixel"
    """Random-erasing fill: `pixel` (per-pixel normal noise), `rand` or `const`."""
    mixup: float = 0.8
    """Mixup alpha (0 disables Mixup)."""
    cutmix: float = 1.0
    """CutMix alpha (0 disables CutMix)."""
    mix_prob: float = 1.0
    """Probability of applying Mixup or CutMix to a batch."""
    switch_prob: float = 0.5
    """Probability of CutMix instead of Mixup when both are on."""
    smoothing: float = 0.1
    """Label smoothing."""
    repeated_aug: int = 3
    """Repeated augmentation: each image appears this many times per epoch, differently
    augmented (1 disables). Works in single-process runs and on datasets of any size."""
    eval_crop_pct: float = 1.0
    """Evaluation centre-crop fraction (0.875 for ImageNet at 224; 1.0 for small images)."""
    interpolation: str = "bicubic"
    """Resize interpolation."""


@dataclass(frozen=True)
class ModelConfig:
    """The network being trained (the student, or the CNN in a teacher run)."""
    name: str = "deit_tiny_distilled_patch16_224"
    """A timm DeiT name for students; any timm/torchvision classifier for teacher runs."""
    patch_size: Optional[int] = None
    """Patch-size override for DeiT students (e.g. 4 for 32x32 images)."""
    drop_path: float = 0.1
    """Stochastic-depth rate."""
    small_stem: bool = False
    """CNNs only: replace a ResNet's 7x7/2 stem and max-pool by a 3x3/1 convolution (CIFAR
    ResNet), which keeps small images at full resolution."""
    overrides: dict = field(default_factory=dict)
    """Further keyword arguments passed to the timm constructor (e.g. `depth: 6`)."""
    pretrained: bool = False
    """Students: start from the timm hub weights of `name` (needs the internet; offline, save
    them once and use `weights`)."""
    weights: Optional[str] = None
    """Students: start from this file: timm or Hugging Face safetensors/.pth, an official DeiT
    checkpoint (`model` / `model_ema`), a deitkit checkpoint or export. Heads are re-initialised
    when the class count differs, the position embedding is resampled to the image size and
    patch grid, a plain ViT fills a distilled student (and back)."""


@dataclass(frozen=True)
class TeacherConfig:
    """Where the teacher comes from. With no `name`, a CNN is trained first (see `train_*`)."""
    name: Optional[str] = None
    """timm or torchvision model name, a deitkit teacher run folder, or a deitkit checkpoint."""
    weights: Optional[str] = None
    """Local weights file for `name` (timm, torchvision or deitkit checkpoint)."""
    pretrained: bool = False
    """Download the model's pretrained weights from the hub (needs the internet)."""
    train_model: str = "resnet18"
    """CNN trained on the same split when no teacher is given."""
    train_recipe: str = "cnn-teacher"
    """Recipe used to train that CNN (from `train_weights` / `train_pretrained` and left at
    `cnn-teacher`: the `cnn-finetune` recipe instead)."""
    train_weights: Optional[str] = None
    """Fine-tune that CNN from this weights file (timm or torchvision state dict,
    safetensors or .pth; a 1000-class ImageNet file gets a new classifier for the data's
    classes) instead of training it from random weights."""
    train_pretrained: bool = False
    """Fine-tune that CNN from the timm hub weights of `train_model` (needs the internet;
    offline, save them once and use `train_weights`)."""
    img_size: Optional[int] = None
    """The teacher's input side in pixels (None: the student's). The student's batch is
    resized for it on the device (bilinear, antialiased), and a CNN the run trains is trained
    at this size: an ImageNet CNN keeps a resolution it works at while the student trains on
    small images (BiT's rule: images under 96 px upscaled to 128-160 for fine-tuning)."""
    train_epochs: Optional[int] = None
    """Epochs for that CNN (None: the recipe's value)."""
    train_overrides: list = field(default_factory=list)
    """Dotted overrides for that CNN's run, e.g. `["model.small_stem=false"]`."""
    optimize: bool = True
    """Run the frozen teacher's forward the way measured fastest for the run's batch and
    precision: plain, channels_last, or (on a CPU at fp32) BatchNorm folded into the
    convolutions with oneDNN layouts (torch.fx `optimize_for_inference`, kept only where its
    outputs equal the plain model's to float rounding). The choice and its figures are logged."""


@dataclass(frozen=True)
class DistillConfig:
    """Distillation objective and inference fusion."""
    kind: DistillKind = "hard"
    """`hard` (teacher argmax, the paper's best), `soft` (KL at temperature `tau`) or `none`."""
    alpha: float = 0.5
    """Weight of the distillation term: (1 - alpha) * CE(cls) + alpha * KD(dist)."""
    tau: float = 1.0
    """Soft-distillation temperature."""
    kl_norm: KlNorm = "per_element"
    """Soft KL normalisation: `per_element` (official: sum * tau^2 / numel) or `batchmean`
    (Hinton, timm: sum / batch * tau^2)."""
    heads: Heads = "both"
    """`both`; `cls` (class head only, no teacher); `dist` (distillation head only, teacher only)."""
    fusion: Fusion = "logits"
    """Inference fusion of the heads: `logits` (mean of logits; official code, timm and Hugging
    Face) or `probs` (mean of softmax probabilities; the paper's text)."""
    fusion_weight: Optional[float] = None
    """The class head's weight in the fusion (the distillation head gets 1 - it). None: 0.5
    (the plain mean), or, with `data.holdout` > 0, chosen on the held-out training images at
    every evaluation (0, 0.1, ..., 1; ties go to the value nearest 0.5), so that fusion never
    does worse there than the better head. The weight used is recorded in the checkpoints
    and used by eval, predict and the exports."""
    store: Optional[str] = None
    """Folder of stored teacher outputs (`deitkit store`) to read instead of running the
    teacher. It must have been recorded for this data, split, seed, augmentation, batch size,
    process count and teacher; anything else is refused."""
    store_verify_batches: int = 1
    """With `store`: check this many batches per epoch (-1: all) against the recorded
    checksum of the augmented, mixed view (a mismatch stops the run)."""


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (timm factories)."""
    opt: str = "adamw"
    """timm optimiser name (`adamw`, `sgd`, `lamb`, ...)."""
    base_lr: float = 5e-4
    """Learning rate per `lr_batch_divisor` images of global batch."""
    lr_batch_divisor: int = 512
    """lr = base_lr * global_batch / lr_batch_divisor (the DeiT linear scaling rule)."""
    lr: Optional[float] = None
    """Absolute learning rate; overrides the scaling rule when set."""
    weight_decay: float = 0.05
    """Decoupled weight decay; never applied to biases, norms, position embedding or tokens."""
    momentum: float = 0.9
    """Momentum for SGD-type optimisers."""
    clip_grad: Optional[float] = None
    """Clip the global gradient norm to this value (None: no clipping)."""
    sched: str = "cosine"
    """timm scheduler name."""
    warmup_epochs: int = 5
    """Linear warm-up epochs (from `warmup_lr`)."""
    warmup_lr: float = 1e-6
    """Learning rate at the start of warm-up."""
    min_lr: float = 1e-5
    """Learning rate at the end of the cosine."""
    layer_decay: Optional[float] = None
    """Layer-wise lr decay (timm's layer groups): the classifier gets the full lr, each group
    below it `layer_decay` times the one above (BEiT, Bao et al. 2021). None: one lr for all."""
    fused: bool = True
    """Use the fused (one kernel) optimiser step where torch has one (AdamW, Adam, SGD on CPU
    and GPU); others fall back to the foreach implementation."""


@dataclass(frozen=True)
class EmaConfig:
    """Exponential moving average of the weights (timm ModelEmaV3)."""
    enabled: bool = True
    """Keep an EMA copy of the weights and report its fused accuracy."""
    decay: float = 0.99996
    """EMA decay per optimiser step."""


@dataclass(frozen=True)
class MaeConfig:
    """Self-supervised pretraining (`deitkit pretrain`): a masked autoencoder (He et al. 2022,
    arXiv:2111.06377) over the student's own encoder. Unused by `train` and `teacher`."""
    mask_ratio: float = 0.75
    """Share of each image's patches hidden from the encoder (the paper's 0.75)."""
    decoder_dim: int = 128
    """Width of the light decoder (the paper: 512 for ViT-B/L on ImageNet)."""
    decoder_depth: int = 2
    """Transformer blocks of the decoder (the paper: 8; 1 already works, its Table 1a)."""
    decoder_heads: int = 4
    """Attention heads of the decoder blocks."""
    norm_pix_loss: bool = True
    """Loss on per-patch normalised pixels (each target patch minus its mean, over its
    standard deviation): the paper's better variant (Table 1d)."""
    scale_min: float = 0.2
    """Smallest area fraction of the random resized crop (the paper: 0.2 to 1)."""
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas (the paper's 0.9, 0.95)."""
    val_images: int = 256
    """A plain folder of images: this many of them, seeded, are held out for the validation
    loss and the pictures (an ImageFolder tree uses its val/ or test/ split)."""
    pictures: int = 8
    """Validation images in each picture grid (original, masked, reconstruction); 0: none."""
    picture_epochs: int = 4
    """Picture grids at about this many evenly spaced epochs (the first and last included)."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""
    recipe: RecipeInfo = field(default_factory=RecipeInfo)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    mae: MaeConfig = field(default_factory=MaeConfig)
    epochs: int = 300
    """Training epochs."""
    seed: int = 0
    """Run seed (weights, augmentation, sampling)."""
    amp: Amp = "auto"
    """Mixed precision: `auto` (on a GPU bf16 where it has it, else fp16; on a CPU with bf16
    instructions whichever of bf16 and fp32 runs this run's step faster, measured once per
    CPU model and cached in ~/.cache/deitkit/amp.json; else fp32), `bf16`, `fp16` (GPU only),
    `off`. The precision a run trained in is recorded and kept by its resume and `eval`."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    out: Optional[str] = None
    """Run folder (default: `runs/<recipe>-<timestamp>`)."""
    eval_every: int = 1
    """Evaluate every N epochs (and always after the last)."""
    eval_train_images: int = 500
    """Also evaluate on this many training images (a fixed seeded subset) with the evaluation
    transform, i.e. without augmentation: `train_clean_top1` in metrics.jsonl and summary.json,
    beside validation, and the regime the run ended in (still learning, over-fitting, fitted).
    0: off."""
    progress: bool = True
    """Show progress bars."""
    tensorboard: bool = True
    """Write TensorBoard scalars of every epoch to RUN/tb/ (`tensorboard --logdir RUN/tb`)."""
    nonfinite: OnError = "error"
    """A NaN/inf loss: `error` (stop with the epoch, step and loss parts; the last good
    checkpoint stays) or `skip` (drop that step, count it; for rare fp16/bf16 overflows)."""
    max_skipped_steps: int = 20
    """With nonfinite=skip, stop anyway after this many skipped steps in one epoch."""
    keep_eval_checkpoints: bool = False
    """Also keep the weights of evaluated epochs (`checkpoint-epoch-NNN.pt`, with that epoch's
    metrics) as a ladder: each new validation high at least half a point above the last kept
    one, so every accuracy the run reached has a checkpoint within about half a point (to
    pick a teacher of a given accuracy: the teacher-kind study)."""
    race: bool = False
    """With a time budget: choose the student's shape by a race inside the budget (this
    student, a patch grid twice as fine, and that grid at half the depth; successive halving
    on the held-out training images, `data.holdout`), the winner continuing with the rest of
    the budget (`deitkit.race`). The `auto` configuration sets it where it holds images out."""
    compile: bool = False
    """`torch.compile` the student's training forward (slow first step: about a minute on a
    CPU; pays off on long runs and on GPUs)."""


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with key and type checking


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, coerced value) for `value` against a field annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        for a in args:
            if a is type(None):
                continue
            ok, v = _type_ok(value, a)
            if ok:
                return True, v
        return False, value
    if origin is Literal:
        return value in typing.get_args(tp), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads `2e-3` (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    if tp is dict or origin is dict:
        return isinstance(value, dict), value
    if tp is list or origin is list:
        return isinstance(value, list), value
    return True, value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _merge(obj: Any, updates: dict, prefix: str = "", source: str = "config") -> None:
    """Apply a nested dict of updates to dataclass `obj` in place, checking keys and types.
    The one place a (frozen) config is written to: only on a config being built here."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, "
                          f"got {type(updates).__name__}")
    hints = _hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{path}'. Known keys here: "
                              f"{', '.join(sorted(prefix + n for n in names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, prefix=f"{path}.", source=source)
            continue
        ok, coerced = _type_ok(value, hints[key])
        if not ok:
            hint = (" (YAML reads off/on/yes/no as booleans: quote the value)"
                    if isinstance(value, bool) else "")
            raise ConfigError(f"{source}: key '{path}' expects {_type_name(hints[key])}, "
                              f"got {value!r} ({type(value).__name__}){hint}")
        if isinstance(current, dict):  # key by key: a recipe's other keys are kept
            coerced = {**current, **coerced}
        object.__setattr__(obj, key, coerced)  # frozen outside this module


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A new config: `cfg` with `a.b=value` strings applied; values are parsed as YAML scalars
    (`null`, `0.5`, `true`)."""
    cfg = copy.deepcopy(cfg)
    _apply_overrides(cfg, overrides)
    return cfg


def replace_keys(cfg: TrainConfig, **dotted: Any) -> TrainConfig:
    """A new config with dotted keys set to already-typed values, e.g.
    `replace_keys(cfg, epochs=3, **{"teacher.train_epochs": 2})` (dataclasses.replace, nested)."""
    for key, value in dotted.items():
        head, _, rest = key.partition(".")
        if not hasattr(cfg, head):
            raise ConfigError(f"unknown key '{key}'")
        value = replace_keys(getattr(cfg, head), **{rest: value}) if rest else value
        cfg = dataclasses.replace(cfg, **{head: value})
    return cfg


def _apply_overrides(cfg: TrainConfig, overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value "
                              f"(for example distill.kind=soft)")
        key, raw = item.split("=", 1)
        if _is_str_field(cfg, key.strip()) and raw != "null":
            value = raw  # keep text as typed: YAML would read `off` or `no` as a boolean
        else:
            value = yaml.safe_load(raw) if raw != "" else ""
        nested: dict = {}
        cursor = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            cursor = cursor.setdefault(p, {})
        cursor[parts[-1]] = value
        _merge(cfg, nested, source=f"override '{item}'")


def _is_str_field(cfg: Any, dotted: str) -> bool:
    obj = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        obj = getattr(obj, p, None)
        if not dataclasses.is_dataclass(obj):
            return False
    tp = _hints(type(obj)).get(parts[-1])
    if typing.get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(tp))
    return tp is str or (typing.get_origin(tp) is typing.Union and str in typing.get_args(tp))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, source: str = "config") -> TrainConfig:
    cfg = TrainConfig()
    _merge(cfg, d, source=source)
    return cfg


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# recipes

def list_recipes() -> list[str]:
    files = resources.files("deitkit.recipes").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def recipe_dict(name: str) -> dict:
    path = resources.files("deitkit.recipes") / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe '{name}'. Available: {', '.join(list_recipes())}")
    data = yaml.safe_load(path.read_text()) or {}
    return data


def load_yaml_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping at the top level")
    return data


def build_config(recipe: str = "quickstart", config_file: Optional[str] = None,
                 overrides: Optional[list[str]] = None) -> TrainConfig:
    """Recipe, then YAML file, then dotted overrides; each checked against the dataclasses."""
    cfg = TrainConfig()
    _merge(cfg, recipe_dict(recipe), source=f"recipe '{recipe}'")
    if config_file:
        _merge(cfg, load_yaml_file(config_file), source=f"config file '{config_file}'")
    _apply_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg


def _get(cfg: Any, dotted: str) -> Any:
    for p in dotted.split("."):
        cfg = getattr(cfg, p)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Value checks that types alone cannot express (choices are checked by their types)."""
    checks = [
        ("epochs", cfg.epochs >= 1, "at least 1"),
        ("data.img_size", cfg.data.img_size >= 8, "at least 8"),
        ("data.batch_size", cfg.data.batch_size >= 1, "at least 1"),
        ("data.train_fraction", 0.0 < cfg.data.train_fraction <= 1.0, "in (0, 1]"),
        ("data.holdout", 0.0 <= cfg.data.holdout < 0.5, "in [0, 0.5)"),
        ("distill.fusion_weight", cfg.distill.fusion_weight is None
         or 0.0 <= cfg.distill.fusion_weight <= 1.0, "empty or in [0, 1]"),
        ("aug.repeated_aug", cfg.aug.repeated_aug >= 1, "at least 1 (1 disables)"),
        ("distill.alpha", 0.0 <= cfg.distill.alpha <= 1.0, "in [0, 1]"),
        ("distill.tau", cfg.distill.tau > 0, "positive"),
        ("optim.warmup_epochs", cfg.optim.warmup_epochs >= 0, "non-negative"),
        ("optim.layer_decay", cfg.optim.layer_decay is None or 0.0 < cfg.optim.layer_decay <= 1.0,
         "empty (one lr) or in (0, 1]"),
        ("eval_every", cfg.eval_every >= 1, "at least 1"),
        ("distill.store_verify_batches", cfg.distill.store_verify_batches >= -1,
         "-1 (all), 0 (none) or a count"),
        ("teacher.img_size", cfg.teacher.img_size is None or cfg.teacher.img_size >= 8,
         "null (the student's) or at least 8"),
        ("mae.mask_ratio", 0.0 < cfg.mae.mask_ratio < 1.0, "in (0, 1)"),
        ("mae.decoder_dim", cfg.mae.decoder_dim >= 1, "at least 1"),
        ("mae.decoder_depth", cfg.mae.decoder_depth >= 1, "at least 1"),
        ("mae.decoder_heads", cfg.mae.decoder_heads >= 1
         and cfg.mae.decoder_dim % cfg.mae.decoder_heads == 0,
         "at least 1 and a divisor of mae.decoder_dim"),
        ("mae.scale_min", 0.0 < cfg.mae.scale_min <= 1.0, "in (0, 1]"),
        ("mae.pictures", cfg.mae.pictures >= 0, "0 or more"),
    ]
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"key '{key}' must be {what}; got {_get(cfg, key)!r}")
    if (cfg.aug.mixup > 0 or cfg.aug.cutmix > 0) and cfg.aug.stack != "light" \
            and cfg.data.batch_size % 2:
        raise ConfigError(f"key 'data.batch_size' must be even when Mixup/CutMix is on "
                          f"(timm mixes a batch with its flip); got {cfg.data.batch_size}")
    problem = heads_kind_problem(cfg.distill.kind, cfg.distill.heads)
    if problem:
        raise ConfigError(f"distill.{problem}")


def heads_kind_problem(kind: str, heads: str) -> Optional[str]:
    """What is wrong with training `heads` under distillation `kind` (None: nothing). The one
    statement of the rule; the config and the loss both ask it."""
    if heads == "cls" and kind != "none":
        return "heads=cls trains the class head without a teacher: set distill.kind=none"
    if heads == "dist" and kind == "none":
        return "heads=dist trains on teacher labels only: set distill.kind=hard or soft"
    return None


# ---------------------------------------------------------------------------------------------
# keys a run does not use

# (key prefix, roles that never read it, why), and the keys a pretraining run reads besides
# data, model (but small_stem), optim, mae and the run's own settings
_UNUSED = [("mae.", ("student", "teacher"), "only `deitkit pretrain` reads mae.*"),
           ("distill.", ("teacher", "pretrain"), "a {role} run distils from no teacher"),
           ("teacher.", ("teacher", "pretrain"), "a {role} run has no teacher"),
           ("model.small_stem", ("student", "pretrain"), "small_stem is a CNN setting"),
           ("model.patch_size", ("teacher",), "a CNN has no patches"),
           ("model.drop_path", ("teacher",), "the CNN is built without stochastic depth"),
           ("ema.", ("pretrain",), "pretraining keeps no EMA"),
           ("aug.", ("pretrain",), "pretraining uses a random resized crop (mae.scale_min) and "
                                   "a flip (aug.hflip) only"),
           ("eval_train_images", ("pretrain",), "pretraining has no labels to score"),
           ("data.holdout", ("pretrain",), "pretraining chooses no fusion weight")]
_PRETRAIN_AUG = ("aug.hflip", "aug.interpolation", "aug.eval_crop_pct")


def unused_keys(cfg: TrainConfig, role: str, keys: list[str]) -> list[str]:
    """Of the dotted `keys` a user set, those a `role` run of `cfg` would not read, each with
    the reason (`teacher.train_epochs: distill.kind=none trains no teacher`). A key set but not
    used is refused rather than silently dropped."""
    out = []
    for key in keys:
        why = next((w.format(role=role) for prefix, roles, w in _UNUSED
                    if key.startswith(prefix) and role in roles
                    and not (role == "pretrain" and key in _PRETRAIN_AUG)), None)
        if (why is None and role == "student" and key.startswith("teacher.")
                and cfg.distill.kind == "none" and cfg.teacher.name is None):
            why = "distill.kind=none trains and runs no teacher"
        if why is not None:
            out.append(f"{key}: {why}")
    return out


# ---------------------------------------------------------------------------------------------
# comparing configurations (resume, reuse of finished study runs)

# keys that may change between two runs without changing their results
RESULT_FREE_KEYS = ("out", "progress", "device", "data.num_workers", "data.root", "data.cache_dir",
                    "data.eval_batch_size", "distill.store_verify_batches", "tensorboard")


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k != "overrides":
            keys += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def run_changing_keys(stored: dict, now: dict) -> list[str]:
    """Dotted keys that make config `now` a different run from `stored` (those in
    RESULT_FREE_KEYS and the recipe's descriptive fields do not). A key the stored config
    lacks (written by an older deitkit) counts as its default."""
    try:
        stored = to_dict(from_dict(stored))
    except ConfigError:
        pass  # a key this version does not know: compared as it is, so it shows as a change
    return [k for k in config_diff(stored, now)
            if k not in RESULT_FREE_KEYS and not k.startswith("recipe.")]
