"""The run folder: the one module that knows its file names and formats.

A run folder (`deitkit train --out DIR`) holds:

    config.yaml              the resolved configuration
    metrics.jsonl            one JSON object per epoch (fsynced line by line)
    checkpoint-last.pt       after every epoch (atomic): the exact resume point
    checkpoint-best.pt       best fused top-1 so far (atomic)
    checkpoint-epoch-NNN.pt  with keep_eval_checkpoints: a ladder of new highs (the rungs)
    summary.json             final metrics and wall time; its presence marks a finished run
    skipped_images.txt       with data.on_bad_image=skip: one line per skipped file
    tb/                      TensorBoard scalars
    teacher/                 the CNN teacher's own run folder, when the run trained one
    race/NAME/               with a time budget and race=true: the candidate students that
                             lost the race (the winner's files are moved up into the run)
    pictures/epoch-NNN.png   pretraining runs: validation images, masked, reconstructed

Everything else reads and writes these through `RunDir`, so a name or a format changes here
only. Writes are atomic (temporary file, fsync, rename) except the metrics line, which is
appended and fsynced before the epoch's checkpoint is written.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from .checkpoint import CheckpointError, atomic_save, atomic_write_text, load_checkpoint
from .config import (ConfigError, TrainConfig, dump_yaml, load_yaml_file, run_changing_keys,
                     to_dict)
from .distributed import DistInfo, barrier


class RunDir:
    """One run folder. Paths are properties; reading a missing file is an error naming it."""

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    LAST = "checkpoint-last.pt"
    BEST = "checkpoint-best.pt"
    SUMMARY = "summary.json"
    SKIPPED = "skipped_images.txt"
    TB = "tb"
    TEACHER = "teacher"
    PICTURES = "pictures"
    RACE = "race"

    # what a run writes into its folder (the rungs, checkpoint-epoch-NNN.pt, besides)
    RUN_FILES = (CONFIG, METRICS, LAST, BEST, SUMMARY, SKIPPED, TB, TEACHER, PICTURES, RACE)

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir('{self.path}')"

    def __str__(self) -> str:
        return str(self.path)

    # -- paths ---------------------------------------------------------------------------------
    config = property(lambda self: self.path / self.CONFIG)
    metrics = property(lambda self: self.path / self.METRICS)
    last = property(lambda self: self.path / self.LAST)
    best = property(lambda self: self.path / self.BEST)
    summary = property(lambda self: self.path / self.SUMMARY)
    skipped = property(lambda self: self.path / self.SKIPPED)
    tb = property(lambda self: self.path / self.TB)

    @property
    def teacher(self) -> "RunDir":
        """The folder of the CNN teacher this run trained (it may not exist)."""
        return RunDir(self.path / self.TEACHER)

    def racer(self, name: str) -> "RunDir":
        """The folder a race candidate trains in (`race`), named by its shape."""
        return RunDir(self.path / self.RACE / name.replace(" ", "").replace(",", "-"))

    def picture(self, epoch: int) -> Path:
        """A pretraining run's grid of validation reconstructions after epoch `epoch`."""
        return self.path / self.PICTURES / f"epoch-{epoch:03d}.png"

    def pictures(self) -> list[tuple[int, Path]]:
        """(epoch, picture) of every grid the run wrote, in epoch order."""
        folder = self.path / self.PICTURES
        found = sorted(folder.glob("epoch-*.png")) if folder.is_dir() else []
        return [(int(p.stem.split("-")[1]), p) for p in found]

    def rung(self, epoch: int) -> Path:
        """The kept checkpoint of evaluated epoch `epoch` (keep_eval_checkpoints)."""
        return self.path / f"checkpoint-epoch-{epoch:03d}.pt"

    # -- state ---------------------------------------------------------------------------------
    def is_finished(self) -> bool:
        return self.summary.is_file()

    def has_last(self) -> bool:
        return self.last.is_file()

    def has_best(self) -> bool:
        return self.best.is_file()

    def checkpoint(self, last: bool = False, what: str = "run folder") -> Path:
        """The checkpoint a consumer of this run loads: the best, else the last (`last`: the
        last only)."""
        names = (self.LAST,) if last else (self.BEST, self.LAST)
        for name in names:
            if (self.path / name).is_file():
                return self.path / name
        raise CheckpointError(f"{what} '{self.path}' holds no {' or '.join(names)}"
                              + ("" if last else " (is the run finished?)"))

    def mkdir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"run folder '{self.path}' is a file, not a folder: give another "
                              "--out") from None
        except OSError as e:
            raise ConfigError(f"cannot create the run folder '{self.path}': {e.strerror}") from None

    def holdings(self) -> list[str]:
        """The names of a run's files this folder holds (empty: none; a folder of other files
        holds none)."""
        if not self.path.is_dir():
            return []
        held = [n for n in self.RUN_FILES if (self.path / n).exists()]
        return held + sorted(p.name for p in self.path.glob("checkpoint-epoch-*.pt"))

    def describe(self) -> str:
        """What kind of run this folder holds, in words."""
        if self.is_finished():
            return "a finished run"
        if self.has_last():
            rows = self.read_metrics()  # the epoch line is written before its checkpoint
            return ("an interrupted run" +
                    (f" (after epoch {rows[-1]['epoch']})" if rows else ""))
        if self.teacher.holdings():
            return "a run that stopped while its teacher was trained"
        return "a run that stopped before its first checkpoint"

    def claim(self, overwrite: bool = False, delete: bool = True) -> None:
        """Make this folder a new run's. An absent or empty folder (or one of other files) is
        taken; one holding a run is refused, naming what it holds, unless `overwrite`: then
        that run's files, and only those, are deleted first (by this process when `delete`;
        other ranks only check)."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run folder '{self.path}' is a file, not a folder: give another "
                              "--out")
        held = self.holdings()
        if held and not overwrite:
            raise ConfigError(
                f"'{self.path}' already holds {self.describe()} ({', '.join(held)}): continue "
                f"it with --resume {self.path}, replace it with --overwrite, or give another "
                "--out")
        if delete:
            for name in held:
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            self.mkdir()

    @classmethod
    def new_unique(cls, parent: str | Path, stem: str) -> "RunDir":
        """A new, empty folder `parent/stem-<time>` created exclusively (a suffix -2, -3, ...
        when another run took that name in the same second)."""
        parent = Path(parent).expanduser()
        parent.mkdir(parents=True, exist_ok=True)
        base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        for i in range(1, 1000):
            path = parent / (base if i == 1 else f"{base}-{i}")
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise ConfigError(f"could not create a new run folder named {base}-N in '{parent}'")

    # -- config --------------------------------------------------------------------------------
    def write_config(self, cfg: TrainConfig) -> None:
        atomic_write_text(dump_yaml(cfg), self.config)

    def read_config(self) -> dict:
        return load_yaml_file(self.config)

    # -- metrics -------------------------------------------------------------------------------
    def read_metrics(self, upto_epoch: Optional[int] = None) -> list[dict]:
        """The epochs' records, in order; with `upto_epoch` only epochs <= it. The one parser
        of metrics.jsonl: a torn line (a crash mid-write) or a line without an epoch is
        dropped, a missing file is an empty list."""
        rows = []
        if self.metrics.is_file():
            for line in self.metrics.read_text().splitlines():
                try:
                    row = json.loads(line)
                    if upto_epoch is None or row["epoch"] <= upto_epoch:
                        rows.append(row)
                except (ValueError, KeyError, TypeError):
                    continue
        return rows

    def reset_metrics(self, upto_epoch: int = 0) -> None:
        """Keep the records of epochs <= upto_epoch (a resume point), atomically."""
        rows = self.read_metrics(upto_epoch) if upto_epoch > 0 else []
        atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), self.metrics)

    def append_metrics(self, record: dict) -> None:
        """One epoch's line, flushed and fsynced (before that epoch's checkpoint)."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- checkpoints ---------------------------------------------------------------------------
    def save_last(self, ckpt: dict) -> None:
        atomic_save(ckpt, self.last)

    def save_best(self, ckpt: dict) -> None:
        atomic_save(ckpt, self.best)

    def save_rung(self, ckpt: dict, epoch: int) -> None:
        atomic_save(ckpt, self.rung(epoch))

    def load_last(self) -> dict:
        return load_checkpoint(self.last)

    def rungs(self) -> list[tuple[Path, dict]]:
        """(kept checkpoint, its epoch's metrics record) of every evaluated epoch that kept one."""
        return [(self.rung(r["epoch"]), r) for r in self.read_metrics()
                if r.get("fused_top1") is not None and self.rung(r["epoch"]).is_file()]

    # -- summary -------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        atomic_write_text(json.dumps(summary, indent=2) + "\n", self.summary)

    def read_summary(self) -> dict[str, Any]:
        if not self.summary.is_file():
            raise ConfigError(f"'{self.path}' holds no {self.SUMMARY} (is the run finished?)")
        try:
            return json.loads(self.summary.read_text())
        except ValueError as e:
            raise ConfigError(f"'{self.summary}' is not valid JSON ({e})") from None

    # -- skipped images ------------------------------------------------------------------------
    def skipped_count(self) -> int:
        """How many distinct image files were skipped (a file is listed once per time it was
        met: the first tab-separated field names it)."""
        if not self.skipped.is_file():
            return 0
        return len({line.split("\t")[0] for line in self.skipped.read_text().splitlines()
                    if line})

    # -- moving a run ------------------------------------------------------------------------
    MOVABLE = (CONFIG, METRICS, LAST, BEST, SUMMARY, SKIPPED, TB)

    def take_run(self, src: "RunDir") -> None:
        """Move the run in `src` (its files, not its teacher) into this folder, replacing
        those files here: a race's winner becomes the run (`race`). Renames within one file
        system: each file is whole at its old place or its new one."""
        moving = [n for n in self.MOVABLE if (src.path / n).exists()]
        moving += [p.name for p in src.path.glob("checkpoint-epoch-*.pt")]
        for name in moving:
            dst = self.path / name
            if dst.is_dir():
                shutil.rmtree(dst)
            os.replace(src.path / name, dst)
        try:
            src.path.rmdir()  # emptied
        except OSError:
            pass  # something else is in it: left as it is

    def clear_skipped(self) -> None:
        if self.skipped.exists():
            self.skipped.unlink()


def resolve_checkpoint(src: str | Path, last: bool = False, what: str = "run folder") -> Path:
    """A checkpoint file from a run folder (its best, else last; `last`: its last) or a file."""
    p = Path(src).expanduser()
    if p.is_dir():
        return RunDir(p).checkpoint(last=last, what=what)
    return p


# -------------------------------------------------------------------------------------------
# opening a run

def check_run_flags(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give one")


def open_run(cfg: TrainConfig, stem: str, d: DistInfo, resume: bool,
             overwrite: bool) -> tuple[TrainConfig, RunDir, Optional[dict], bool]:
    """The run folder: for a new run, claimed (a folder holding another run is refused unless
    `overwrite`; without --out a new folder runs/<recipe>-<time>, created exclusively); for a
    resumed one, as it is. Also: the summary of a resumed run that had finished (nothing is to
    be done), and whether the folder was made here."""
    check_run_flags(resume, overwrite)
    if not cfg.out:
        if d.enabled:
            raise ConfigError("give --out when running under torchrun (every process must "
                              "agree on the run folder)")
        cfg = replace(cfg, out=str(RunDir.new_unique("runs", cfg.recipe.name or stem).path))
        made = True
    else:
        made = not Path(cfg.out).expanduser().exists()
    rd = RunDir(cfg.out)
    if resume:  # finished with the same configuration: nothing to do (--force may extend it)
        done = rd.is_finished() and not run_changing_keys(rd.read_config(), to_dict(cfg))
        return cfg, rd, rd.read_summary() if done else None, made
    rd.claim(overwrite, delete=d.is_main)
    barrier()  # every rank sees the folder claimed before any writes to it
    return cfg, rd, None, made


@contextmanager
def no_empty_folder_left(rd: RunDir, made: bool):
    """A run that fails before writing anything leaves no empty folder behind (a folder that
    was there before is kept)."""
    try:
        yield
    except BaseException:
        if made and rd.path.is_dir() and not any(rd.path.iterdir()):
            rd.path.rmdir()
        raise
