"""Images/s of the MAE pretraining step against the supervised student step, same encoder,
same batch and image size, timed alternately in one process (deitkit.bench's round robin).

The encoder sees 1 + (1 - mask_ratio) * N tokens instead of 1 + 1 + N, so it should be faster
per image; the decoder (all N tokens, narrow) costs something back. Prints the ratio.

    python scripts/bench_pretrain.py                       # the mae-cpu recipe's encoder
    python scripts/bench_pretrain.py model.patch_size=4 data.img_size=32 model.overrides.depth=12
    python scripts/bench_pretrain.py --json out.json amp=off
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from deitkit.bench import Variant, time_round_robin
from deitkit.build import build_model, build_optimizer, build_step
from deitkit.config import build_config, replace_keys
from deitkit.engine import train_one_epoch
from deitkit.pretrain import build_mae, random_masking
from deitkit.runtime import autocast, cpu_name, resolve_amp, resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="mae-cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    cfg = build_config(a.recipe, None, ["amp=off", "progress=false", *a.overrides])
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg.amp, device) if cfg.amp != "auto" else None
    b, s = cfg.data.batch_size, cfg.data.img_size
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(b, 3, s, s, generator=g), torch.randint(0, 10, (b,), generator=g))
               for _ in range(a.steps)]

    # the supervised step a run trains: class head on labels, no teacher, no mixing
    sup = replace_keys(cfg, **{"distill.kind": "none", "distill.heads": "cls",
                               "aug.mixup": 0.0, "aug.cutmix": 0.0, "ema.enabled": False})
    torch.manual_seed(0)
    student, criterion = build_model(sup, "student", 10)
    student.to(device)
    step, opts = build_step(sup, student, criterion, num_classes=10, device=device,
                            amp_dtype=amp_dtype, lr=1e-4)
    epoch = [0]

    def supervised(batches) -> float:
        t0 = time.perf_counter()
        train_one_epoch(step, batches, device, epoch[0], opts)
        epoch[0] += 1
        return time.perf_counter() - t0

    torch.manual_seed(0)
    mae = build_mae(cfg).to(device)
    opt = build_optimizer(cfg, mae, 1e-4, betas=tuple(cfg.mae.betas))

    def masked(batches) -> float:
        t0 = time.perf_counter()
        mae.train()
        for i, (x, _) in enumerate(batches):
            x = x.to(device)
            m = random_masking(len(x), mae.num_patches, cfg.mae.mask_ratio,
                               torch.Generator().manual_seed(i), device)
            with autocast(device, amp_dtype):
                loss, _ = mae(x, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
        return time.perf_counter() - t0

    variants = [Variant("supervised student step", supervised, "none", "fp32"),
                Variant("MAE pretraining step", masked, "mae", "fp32")]
    for v in variants:  # warm-up, untimed
        v.run_fn(batches[:2])
    ips = time_round_robin(variants, batches, a.repeats, b * a.steps, device)
    ratio = ips["MAE pretraining step"] / ips["supervised student step"]
    res = {"cpu": cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
           "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "amp": str(amp_dtype or "off"),
           "encoder": cfg.model.name, "img_size": s, "patch_size": cfg.model.patch_size,
           "overrides": dict(cfg.model.overrides), "batch": b, "mask_ratio": cfg.mae.mask_ratio,
           "decoder": [cfg.mae.decoder_depth, cfg.mae.decoder_dim], "images_per_second": ips,
           "mae_over_supervised": ratio}
    print(f"{res['cpu']}, torch {res['torch']}, {res['threads']} threads, amp {res['amp']}: "
          f"supervised {ips['supervised student step']:.0f} img/s, MAE "
          f"{ips['MAE pretraining step']:.0f} img/s: MAE / supervised = {ratio:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
