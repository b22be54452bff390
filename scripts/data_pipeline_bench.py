"""Images per second of the two training-data pipelines alone (no model), side by side:
the worker loader (PIL augmentation in DataLoader workers, as timm's train.py) and the device
pipeline (decoded cache + per-sample augmentation on the device), same augmentation config.

    python scripts/data_pipeline_bench.py DATA_DIR [--device cuda] [--batch-size 256]
        [--workers 14] [--batches 40] [--json out.json] [overrides ...]

Overrides are deitkit dotted keys (default: the DeiT stack at 32 px, batch 256).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from deitkit.config import build_config
from deitkit.data import load_dataset
from deitkit.build import build_loaders


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(loader, device: torch.device, batches: int, warm: int = 3) -> float:
    it = iter(loader)
    for _ in range(warm):
        x, _ = next(it)
    _sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        x, y = next(it)
        x = x.to(device, non_blocking=True)
        n += len(x)
    _sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*")
    a = p.parse_intermixed_args()
    device = torch.device(a.device)
    res = {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
           "batch_size": a.batch_size, "workers": a.workers}
    for on_device in (False, True):
        cfg = build_config("quickstart", overrides=[
            f"data.name={a.data}", "aug.stack=deit", "aug.crop=rrc", "aug.hflip=0.5",
            f"data.batch_size={a.batch_size}", f"data.num_workers={a.workers}",
            f"data.on_device={str(on_device).lower()}", "progress=false", *a.overrides])
        bundle = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download,
                              cfg.data.train_fraction, cfg.data.fraction_seed)
        loader, _ = build_loaders(cfg, bundle, device)
        loader.sampler.set_epoch(0)
        batches = min(a.batches, len(loader) - 4)
        ips = throughput(loader, device, batches)
        res["device_img_per_s" if on_device else "workers_img_per_s"] = round(ips)
        print(f"{'device pipeline' if on_device else f'worker loader ({a.workers} workers)'}: "
              f"{ips:,.0f} images/s", flush=True)
    res["ratio"] = round(res["device_img_per_s"] / res["workers_img_per_s"], 2)
    print(f"device / workers: {res['ratio']}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
