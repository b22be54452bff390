"""`deitkit pretrain`: masked-autoencoder pretraining of a student's encoder on unlabelled
images, into a run folder with the training runs' contract (`rundir`): config.yaml,
metrics.jsonl, atomic checkpoint-last.pt (exact resume), summary.json, TensorBoard, a time
estimate and `--time-budget`, the bad-image policy, plus pictures of reconstructions.

checkpoint-last.pt holds the encoder's weights as `model` (what `deitkit train
model.weights=RUN` loads into a student) and the decoder apart, so the file is both a resume
point and a weights file. One process (no torchrun).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from ..build import build_optimizer, build_scheduler, global_lr, run_amp, run_device
from ..checkpoint import atomic_write
from ..config import ConfigError, TrainConfig, run_changing_keys, to_dict
from ..data import (DatasetBundle, RepeatedAugSampler, build_eval_transform, build_mae_transform,
                    load_unlabelled)
from ..data.sources import sample_seed
from ..distributed import DistInfo
from ..engine import NonFiniteLossError
from ..fit import write_scalars
from ..models import create_student
from ..rundir import RunDir, no_empty_folder_left, open_run
from ..runtime import Log, amp_name, autocast, recorded_amp, resolve_amp, rng_state, \
    seed_everything, set_rng_state
from .mae import MaskedAutoencoder, kept_patches, random_masking

PICTURE_SEED = 7  # the masks of the pictures and of the validation loss: the same every epoch


def encoder_name(student: str) -> str:
    """The plain DeiT a student's encoder is (`deit_tiny_distilled_patch16_224` ->
    `deit_tiny_patch16_224`): MAE has one class token; the distillation token is added when
    the weights load into the student."""
    return student.replace("_distilled", "")


def build_mae(cfg: TrainConfig) -> MaskedAutoencoder:
    """The masked autoencoder over `cfg.model`'s encoder, randomly initialised."""
    encoder = create_student(encoder_name(cfg.model.name), num_classes=0,
                             img_size=cfg.data.img_size, patch_size=cfg.model.patch_size,
                             drop_path_rate=cfg.model.drop_path, **cfg.model.overrides)
    m = cfg.mae
    return MaskedAutoencoder(encoder, m.decoder_dim, m.decoder_depth, m.decoder_heads,
                             m.norm_pix_loss)


def load_bundle(cfg: TrainConfig) -> DatasetBundle:
    return load_unlabelled(cfg.data.name, cfg.data.root, cfg.data.download,
                           cfg.data.train_fraction, cfg.data.fraction_seed,
                           digits_size=cfg.data.img_size, val_images=cfg.mae.val_images,
                           seed=cfg.data.fraction_seed)


def picture_epochs(epochs: int, count: int) -> set[int]:
    """About `count` evenly spaced epochs (1-based), the first and the last among them."""
    if count <= 0:
        return set()
    if count == 1 or epochs == 1:
        return {epochs}
    return {1 + round(i * (epochs - 1) / (count - 1)) for i in range(count)}


class _Probe(torch.nn.Module):
    """The MAE step as `run_amp` times it: forward(images) -> loss."""

    def __init__(self, mae: MaskedAutoencoder, ratio: float):
        super().__init__()
        self.mae, self.ratio = mae, ratio

    def forward(self, x):
        masking = random_masking(len(x), self.mae.num_patches, self.ratio,
                                 torch.Generator().manual_seed(0), x.device)
        return self.mae(x, masking)[0]


@dataclass
class Pretraining:
    """The pieces of one pretraining run."""
    cfg: TrainConfig
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    bundle: DatasetBundle
    train_loader: DataLoader
    val_loader: DataLoader
    mae: MaskedAutoencoder
    optimizer: torch.optim.Optimizer
    scheduler: object
    lr: float
    meta: dict

    def to_checkpoint(self, epoch: int, record: dict, seconds: float) -> dict:
        return {"model": self.mae.encoder.state_dict(), "decoder": self.mae.decoder_state(),
                "meta": self.meta, "epoch": epoch, "config": to_dict(self.cfg),
                "metrics": record, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": [rng_state()],
                "seconds": seconds}

    def restore(self, ckpt: dict) -> None:
        self.mae.load_state_dict({**ckpt["decoder"], **{f"encoder.{k}": v for k, v in
                                                        ckpt["model"].items()}})
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"][0])


def build_pretraining(cfg: TrainConfig, bundle: DatasetBundle, *, skip_log=None,
                      amp: Optional[str] = None, log: Log = print) -> Pretraining:
    device = run_device(cfg, DistInfo())
    amp = recorded_amp(amp, device)
    amp_dtype = (resolve_amp(amp, device) if amp is not None else run_amp(
        cfg, "pretrain", device, 0, log,
        make_model=lambda: _Probe(build_mae(cfg), cfg.mae.mask_ratio),
        key_extra={"mae": to_dict(cfg.mae)}))
    seed_everything(cfg.seed)
    n = len(bundle.train)
    if cfg.data.batch_size > n:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the "
                          f"{n} pretraining images; lower data.batch_size")
    d, skip = cfg.data, str(skip_log) if skip_log else None
    train_ds = bundle.train.with_transform(
        build_mae_transform(d.img_size, cfg.mae.scale_min, cfg.aug.hflip, d.mean, d.std,
                            cfg.aug.interpolation),
        seed=cfg.seed, on_bad_image=d.on_bad_image, skip_log=skip)
    val_ds = bundle.val.with_transform(build_eval_transform(cfg.aug, d.img_size, d.mean, d.std),
                                       on_bad_image=d.on_bad_image, skip_log=skip)
    common = dict(num_workers=d.num_workers, pin_memory=device.type == "cuda",
                  persistent_workers=d.num_workers > 0,
                  generator=torch.Generator().manual_seed(cfg.seed))
    # per-sample seeds from (seed, epoch, position): views do not depend on workers or resume
    train_loader = DataLoader(train_ds, batch_size=d.batch_size, drop_last=True,
                              sampler=RepeatedAugSampler(n, 1, seed=cfg.seed), **common)
    val_loader = DataLoader(val_ds, batch_size=d.eval_batch_size, **common)
    mae = build_mae(cfg).to(device)
    lr = global_lr(cfg)
    optimizer = build_optimizer(cfg, mae, lr, betas=tuple(cfg.mae.betas))
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    meta = {"role": "pretrain", "model_name": cfg.model.name,
            "encoder": encoder_name(cfg.model.name), "img_size": d.img_size,
            "patch_size": cfg.model.patch_size, "model_overrides": dict(cfg.model.overrides),
            "mean": list(d.mean), "std": list(d.std), "dataset": bundle.name,
            "mask_ratio": cfg.mae.mask_ratio, "amp": amp_name(amp_dtype), "deitkit_format": 1}
    return Pretraining(cfg, device, amp_dtype, bundle, train_loader, val_loader, mae,
                       optimizer, scheduler, lr, meta)


def train_epoch(p: Pretraining, epoch: int) -> dict:
    """One epoch of MAE steps; each batch's masks are drawn from (seed, epoch, step)."""
    p.mae.train()
    n_steps, total, seen, t0 = len(p.train_loader), 0.0, 0, time.perf_counter()
    bar = tqdm(p.train_loader, desc=f"epoch {epoch + 1}", leave=False,
               disable=not p.cfg.progress, dynamic_ncols=True)
    for step, (images, _) in enumerate(bar):
        images = images.to(p.device, non_blocking=True)
        g = torch.Generator().manual_seed(sample_seed(p.cfg.seed, epoch, step))
        masking = random_masking(len(images), p.mae.num_patches, p.cfg.mae.mask_ratio, g,
                                 p.device)
        with autocast(p.device, p.amp_dtype):
            loss, _ = p.mae(images, masking)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"pretraining loss is {loss.item()} at epoch {epoch + 1}, "
                                     f"step {step + 1}: lower optim.lr or set amp=off; the last "
                                     "checkpoint is intact")
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if p.cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(p.mae.parameters(), p.cfg.optim.clip_grad)
        p.optimizer.step()
        p.scheduler.step_update(num_updates=epoch * n_steps + step + 1)
        total += loss.item() * len(images)
        seen += len(images)
        if step % 10 == 0 or step == n_steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    elapsed = time.perf_counter() - t0
    return {"train_loss": total / max(seen, 1), "lr": p.optimizer.param_groups[0]["lr"],
            "epoch_seconds": elapsed, "images_per_second": seen / elapsed}


@torch.inference_mode()
def val_loss(p: Pretraining) -> float:
    """The loss on the validation images, the same masks every epoch."""
    p.mae.eval()
    total, seen = 0.0, 0
    for i, (images, _) in enumerate(p.val_loader):
        images = images.to(p.device)
        masking = random_masking(len(images), p.mae.num_patches, p.cfg.mae.mask_ratio,
                                 torch.Generator().manual_seed(PICTURE_SEED + i), p.device)
        with autocast(p.device, p.amp_dtype):
            loss, _ = p.mae(images, masking)
        total += loss.item() * len(images)
        seen += len(images)
    return total / max(seen, 1)


@torch.inference_mode()
def picture(p: Pretraining, path) -> None:
    """A grid of `mae.pictures` validation images spread evenly over the split (so over its
    classes, which an ImageFolder sorts): a row each, original | masked input |
    reconstruction (visible patches pasted back), in pixels."""
    p.mae.eval()
    ds = p.val_loader.dataset
    n = min(p.cfg.mae.pictures, len(ds))
    images = torch.stack([ds[i * len(ds) // n][0] for i in range(n)]).to(p.device)
    masking = random_masking(len(images), p.mae.num_patches, p.cfg.mae.mask_ratio,
                             torch.Generator().manual_seed(PICTURE_SEED), p.device)
    with autocast(p.device, p.amp_dtype):
        _, pred = p.mae(images, masking)
    mean = torch.tensor(p.cfg.data.mean, device=p.device)[:, None, None]
    std = torch.tensor(p.cfg.data.std, device=p.device)[:, None, None]
    rows = torch.stack([images, p.mae.masked_input(images, masking),
                        p.mae.reconstruct(images, pred, masking)], dim=1)  # [n, 3, C, H, W]
    pixels = (rows.flatten(0, 1).float() * std + mean).clamp(0, 1)
    scale = max(1, 96 // pixels.shape[-1])  # small images drawn larger, pixels kept sharp
    pixels = torch.nn.functional.interpolate(pixels, scale_factor=scale, mode="nearest")
    grid = make_grid(pixels.cpu(), nrow=3, padding=2, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: save_image(grid, f, format="png"))


def measure_epoch(cfg: TrainConfig, bundle: DatasetBundle, log: Log) -> float:
    """Seconds of one epoch (training steps and validation), measured on a few real steps of
    a throwaway copy of the run (the run itself starts afterwards from its seed)."""
    p = build_pretraining(replace(cfg, progress=False), bundle, log=log)
    steps = min(len(p.train_loader), 6)
    it = iter(p.train_loader)
    times = []
    for step in range(steps):
        images = next(it)[0].to(p.device)
        t0 = time.perf_counter()
        masking = random_masking(len(images), p.mae.num_patches, cfg.mae.mask_ratio,
                                 torch.Generator().manual_seed(step), p.device)
        with autocast(p.device, p.amp_dtype):
            loss, _ = p.mae(images, masking)
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        p.optimizer.step()
        times.append(time.perf_counter() - t0)
    per_step = sorted(times[1:] or times)[len(times[1:] or times) // 2]  # median, warm
    t0 = time.perf_counter()
    val_loss(p)
    return per_step * len(p.train_loader) * 1.1 + (time.perf_counter() - t0)  # loading: +10 %


def pretrain(cfg: TrainConfig, *, log: Log = print, resume: bool = False, force: bool = False,
             overwrite: bool = False, time_budget: Optional[float] = None) -> dict:
    """Pretrain `cfg.model`'s encoder as a masked autoencoder into `cfg.out`; the summary."""
    t_start = time.perf_counter()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("pretrain runs in one process: start it without torchrun")
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise ConfigError(f"--time-budget must be a finite number of minutes above 0; got "
                          f"{time_budget:g}")
    if time_budget is not None and resume:
        raise ConfigError("--time-budget sets the epochs of a new run; it cannot be combined "
                          "with --resume")
    cfg, rd, done, made = open_run(cfg, "pretrain", DistInfo(), resume, overwrite)
    if done is not None:
        log(f"'{rd}' is a finished pretraining run ({done.get('epochs')} epochs, validation "
            f"loss {done.get('val_loss')}): nothing to resume, nothing changed")
        return done
    with no_empty_folder_left(rd, made):
        return _pretrain(cfg, rd, log=log, resume=resume and rd.has_last(), force=force,
                         time_budget=time_budget, t_start=t_start)


def _pretrain(cfg: TrainConfig, rd: RunDir, *, log: Log, resume: bool, force: bool,
              time_budget: Optional[float], t_start: float) -> dict:
    if cfg.model.weights or cfg.model.pretrained:
        raise ConfigError("pretrain starts from random weights: model.weights and "
                          "model.pretrained are not used here (continue a run with --resume)")
    with torch.device("meta"):  # the encoder's settings checked before any work
        build_mae(cfg)
    bundle = load_bundle(cfg)
    ckpt = None
    if resume:
        ckpt = rd.load_last()
        changed = run_changing_keys(ckpt["config"], to_dict(cfg))
        if changed and not force:
            raise ConfigError(f"resuming '{rd.last}' with a different configuration: "
                              f"{', '.join(changed)} differ from the stored run. Resume "
                              "without those changes, or pass --force")
        if ckpt["meta"].get("role") != "pretrain":
            raise ConfigError(f"'{rd}' is a {ckpt['meta'].get('role')} run, not a pretraining "
                              "run")
    elif time_budget is not None:
        epoch_s = measure_epoch(cfg, bundle, log)
        left = time_budget * 60 - (time.perf_counter() - t_start)
        epochs = max(1, int(left // epoch_s))
        log(f"time budget {time_budget:g} min: an epoch measured at {epoch_s:.1f} s "
            f"(a few steps and one validation pass), so {epochs} epochs")
        cfg = replace(cfg, epochs=epochs)
    if ckpt is None:
        rd.clear_skipped()
    p = build_pretraining(cfg, bundle, skip_log=rd.skipped,
                          amp=None if ckpt is None else ckpt["meta"].get("amp"), log=log)
    first, earlier, record = 0, 0.0, {}
    if ckpt is not None:
        p.restore(ckpt)
        first, earlier, record = ckpt["epoch"], ckpt.get("seconds", 0.0), ckpt["metrics"]
        log(f"resuming {rd} after epoch {first} of {cfg.epochs}")
    rd.reset_metrics(first)
    rd.write_config(cfg)
    n_params = sum(t.numel() for t in p.mae.encoder.parameters())
    log(f"pretrain {encoder_name(cfg.model.name)} (MAE): {n_params / 1e6:.2f} M encoder "
        f"parameters, {len(bundle.train)} images ({len(bundle.val)} for validation, "
        f"{bundle.val_split}), {cfg.data.img_size} px, {p.mae.num_patches} patches of which "
        f"{kept_patches(p.mae.num_patches, cfg.mae.mask_ratio)} visible, lr {p.lr:.2e}, amp "
        f"{p.amp_dtype or 'off'}, device {p.device}, run folder {rd}")
    shots = picture_epochs(cfg.epochs, cfg.mae.pictures and cfg.mae.picture_epochs)
    tb = SummaryWriter(str(rd.tb)) if cfg.tensorboard else None
    bar = tqdm(range(first, cfg.epochs), desc="pretrain", disable=not cfg.progress,
               dynamic_ncols=True, initial=first, total=cfg.epochs)
    done = cfg.epochs
    for epoch in bar:
        if time_budget is not None and epoch > first:  # the plan's safety: never past it
            spent = time.perf_counter() - t_start
            if spent + spent / (epoch - first) > time_budget * 60:
                log(f"time budget {time_budget:g} min: stopping after epoch {epoch} of "
                    f"{cfg.epochs} ({spent:.0f} s spent; another epoch would pass the budget)")
                done = epoch
                break
        p.train_loader.sampler.set_epoch(epoch)
        record = {"epoch": epoch + 1, **train_epoch(p, epoch)}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            record["val_loss"] = val_loss(p)
        record["skipped_images"] = rd.skipped_count()
        if epoch + 1 in shots:
            picture(p, rd.picture(epoch + 1))
        seconds = earlier + time.perf_counter() - t_start
        rd.append_metrics(record)  # the line first, then the resume point
        write_scalars(tb, record, epoch + 1)
        rd.save_last(p.to_checkpoint(epoch + 1, record, seconds))
        bar.set_postfix(loss=f"{record['train_loss']:.3f}")
        if epoch == first and epoch + 1 < cfg.epochs:
            took, left = record["epoch_seconds"], cfg.epochs - epoch - 1
            log(f"pretrain: epoch {epoch + 1} took {took:.1f} s; the remaining {left} epochs "
                f"will take about {left * took / 60:.1f} min on this machine")
    bar.close()
    if tb is not None:
        tb.close()
    rows = rd.read_metrics(done)
    losses = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    summary = {"role": "pretrain", "model": cfg.model.name,
               "encoder": encoder_name(cfg.model.name), "dataset": bundle.name,
               "epochs": done, "planned_epochs": cfg.epochs, "train_images": len(bundle.train),
               "eval_images": len(bundle.val), "mask_ratio": cfg.mae.mask_ratio,
               "train_loss": record.get("train_loss"), "val_loss": record.get("val_loss"),
               "first_val_loss": losses[0] if losses else None,
               "images_per_second": record.get("images_per_second"),
               "skipped_images": rd.skipped_count(), "parameters": n_params,
               "run_dir": str(rd.path), "student_keys": student_keys(cfg, rd.path),
               "wall_seconds": earlier + time.perf_counter() - t_start}
    rd.write_summary(summary)
    return summary


def format_summary(s: dict) -> str:
    loss = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return (f"pretrained {s['encoder']} for {s['epochs']} epochs on {s['train_images']} images "
            f"in {s['wall_seconds']:.0f} s: validation loss {loss(s['first_val_loss'])} after "
            f"the first evaluation, {loss(s['val_loss'])} at the end.\n"
            f"Start a student from it: deitkit train --data LABELLED_DATA "
            f"{' '.join(s['student_keys'])}")


def student_keys(cfg: TrainConfig, run_dir) -> list[str]:
    """The overrides that give `deitkit train` a student this encoder loads into."""
    keys = [f"model.weights={run_dir}", f"model.name={cfg.model.name}",
            f"data.img_size={cfg.data.img_size}"]
    if cfg.model.patch_size is not None:
        keys.append(f"model.patch_size={cfg.model.patch_size}")
    keys += [f"model.overrides.{k}={v}" for k, v in cfg.model.overrides.items()]
    return keys
