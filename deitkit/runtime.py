"""Where a run executes: device, mixed precision, and every random stream.

Small helpers shared by training (`fit`), recording teacher outputs, evaluation and the bench;
they depend on torch only, so any module may use them.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import random
import statistics
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .checkpoint import atomic_write_text
from .config import ConfigError


Log = Callable[..., None]


def quiet(*args, **kwargs) -> None:
    """A log that says nothing (other ranks, study runs)."""


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one; a GPU asked for but absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but no CUDA GPU is available")
    return dev


# oneDNN ISA levels (ONEDNN_MAX_CPU_ISA) that include bf16 instructions; the lower ones
# (SSE41, AVX, AVX2*, AVX512_CORE, AVX512_CORE_VNNI) run bf16 by converting: 17-20x slower
# than fp32 capped at AVX2, 1.2-1.4x at AVX512_CORE (measured, docs/performance.md)
BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10", "AMX", "ALL")


def cpu_has_native_bf16() -> bool:
    """AVX-512 bf16 or AMX instructions, and not capped below them by ONEDNN_MAX_CPU_ISA or
    ATEN_CPU_CAPABILITY (as when an older CPU class is emulated): only then can bf16
    autocast be faster than fp32 (whether it is, `measured_cpu_amp` measures)."""
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and not any(level in isa for level in BF16_ISAS):
        return False
    return os.environ.get("ATEN_CPU_CAPABILITY", "").lower() not in ("default", "avx2")


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; the platform's word elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_facts(device: torch.device) -> dict:
    """What a measured wall time depends on: the processor, its vector instructions as torch
    uses them, the threads, torch, and the GPU where `device` is one (studies record it, so a
    time copied from another machine says where it was taken)."""
    facts = {"cpu": cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(),
             "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


AMP_CACHE = "~/.cache/deitkit/amp.json"   # DEITKIT_AMP_CACHE overrides
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")  # caps that change the measurement
BF16_MARGIN = 0.95  # bf16 is chosen only when it takes at most 95 % of fp32's time


def precision_choice(fp32_seconds: float, bf16_seconds: float) -> str:
    """The CPU rule of `amp=auto`: "bf16" when it takes at most BF16_MARGIN of fp32's time."""
    return "bf16" if bf16_seconds <= BF16_MARGIN * fp32_seconds else "fp32"


def measured_cpu_amp(key: dict, probe: Callable[[Optional[torch.dtype]], float],
                     log: Callable[..., None] = print,
                     cache: Optional[str | Path] = None) -> Optional[torch.dtype]:
    """`amp=auto` on a CPU with bf16 instructions: bf16 (torch.bfloat16) or fp32 (None),
    whichever `probe` measures faster for this run's shapes (`probe(dtype)`: seconds of a few
    training steps at that precision; 3 alternated repeats each, medians compared). With the
    same flags (AVX-512 bf16, no AMX tiles) bf16 autocast was measured 1.5x slower than fp32
    on an Intel Xeon and 1.9x faster on an AMD EPYC (docs/performance.md), so the flags alone
    cannot tell. Cached under `key` plus the CPU model, torch version and any instruction caps
    (ISA_LIMITS), so that a run, its planner and its other processes agree; a file lock
    keeps concurrent runs from probing twice."""
    full = {**key, "cpu": cpu_name(), "torch": torch.__version__,
            **{v: os.environ[v] for v in ISA_LIMITS if os.environ.get(v)}}
    k = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache or os.environ.get("DEITKIT_AMP_CACHE", AMP_CACHE)).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            data = {}  # a damaged cache is measured again
        entry = data.get(k)
        if entry is None:
            fp32, bf16 = [], []
            for _ in range(3):
                fp32.append(probe(None))
                bf16.append(probe(torch.bfloat16))
            t32, t16 = statistics.median(fp32), statistics.median(bf16)
            entry = {"fp32_seconds": t32, "bf16_seconds": t16,
                     "choice": precision_choice(t32, t16), **full}
            data[k] = entry
            atomic_write_text(json.dumps(data, indent=1, default=str), path)
    log(f"amp: {entry['choice']} (bf16 measured {entry['fp32_seconds'] / entry['bf16_seconds']:.2f}x "
        f"the speed of fp32 for this run's steps on this CPU, {entry['cpu']}; amp=bf16 or "
        "amp=off to force one)")
    return torch.bfloat16 if entry["choice"] == "bf16" else None


def amp_name(amp_dtype: Optional[torch.dtype]) -> str:
    """The `amp` setting that gives `amp_dtype` (recorded with a run, so that its resume and
    its evaluation use the precision it trained in)."""
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


def recorded_amp(recorded: Optional[str], device: torch.device) -> Optional[str]:
    """The `amp` a run recorded, as usable on `device` (None: decide afresh): fp16 from a GPU
    does not exist on a CPU."""
    return None if recorded == "fp16" and device.type != "cuda" else recorded


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32 (None)."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp=fp16 needs a GPU; use amp=bf16 or amp=off on a CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# resume support: every random stream, as plain tensors (loadable with weights_only=True)

def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "python": [int(py[0]), torch.tensor(py[1], dtype=torch.int64), py[2]]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """Autocast to `amp_dtype` (None: fp32)."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)
