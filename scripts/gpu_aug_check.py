"""The device augmentation on a GPU against the same code on the CPU: same items, same seeds.

The CPU tests (tests/test_gpu_aug.py) pin the ops to timm's PIL ops and the dense form to the
sparse one on the CPU; this checks what only a GPU can: that CUDA's kernels (grid_sample,
histograms, the integer hash) give the CPU's views, up to float rounding. Writes a JSON with
the mean absolute difference (in 0..255 units) and the share of values that differ by more
than one grey level, per stage (crop+flip, RandAugment, whole pipeline with erasing); then
the augmentation's speed alone at batch 1,024, eager and compiled (data.compile_augment),
and the compiled views against the eager ones.

    python scripts/gpu_aug_check.py CIFAR_DIR [--n 512] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deitkit.config import AugConfig
from deitkit.data.gpu_aug import DeviceAugment, compile_augment, item_seeds


def load(root: Path, n: int) -> torch.Tensor:
    files = sorted((root / "train").glob("*/*"))[:: max(1, 50000 // n)][:n]
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()           # uint8 [n, 3, 32, 32]


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.float().cpu() - b.float().cpu()).abs()
    return {"mean_abs": round(d.mean().item(), 4), "share_over_1": round((d > 1).float().mean().item(), 5),
            "max_abs": round(d.max().item(), 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data", type=Path)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--json", type=Path)
    p.add_argument("--device", default="cuda", help="cpu: a smoke test (dense against sparse)")
    p.add_argument("--no-compiled", dest="compiled", action="store_false",
                   help="skip the compiled augmentation (a minute of compiling)")
    a = p.parse_args()
    dev = torch.device(a.device)
    x = load(a.data, a.n)
    seeds = item_seeds(0, 3, torch.arange(len(x)))
    mean, std = [0.5] * 3, [0.5] * 3
    res = {"images": len(x),
           "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}
    for crop in ("pad", "rrc"):
        cfg = AugConfig(crop=crop)
        cpu = DeviceAugment(cfg, 32, mean, std, dense=False)
        gpu = DeviceAugment(cfg, 32, mean, std, dense=True)
        xc, xg = x.float(), x.to(dev).float()
        sc, sg = seeds, seeds.to(dev)
        c1, g1 = cpu.crop_flip(xc, sc), gpu.crop_flip(xg, sg)
        c2, g2 = cpu.rand_augment(c1, sc), gpu.rand_augment(c1.to(dev), sg)
        whole_c, whole_g = cpu(x, sc), gpu(x.to(dev), sg)
        res[crop] = {"crop_flip": compare(c1, g1), "rand_augment": compare(c2, g2),
                     # whole pipeline: normalised values, shown back in 0..255 units
                     "pipeline": compare(whole_c * 127.5, whole_g * 127.5)}
    # the augmentation alone on the GPU (images per second, batch 1024, after a warm-up)
    g = DeviceAugment(AugConfig(crop="pad"), 32, mean, std)  # the cifar10-gpu recipe's
    big = x.to(dev).repeat(1024 // len(x) + 1, 1, 1, 1)[:1024]
    s = item_seeds(0, 0, torch.arange(1024, device=dev))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def images_per_second(fn) -> int:  # 3 warm-up batches, then 20 timed
        for _ in range(3):
            fn(big, s)
        sync()
        t0 = time.perf_counter()
        for _ in range(20):
            fn(big, s)
        sync()
        return round(20 * len(big) / (time.perf_counter() - t0))
    res["augment_images_per_second_b1024"] = images_per_second(g)
    if a.compiled:  # data.compile_augment: the same views from one compiled graph, and its speed
        t0 = time.perf_counter()
        c = compile_augment(DeviceAugment(AugConfig(crop="pad"), 32, mean, std), dev)
        res["compiled_vs_eager"] = compare(c(big, s) * 127.5, g(big, s) * 127.5)
        res["compile_seconds"] = round(time.perf_counter() - t0, 1)
        res["compiled_augment_images_per_second_b1024"] = images_per_second(c)
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
