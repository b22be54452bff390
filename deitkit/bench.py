"""`deitkit bench`: our training step against a timm reference step, in one process.

Every configuration trains the same student architecture on the same batches, with the same
teacher weights. Configurations are measured round-robin (repeat 1 of each, then repeat 2 of
each, ...) so that a machine whose speed drifts (shared CPUs do) affects all of them alike;
each figure is the median over repeats.

Measured:
  step       images/s of one training step: our `engine.train_one_epoch` (the real code) with
             an online teacher, with stored teacher outputs, without a teacher; fp32 and bf16
             (and torch.compile when asked); and the reference written as a timm user would
             (`timm.task.TokenDistillationTask`, `timm.optim.create_optimizer_v2` defaults,
             timm `Mixup`, `ModelEmaV3`).
  data       decode + DeiT augmentation of JPEG files, images/s in one process (per worker)
             and through a DataLoader with `--workers` workers.
  eval       images/s of `engine.evaluate`.
  profile    share of our fp32 step in each phase (torch.profiler ranges in the engine).
  flops      model FLOPs per step (torch's FlopCounterMode) and achieved FLOP/s against the
             machine's measured matmul peak.
  memory     peak memory (per configuration on a GPU; the process's peak RSS on a CPU).
"""
from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.task import TokenDistillationTask
from timm.utils import ModelEmaV3
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from .config import AugConfig, TrainConfig
from .distill import DistillationLoss
from .data import RepeatedAugSampler, build_train_transform, load_dataset
from .data.sampler import SampleKey
from .distill.sources import OnlineTeacher, StoredTeacher
from .distill.store import TeacherStore
from .build import build_step
from .engine import evaluate, train_one_epoch
from .runtime import BF16_MARGIN, cpu_has_native_bf16, precision_choice, resolve_device
from .models import Teacher, create_cnn, create_student, tune_attention


@dataclass
class BenchConfig:
    model: str = "deit_tiny_distilled_patch16_224"
    """Student (a distilled DeiT name)."""
    teacher: str = "resnet18"
    """Teacher CNN (timm or torchvision name; random weights: speed does not depend on them)."""
    img_size: int = 64
    batch_size: int = 64
    num_classes: int = 10
    steps: int = 6
    """Timed steps per repeat."""
    warmup: int = 2
    """Untimed steps before the first repeat of each configuration."""
    repeats: int = 3
    device: str = "auto"
    compile: bool = False
    """Also measure our step with torch.compile (slow to compile on a CPU)."""
    workers: int = 2
    """DataLoader workers for the data-pipeline figure."""
    precisions: str = "auto"
    """`fp32`, `bf16`, `fp32,bf16`, or `auto` (bf16 added where the device runs it natively)."""
    matmul_size: int = 0
    """Side of the square matmul that measures the peak (0: 2048 on CPU, 8192 on GPU)."""
    e2e: bool = False
    """Also time whole `deitkit train` runs (E2E_EPOCHS epochs on E2E_IMAGES generated JPEGs
    of the bench's size; its student and a random-weight teacher of its name; the DeiT
    augmentation, hard distillation, fp32), data on the device and with workers: epoch
    seconds, images/s and whole-run seconds in the JSON's `e2e`. The peer side, timm's
    train.py, is run by scripts/cpu_e2e.sh (not part of the package)."""


class _MemoryStore(TeacherStore):
    """A TeacherStore held in memory (same read path, no files): top-K of random logits."""

    def __init__(self, steps: int, batch: int, num_classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        probs = torch.randn(steps, batch, num_classes, generator=g).mul(3).softmax(-1)
        top = probs.topk(num_classes, dim=-1)
        self.root, self.rank, self.num_classes, self.topk = Path("<memory>"), 0, num_classes, \
            num_classes
        self.meta = {"teacher": "random"}
        self._epoch = None
        self._data = {"values": top.values.numpy().astype(np.float32),
                      "indices": top.indices.numpy().astype(np.int16),
                      "checksums": np.zeros(steps, dtype=np.uint32)}

    def _load(self, epoch: int) -> None:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5,
                shape: Optional[tuple[int, int, int]] = None) -> float:
    """FLOP/s of an n x n x n matmul, or of an (m, k, n) one (median of `repeats`)."""
    m, k, n = shape or (n, n, n)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    inner = max(1, int(2e9 // (2 * m * k * n)))  # small shapes: time a few in a row
    for _ in range(2):
        a @ b
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return 2 * m * k * n / statistics.median(times)


def count_flops(fn: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


class Variant:
    """One configuration: `run()` trains `steps` batches and returns the seconds it took."""

    def __init__(self, name: str, run: Callable[[list], float], kind: str, precision: str):
        self.name, self.run_fn, self.kind, self.precision = name, run, kind, precision
        self.times: list[float] = []
        self.peak_mem: Optional[int] = None


def _our_variant(cfg: BenchConfig, device, amp_dtype, kind: str, teacher_sd, mix_aug,
                 compile_: bool = False) -> Callable:
    torch.manual_seed(0)
    model = create_student(cfg.model, num_classes=cfg.num_classes, img_size=cfg.img_size,
                           drop_path_rate=0.1).to(device)
    tune_attention(model, device, amp_dtype)
    net = torch.compile(model) if compile_ else model
    source = None
    if kind == "online":
        t = create_cnn(cfg.teacher, cfg.num_classes)
        t.load_state_dict(teacher_sd)
        teacher = Teacher(t, (0.5,) * 3, (0.5,) * 3, name=cfg.teacher).to(device)
        teacher.optimize(device, amp_dtype, (cfg.batch_size, 3, cfg.img_size, cfg.img_size))
        source = OnlineTeacher(teacher, device, amp_dtype)
    elif kind == "stored":
        source = StoredTeacher(_MemoryStore(cfg.steps + cfg.warmup, cfg.batch_size,
                                            cfg.num_classes), device, verify_batches=0)
    criterion = DistillationLoss("none" if kind == "none" else "hard", 0.5,
                                 smoothing=mix_aug.smoothing)
    # the step a run builds (the default optimiser, EMA at 0.99996), at a fixed lr
    tcfg = replace(TrainConfig(), aug=mix_aug, progress=False)
    step, opts = build_step(tcfg, model, criterion, net=net, num_classes=cfg.num_classes,
                            device=device, amp_dtype=amp_dtype, lr=5e-4, source=source)
    epoch = [0]

    def run(batches: list) -> float:
        t0 = time.perf_counter()
        train_one_epoch(step, batches, device, epoch[0], opts)
        _sync(device)
        epoch[0] += 1
        return time.perf_counter() - t0
    run.model = model
    return run


def _reference_variant(cfg: BenchConfig, device, teacher_sd, mix_aug) -> Callable:
    """The step as a timm user writes it (timm's train.py loop with --kd-distill-type token)."""
    torch.manual_seed(0)
    model = create_student(cfg.model, num_classes=cfg.num_classes, img_size=cfg.img_size,
                           drop_path_rate=0.1).to(device)
    t = create_cnn(cfg.teacher, cfg.num_classes)
    t.load_state_dict(teacher_sd)
    t.to(device)
    task = TokenDistillationTask(model, t, criterion=SoftTargetCrossEntropy(),
                                 distill_type="hard", task_loss_weight=0.5, device=device,
                                 verbose=False)
    optimizer = create_optimizer_v2(model, "adamw", lr=5e-4, weight_decay=0.05)
    ema = ModelEmaV3(model, decay=0.99996)
    mixup = Mixup(mixup_alpha=mix_aug.mixup, cutmix_alpha=mix_aug.cutmix,
                  label_smoothing=mix_aug.smoothing, num_classes=cfg.num_classes)
    task.train()
    n = [0]

    def run(batches: list) -> float:
        t0 = time.perf_counter()
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x, y = mixup(x, y)
            out = task(x, y)
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            n[0] += 1
            ema.update(model, step=n[0])
        _sync(device)
        return time.perf_counter() - t0
    return run


def _jpeg_folder(root: Path, n: int, size: int) -> Path:
    """n smooth random JPEGs of size x size px in ImageFolder layout (2 classes)."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        (root / "val" / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        img.save(root / "train" / ("a" if i % 2 else "b") / f"{i}.jpg", quality=90)
    Image.fromarray(low).save(root / "val" / "a" / "0.jpg")
    Image.fromarray(low).save(root / "val" / "b" / "0.jpg")
    return root


def bench_data(cfg: BenchConfig, aug: AugConfig, n: int = 256) -> dict:
    """Decode + DeiT augmentation: images/s in this process, and through a DataLoader."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_dataset(str(_jpeg_folder(Path(tmp), n, cfg.img_size)))
        ds = bundle.train.with_transform(build_train_transform(aug, cfg.img_size, (0.5,) * 3,
                                                               (0.5,) * 3), seed=0)
        for i in range(8):
            ds[SampleKey(i, 0, i)]
        times = []
        for r in range(cfg.repeats):
            t0 = time.perf_counter()
            for i in range(n):
                ds[SampleKey(i, r, i)]
            times.append(time.perf_counter() - t0)
        per_worker = n / statistics.median(times)
        sampler = RepeatedAugSampler(len(ds), 1, seed=0)
        # small batches, so that every worker has work in each timed epoch
        batch = max(1, min(cfg.batch_size, n // (4 * max(cfg.workers, 1))))
        loader = DataLoader(ds, batch_size=batch, sampler=sampler,
                            num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
                            prefetch_factor=4 if cfg.workers > 0 else None)
        times = []
        for epoch in range(cfg.repeats + 1):
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            for _ in loader:
                pass
            if epoch:  # the first epoch starts the workers
                times.append(time.perf_counter() - t0)
        loader_ips = n / statistics.median(times)
    return {"data_images_per_second_per_worker": per_worker,
            "data_images_per_second_loader": loader_ips, "data_workers": cfg.workers}


def profile_share(run: Callable, batches: list) -> dict:
    """Fraction of the step's wall time in each engine phase (torch.profiler ranges)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run(batches)
        wall = time.perf_counter() - t0
    phases = ("mix", "teacher", "student_forward", "backward", "optimizer", "ema")
    totals = dict.fromkeys(phases, 0.0)
    for evt in prof.key_averages():
        if evt.key in totals:
            totals[evt.key] += evt.cpu_time_total / 1e6
    share = {k: v / wall for k, v in totals.items()}
    share["other"] = max(0.0, 1.0 - sum(share.values()))
    return share


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear",
              "aten::mkldnn_convolution", "aten::convolution_backward", "aten::cudnn_convolution",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
              "aten::_scaled_dot_product_flash_attention",
              "aten::_scaled_dot_product_flash_attention_backward",
              "aten::_scaled_dot_product_efficient_attention",
              "aten::_scaled_dot_product_efficient_attention_backward",
              "aten::_scaled_dot_product_cudnn_attention",
              "aten::_scaled_dot_product_cudnn_attention_backward")


def matmul_time_share(run: Callable, batches: list) -> float:
    """Share of the operators' own (self) CPU time spent in matmul, convolution and attention
    kernels: the part of a step that can run near the matmul peak. The rest (norms,
    activations, softmax, copies, optimiser, EMA) is memory-bound, so FLOP/s over the whole
    step cannot exceed about this share of the peak."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(batches)
    evts = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in evts)
    mm = sum(e.self_cpu_time_total for e in evts if e.key in MATMUL_OPS)
    return mm / total if total else 0.0


def time_round_robin(variants: list[Variant], batches: list, repeats: int, images: int,
                     device: torch.device, before_round: Callable[[int], None] = lambda r: None,
                     log=print) -> dict[str, float]:
    """Time every configuration `repeats` times, round-robin (repeat 1 of each, then repeat 2
    of each, ...), so a machine whose speed drifts hits all alike; return images/s of each,
    from the median of its repeats (`images` per call)."""
    for r in range(repeats):
        before_round(r)
        for v in variants:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            v.times.append(v.run_fn(batches))
            if device.type == "cuda":
                v.peak_mem = max(v.peak_mem or 0, torch.cuda.max_memory_allocated(device))
        log(f"  repeat {r + 1}/{repeats}: " + ", ".join(
            f"{v.name} {images / v.times[-1]:.0f}" for v in variants))
    return {v.name: images / statistics.median(v.times) for v in variants}


def speed_ratios(ips: dict[str, float], variants: list[Variant], precs: list[str]) -> dict:
    """The speed figures against the reference step: each configuration's ratio, our fp32
    step's, the best accurate configuration's (online or stored teacher), and the time ratio
    of the stored-output step over the no-teacher step."""
    ref = ips["reference_fp32"]
    accurate = [v.name for v in variants if v.kind in ("online", "stored")]
    best = max(accurate, key=lambda k: ips[k])
    stored_p = "bf16" if "bf16" in precs else "fp32"
    return {"images_per_second": ips,
            "ratio_vs_reference": {k: v / ref for k, v in ips.items()},
            "ratio_fp32_vs_reference": ips["ours_fp32"] / ref,
            "ratio_best_vs_reference": ips[best] / ref, "best_configuration": best,
            # a time ratio: distilled step with stored outputs over the no-teacher step
            "stored_over_nodistill": (ips[f"ours_nodistill_{stored_p}"]
                                      / ips[f"ours_stored_{stored_p}"]),
            "stored_over_nodistill_precision": stored_p}


def auto_precision(ips: dict, device: torch.device, native: bool) -> dict:
    """What `amp=auto` would choose for a run like this bench's, and why: on a CPU the rule
    a run's own probe applies (runtime.precision_choice), here to the bench's distillation
    step; on a GPU the fixed rule."""
    if device.type == "cuda":
        return {"choice": "bf16" if native else "fp16",
                "why": "on a GPU by rule: bf16 where supported, else fp16"}
    if not native:
        return {"choice": "fp32", "why": "this CPU has no native bf16 instructions"}
    if "ours_bf16" not in ips:
        return {"choice": None, "why": "bf16 not measured here (--precisions without bf16)"}
    speed = ips["ours_bf16"] / ips["ours_fp32"]
    return {"choice": precision_choice(1 / ips["ours_fp32"], 1 / ips["ours_bf16"]),
            "bf16_speed_vs_fp32": speed,
            "why": f"the distillation step measured {speed:.2f}x fp32's speed in bf16 here; "
                   f"bf16 is chosen from {1 / BF16_MARGIN:.2f}x (each run probes its own shapes)"}


def run_bench(cfg: BenchConfig, log=print) -> dict:
    device = resolve_device(cfg.device)
    precisions = cfg.precisions
    native = (torch.cuda.is_bf16_supported() if device.type == "cuda"
              else cpu_has_native_bf16())
    if precisions == "auto":
        precisions = "fp32,bf16" if native else "fp32"
    precs = [p.strip() for p in precisions.split(",")]
    amp = {"fp32": None, "bf16": torch.bfloat16}
    mix_aug = AugConfig(mixup=0.8, cutmix=1.0, smoothing=0.1)
    torch.manual_seed(0)
    teacher_sd = create_cnn(cfg.teacher, cfg.num_classes).state_dict()
    g = torch.Generator().manual_seed(0)
    n_batches = cfg.steps
    batches = [(torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, generator=g),
                torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g))
               for _ in range(n_batches)]
    if device.type == "cuda":
        batches = [(x.to(device), y.to(device)) for x, y in batches]

    variants = [Variant("reference_fp32", _reference_variant(cfg, device, teacher_sd, mix_aug),
                        "reference", "fp32")]
    for p in precs:
        for kind in ("online", "stored", "none"):
            name = {"online": "ours", "stored": "ours_stored", "none": "ours_nodistill"}[kind]
            variants.append(Variant(f"{name}_{p}", _our_variant(cfg, device, amp[p], kind,
                                                                teacher_sd, mix_aug),
                                    kind, p))
        if cfg.compile and p == precs[-1]:  # compiled: the fastest precision only
            for kind in ("online", "stored"):
                name = {"online": "ours_compiled", "stored": "ours_stored_compiled"}[kind]
                variants.append(Variant(f"{name}_{p}", _our_variant(
                    cfg, device, amp[p], kind, teacher_sd, mix_aug, compile_=True), kind, p))
    log(f"bench: {cfg.model} student, {cfg.teacher} teacher, {cfg.img_size} px, batch "
        f"{cfg.batch_size}, device {device}, {torch.get_num_threads()} threads, "
        f"{len(variants)} configurations x {cfg.repeats} repeats x {cfg.steps} steps")
    warm = batches[: max(1, cfg.warmup)]
    for v in variants:
        t0 = time.perf_counter()
        v.run_fn(warm)
        if v.name.startswith("ours_compiled") or v.name.startswith("ours_stored_compiled"):
            log(f"  {v.name}: first step (compilation) {time.perf_counter() - t0:.0f} s")
    n = cfg.matmul_size or (8192 if device.type == "cuda" else 2048)
    student = variants[1].run_fn.model
    tokens = cfg.batch_size * (student.patch_embed.num_patches + student.num_prefix_tokens)
    dim = student.embed_dim
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": [], "model_shapes_fp32": []}
    def measure_peaks(r: int) -> None:
        # the matmul peak is measured in every round too, so it sees the same machine state
        peaks["fp32"].append(matmul_peak(device, torch.float32, n))
        if "bf16" in precs:
            peaks["bf16"].append(matmul_peak(device, torch.bfloat16, n))
        # the student's own largest matmul, [B*N, D] x [D, 4D] (the MLP): what its shapes allow
        peaks["model_shapes_fp32"].append(matmul_peak(device, torch.float32, 0,
                                                      shape=(tokens, dim, 4 * dim)))
    ips = time_round_robin(variants, batches, cfg.repeats, cfg.batch_size * n_batches, device,
                           before_round=measure_peaks, log=log)

    # FLOPs of one student training step (forward + backward) and one teacher forward
    x = batches[0][0]

    def student_step():
        c, d = student(x)
        (c.float().sum() + d.float().sum()).backward()
    student_flops = count_flops(student_step)
    student.zero_grad(set_to_none=True)
    tmodel = create_cnn(cfg.teacher, cfg.num_classes).to(device).eval()
    with torch.no_grad():
        teacher_flops = count_flops(lambda: tmodel(x))
    peak_fp32 = statistics.median(peaks["fp32"])
    peak_bf16 = statistics.median(peaks["bf16"]) if peaks["bf16"] else None
    shape_fp32 = statistics.median(peaks["model_shapes_fp32"])

    # phase breakdown of our fp32 online-teacher step
    share = profile_share(next(v for v in variants if v.name == "ours_fp32").run_fn, batches)
    mm_share = matmul_time_share(next(v for v in variants if v.name == "ours_nodistill_fp32")
                                 .run_fn, batches)

    # evaluation throughput
    ev = {}
    eval_model = variants[1].run_fn.model
    for p in precs:
        _ = evaluate(eval_model, batches[:1], device, amp_dtype=amp[p])
        times = []
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            evaluate(eval_model, batches, device, amp_dtype=amp[p])
            _sync(device)
            times.append(time.perf_counter() - t0)
        ev[f"eval_images_per_second_{p}"] = cfg.batch_size * n_batches / statistics.median(times)

    ref = ips["reference_fp32"]
    res = {
        "config": asdict(cfg), "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "timm": __import__("timm").__version__,
        **speed_ratios(ips, variants, precs),
        "amp_auto": auto_precision(ips, device, native),
        "student_step_gflop": student_flops / 1e9, "teacher_forward_gflop": teacher_flops / 1e9,
        "matmul_peak_fp32_gflops": peak_fp32 / 1e9,
        "matmul_peak_bf16_gflops": None if peak_bf16 is None else peak_bf16 / 1e9,
        "matmul_model_shape_fp32_gflops": shape_fp32 / 1e9,
        "matmul_model_shape": [tokens, dim, 4 * dim],
        "model_shape_fraction_of_peak": shape_fp32 / peak_fp32,
        "model_flops_fraction_of_peak":
            student_flops * ips["ours_nodistill_fp32"] / cfg.batch_size / peak_fp32,
        "matmul_time_share_nodistill_fp32": mm_share,
        "distill_step_flops_fraction_of_peak":
            (student_flops + teacher_flops) * ips["ours_fp32"] / cfg.batch_size / peak_fp32,
        "reference_flops_fraction_of_peak":
            (student_flops + teacher_flops) * ref / cfg.batch_size / peak_fp32,
        "profile_share_ours_fp32": share,
        "peak_memory_mb": ({v.name: v.peak_mem / 2**20 for v in variants}
                           if device.type == "cuda" else
                           {"process_peak_rss": resource.getrusage(
                               resource.RUSAGE_SELF).ru_maxrss / 1024}),
        **ev,
        **bench_data(cfg, AugConfig(), n=256),
        "repeats_seconds": {v.name: v.times for v in variants},
    }
    return res


def format_bench(res: dict) -> str:
    ips, ratio = res["images_per_second"], res["ratio_vs_reference"]
    c = res["config"]
    lines = [f"{c['model']} + {c['teacher']} teacher, {c['img_size']} px, batch "
             f"{c['batch_size']}, {res['device']} ({res['threads']} threads), median of "
             f"{c['repeats']} repeats x {c['steps']} steps; torch {res['torch']}, timm "
             f"{res['timm']}", "",
             f"{'training step':<30}{'images/s':>10}{'vs reference':>14}", "-" * 54]
    for k, v in ips.items():
        lines.append(f"{k:<30}{v:>10.1f}{ratio[k]:>13.2f}x")
    auto = res["amp_auto"]
    lines += ["", f"amp=auto would choose {auto['choice'] or 'unknown'}: {auto['why']}",
              f"{'ratio_fp32_vs_reference':<40}{res['ratio_fp32_vs_reference']:>8.2f}",
              f"{'ratio_best_vs_reference':<40}{res['ratio_best_vs_reference']:>8.2f}"
              f"  ({res['best_configuration']})",
              f"{'stored_over_nodistill (time)':<40}{res['stored_over_nodistill']:>8.2f}"
              f"  ({res['stored_over_nodistill_precision']})",
              f"{'model_flops_fraction_of_peak':<40}{res['model_flops_fraction_of_peak']:>8.2f}"
              f"  (student fp32 step {res['student_step_gflop']:.1f} GFLOP; matmul peak "
              f"{res['matmul_peak_fp32_gflops']:.0f} GFLOP/s fp32"
              + (f", {res['matmul_peak_bf16_gflops']:.0f} bf16" if res['matmul_peak_bf16_gflops']
                 else "") + ")",
              f"{'student MLP matmul alone, of peak':<40}"
              f"{res['model_shape_fraction_of_peak']:>8.2f}  ({'x'.join(map(str, res['matmul_model_shape']))}"
              f" at {res['matmul_model_shape_fp32_gflops']:.0f} GFLOP/s: the ceiling its shapes allow)",
              f"{'matmul/conv/attention share of op time':<40}"
              f"{res['matmul_time_share_nodistill_fp32']:>8.2f}  (student fp32 step; the rest "
              "is memory-bound, so this bounds the fraction of peak)",
              f"{'distillation step, fraction of peak':<40}"
              f"{res['distill_step_flops_fraction_of_peak']:>8.2f}  (ours fp32; reference "
              f"{res['reference_flops_fraction_of_peak']:.2f})", "",
              "our fp32 step, share of wall time: " + ", ".join(
                  f"{k} {v * 100:.0f}%" for k, v in res["profile_share_ours_fp32"].items()),
              "evaluation: " + ", ".join(f"{k.rsplit('_', 1)[-1]} {v:.0f} images/s"
                                        for k, v in res.items()
                                        if k.startswith("eval_images_per_second")),
              f"data (decode + DeiT augmentation): {res['data_images_per_second_per_worker']:.0f}"
              f" images/s per worker, {res['data_images_per_second_loader']:.0f} images/s with "
              f"{res['data_workers']} workers",
              "peak memory: " + ", ".join(f"{k} {v:.0f} MB"
                                          for k, v in res["peak_memory_mb"].items())]
    return "\n".join(lines)


E2E_IMAGES, E2E_EPOCHS = 512, 2


def bench_e2e(cfg: BenchConfig, log=print) -> dict:
    """Whole short `deitkit train` runs at the bench's shapes (see BenchConfig.e2e)."""
    from .config import build_config
    from .pipeline import train  # the whole run: imported here, where it is used
    from .rundir import RunDir
    res = {"images": E2E_IMAGES, "epochs": E2E_EPOCHS, "amp": "off (fp32)"}
    with tempfile.TemporaryDirectory() as tmp:
        data = _jpeg_folder(Path(tmp) / "data", E2E_IMAGES, cfg.img_size)
        for name, on_device in (("device", "true"), ("workers", "false")):
            out = Path(tmp) / name
            tcfg = build_config("small-data-cpu", overrides=[
                f"data.name={data}", f"data.img_size={cfg.img_size}",
                f"data.batch_size={cfg.batch_size}", f"data.num_workers={cfg.workers}",
                f"data.on_device={on_device}", f"model.name={cfg.model}",
                f"teacher.name={cfg.teacher}", "aug.stack=deit", "aug.crop=rrc",
                "distill.kind=hard", "amp=off", f"device={cfg.device}",
                f"epochs={E2E_EPOCHS}", f"eval_every={E2E_EPOCHS}", f"out={out}"])
            t0 = time.perf_counter()
            train(tcfg, log=lambda *a, **k: None)
            wall = time.perf_counter() - t0
            secs = [r["epoch_seconds"] for r in RunDir(out).read_metrics() if "epoch_seconds" in r]
            epoch = statistics.median(secs[1:] or secs)
            res[name] = {"epoch_seconds": round(epoch, 3),
                         "images_per_second": round(E2E_IMAGES / epoch, 1),
                         "wall_seconds": round(wall, 1)}
            log(f"  e2e {name}: {epoch:.2f} s per epoch ({E2E_IMAGES / epoch:.0f} img/s), "
                f"{wall:.1f} s for the whole {E2E_EPOCHS}-epoch run")
    return res


def main_bench(cfg: BenchConfig, json_path: Optional[str] = None, log=print) -> dict:
    res = run_bench(cfg, log=log)
    if cfg.e2e:
        log("e2e: whole `deitkit train` runs")
        res["e2e"] = bench_e2e(cfg, log)
    log(format_bench(res))
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2) + "\n")
        log(f"wrote {json_path}")
    return res

