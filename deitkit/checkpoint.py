"""Atomic writes, safe checkpoint loads.

Every load uses `torch.load(..., weights_only=True)`: a checkpoint made by someone else cannot
run code here. Writes go to a temporary file in the same folder, are flushed and fsynced, then
renamed over the old file, so a kill at any moment leaves the last good checkpoint intact.
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import safetensors.torch
import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, unsafe or does not fit the model."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """The one atomic writer: `write(f)` fills a temporary file in the same folder, which is
    flushed, fsynced and renamed over `path`; the folder is fsynced so the rename itself is
    durable. On any failure the temporary file is removed and `path` keeps its old content."""
    path = Path(path)
    try:  # a read-only or full folder fails here already: one line, as below
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(_write_failure(path, e)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, CheckpointError):
            raise CheckpointError(_write_failure(path, e)) from e
        raise
    return path


def _write_failure(path: Path, e: BaseException) -> str:
    """One line: which file could not be written and why (torch.save reports a full disk as a
    RuntimeError from its zip writer; the free space says what the cause was)."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else \
        (str(e).splitlines()[0] if str(e) else type(e).__name__)
    try:
        free = shutil.disk_usage(path.parent).free
        if free < 64 * 2**20 or (isinstance(e, OSError) and e.errno == errno.ENOSPC):
            reason = f"No space left on device ({free / 2**20:.0f} MiB free): {reason}"
    except OSError:
        pass
    return (f"could not write '{path}': {reason}. The previous version of the file, if any, is "
            "intact; free space or fix the folder's permissions, then resume")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save, atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def safe_torch_load(path: str | Path, mmap: bool = False) -> Any:
    """torch.load with weights_only=True and errors that name the file. `mmap`: the tensors
    are mapped, not read (to look at a checkpoint's meta without loading its weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): an interrupted copy?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint '{path}' was refused by the safe loader (weights_only=True): it holds "
            f"objects other than tensors and plain containers, which could run code. "
            f"Details: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupt and cannot be "
                              f"read ({type(e).__name__}: {str(e).splitlines()[0]})") from None


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def unwrap_state(state: dict) -> dict:
    """A state dict with the names DDP and torch.compile prefix taken off (`module.`,
    `_orig_mod.`), as the bare model expects them."""
    out = {}
    for k, v in state.items():
        for prefix in WRAPPER_PREFIXES:
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def load_checkpoint(path: str | Path) -> dict:
    """A deitkit checkpoint: a dict with at least `model` (state dict) and `meta`."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(f"'{path}' is not a deitkit checkpoint (expected a dict with "
                              "'model' and 'meta' keys)")
    return ckpt


def load_state_file(path: str | Path) -> dict:
    """A bare state dict from a timm/torchvision/deitkit weights file (.pt/.pth/.bin/.safetensors)."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"weights file '{path}' does not exist")
        try:
            return safetensors.torch.load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"weights file '{path}' is not valid safetensors: {e}") from None
    return state_of(safe_torch_load(path), path)


def state_of(obj: Any, path: str | Path) -> dict:
    """The state dict inside a loaded weights file `obj` (read from `path`)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(f"'{path}' holds no state dict (looked for a tensor mapping, or the "
                          "keys 'model', 'state_dict', 'model_state_dict')")
