"""Where a run executes: device, mixed precision, and every random stream.

Small helpers shared by training (`fit`), recording teacher outputs, evaluation and the bench;
they depend on torch only, so any module may use them.
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from typing import Callable, Optional

import numpy as np
import torch

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


def cpu_has_native_bf16() -> bool:
    """AVX-512 bf16 or AMX: bf16 autocast is faster than fp32 here, not slower."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


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
