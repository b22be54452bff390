"""Issue 26's CPU classes: what `amp=auto` measures and chooses, and what the teacher's forward
becomes, on the instruction sets users have, emulated on this CPU by capping them.

    python scripts/cpu_classes.py OUT.json [--quickstart] [--classes avx2,avx512,native]

Each class runs in its own process with the caps set before torch starts:
  avx2     ATEN_CPU_CAPABILITY=avx2   ONEDNN_MAX_CPU_ISA=AVX2          (many laptops)
  avx512   ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE   (AVX-512, no bf16)
  native   no caps: this CPU as it is (on the AMD EPYC here: AVX-512 with bf16, no AMX)
In each: the amp probe of two runs' own steps (the quickstart's student with its ResNet-10-T
teacher, and the e2e comparison's DeiT-Tiny patch 4 at 32 px, batch 64, with a ResNet-18
teacher), measured fresh (a cache file of its own); the teacher forward `Teacher.optimize`
picks for ResNet-18 at batch 64, fp32; and with --quickstart the whole `deitkit train` at
amp=auto, timed. In a capped class `amp=auto` is fp32 without a probe (`native_bf16` false,
as on a real CPU of that class); the probe is forced there to show what bf16 would cost.
One process at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "native": {},
}
E2E = ["model.patch_size=4", "data.batch_size=64", "teacher.train_model=resnet18",
       "model.overrides={}", "distill.kind=hard"]


def child() -> dict:
    """Runs inside one class's process."""
    import torch
    import timm

    import deitkit.build as build
    from deitkit import build_config
    from deitkit.build import run_amp
    from deitkit.runtime import cpu_has_native_bf16
    from deitkit.models import Teacher
    from deitkit.runtime import cpu_name
    out = {"cpu": cpu_name(), "torch": torch.__version__,
           "caps": {k: os.environ[k] for k in CLASSES["avx2"] if os.environ.get(k)},
           "torch_capability": torch.backends.cpu.get_cpu_capability()}
    device = torch.device("cpu")
    # a capped class has no native bf16, so amp=auto is fp32 there without a probe (as on such
    # a CPU); the probe is forced here to show what bf16 would cost
    out["native_bf16"] = cpu_has_native_bf16()
    build.cpu_has_native_bf16 = lambda: True
    for name, overrides in (("quickstart", []), ("e2e", E2E)):
        cfg = build_config("quickstart", overrides=["amp=auto", *overrides])
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["DEITKIT_AMP_CACHE"] = f"{tmp}/amp.json"
            lines = []
            run_amp(cfg, "student", device, 10, log=lines.append)
            entry = next(iter(json.loads(Path(f"{tmp}/amp.json").read_text()).values()))
        out[f"probe_{name}"] = {"fp32_seconds": round(entry["fp32_seconds"], 4),
                                "bf16_seconds": round(entry["bf16_seconds"], 4),
                                "bf16_speed": round(entry["fp32_seconds"] / entry["bf16_seconds"], 2),
                                "choice": entry["choice"], "line": lines[-1]}
    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", num_classes=10).eval()
    teacher = Teacher(cnn, (0.5,) * 3, (0.5,) * 3)
    out["teacher_forward_fp32"] = teacher.optimize(device, None, (64, 3, 32, 32))
    return out


def quickstart(env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "deitkit", "train", "--no-progress", "--out",
                            f"{tmp}/run", "amp=auto"], env={**env, "DEITKIT_AMP_CACHE":
                                                            f"{tmp}/amp.json"},
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            return {"error": r.stderr[-2000:]}
        rows = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
        fused = next(x["fused_top1"] for x in reversed(rows) if x.get("fused_top1") is not None)
        amp = next((line for line in r.stdout.splitlines() if line.startswith("amp:")), "amp: off")
        return {"wall_seconds": round(wall, 1), "fused_top1": fused, "amp_line": amp}


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(child()))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--quickstart", action="store_true", help="also time `deitkit train`")
    ap.add_argument("--classes", default=",".join(CLASSES))
    a = ap.parse_args()
    res = json.loads(a.out.read_text()) if a.out.is_file() else {}
    for name in a.classes.split(","):
        env = {k: v for k, v in os.environ.items() if k not in CLASSES["avx2"]}
        env.update(CLASSES[name])
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        if name not in res:
            r = subprocess.run([sys.executable, __file__, "--child"], env=env,
                               capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"{name}: {r.stderr[-3000:]}")
            res[name] = json.loads(r.stdout.strip().splitlines()[-1])
        if a.quickstart and "quickstart_run" not in res[name]:
            res[name]["quickstart_run"] = quickstart(env)
        a.out.write_text(json.dumps(res, indent=1) + "\n")  # resumable: each class kept
        print(name, json.dumps(res[name], indent=1), flush=True)


if __name__ == "__main__":
    main()
