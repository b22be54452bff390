"""The student's shape chosen inside a time budget: a race of candidates (successive halving).

With a time budget and `race=true` (the `auto` configuration sets it), a few candidate
students (the configured one, a patch grid twice as fine, and that finer grid at half the
depth) each train for one round of the same wall time; after every round the better half, by
fused top-1 on the run's held-out training images, trains for another round, until one is
left. The winner keeps its training and goes on with the rest of the budget; the others'
time is the race's price (3 of 5 rounds' time with three candidates, RACE_SHARE of the
student's time per round). Equal wall time, not equal epochs: a cheaper candidate runs more
epochs, as it would in the budget. Why written here: timm and the DeiT code train the one
model they are given, and tuning libraries (Optuna, Ray Tune) race whole runs, not candidates
inside one run's budget. `race_student` runs it for `pipeline.train`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from .build import choose_fusion
from .config import TrainConfig, replace_keys
from .data import DatasetBundle
from .fit import fit
from .models import Teacher
from .plan import measure_epoch
from .rundir import RunDir
from .runtime import Log, quiet

RACE_SHARE = 0.05      # one round's wall time, as a share of the student's time
ROUND_EPOCHS = 2       # a candidate races only if this many of its epochs fit in a round
SCORE = "holdout_fused_top1"


@dataclass
class Candidate:
    """One student shape in the race, and what it did there."""
    name: str
    cfg: TrainConfig
    epoch_seconds: float = 0.0                     # measured before the race
    seconds: float = 0.0                           # wall time it has trained, setup included
    scores: list = field(default_factory=list)     # held-out fused top-1 after each round
    epochs: int = 0                                # epochs it has trained

    def record(self) -> dict:
        return {"name": self.name, "patch_size": self.cfg.model.patch_size,
                "depth": depth_of(self.cfg), "epoch_seconds": round(self.epoch_seconds, 2),
                "seconds": round(self.seconds, 1), "epochs": self.epochs,
                "scores": self.scores}


def depth_of(cfg: TrainConfig) -> int:
    return int(cfg.model.overrides.get("depth", 12))  # DeiT's 12 blocks unless overridden


def shape_name(cfg: TrainConfig) -> str:
    grid = cfg.data.img_size // (cfg.model.patch_size or 16)
    return f"{grid}x{grid} patches, depth {depth_of(cfg)}"


def candidates(cfg: TrainConfig) -> list[Candidate]:
    """The configured student, the same with patches half as wide (four times the tokens),
    and that finer grid at half the depth (about its cost back); shapes the image size
    cannot take are left out."""
    patch, depth = cfg.model.patch_size or 16, depth_of(cfg)
    shapes = [cfg]
    finer = patch // 2
    if finer >= 2 and cfg.data.img_size % finer == 0:
        fine = replace_keys(cfg, **{"model.patch_size": finer})
        shapes.append(fine)
        if depth >= 2:
            shapes.append(replace_keys(fine, **{"model.overrides": {
                **cfg.model.overrides, "depth": depth // 2}}))
    return [Candidate(shape_name(c), c) for c in shapes]


def race_seconds(n: int, round_seconds: float) -> tuple[float, float]:
    """(the race's wall time in all, the winner's part of it) for `n` candidates."""
    total, alive, rounds = 0.0, n, 0
    while alive > 1:
        total += alive * round_seconds
        alive, rounds = math.ceil(alive / 2), rounds + 1
    return total, rounds * round_seconds


def successive_halving(field_: list[Candidate], round_seconds: float,
                       train: Callable[[Candidate, float], tuple[float, int, float]],
                       log: Callable[[str], None]) -> Candidate:
    """Race `field_` (the first is the configured student: it wins ties). `train(c, seconds)`
    trains candidate c for about `seconds` more and returns (score, epochs it has trained,
    seconds it took); each round brings every survivor to the same total time."""
    alive, k = list(field_), 0
    while len(alive) > 1:
        k += 1
        for c in alive:
            score, c.epochs, took = train(c, k * round_seconds - c.seconds)
            c.seconds += took
            c.scores.append(score)
        ranked = sorted(alive, key=lambda c: -c.scores[-1])  # stable: ties keep field order
        keep = ranked[:math.ceil(len(alive) / 2)]
        log(f"race round {k} ({k * round_seconds:.0f} s each): " + ", ".join(
            f"{c.name} {100 * c.scores[-1]:.1f} % ({c.epochs} epochs)" for c in ranked)
            + f" -> {', '.join(c.name for c in keep)} go{'es' if len(keep) == 1 else ''} on")
        alive = keep
    return alive[0]


def race_student(cfg: TrainConfig, bundle: DatasetBundle, teacher: Optional[Teacher],
                 rd: RunDir, end: float, log: Log) -> Optional[tuple[TrainConfig, dict, float]]:
    """The student's shape chosen by a race inside the budget that ends at `end` (`race`):
    each candidate's epoch measured, those with ROUND_EPOCHS epochs in a round raced in
    OUT/race/, the winner's files moved into the run folder. Returns (the winner's config,
    the race's record for the summary, the seconds the winner trained), or None when there is
    no race (the reason said)."""
    if not choose_fusion(cfg, "student", bundle):
        log("race: none (it scores the candidates on held-out training images: data.holdout "
            "above 0, with distillation through both heads and the fusion weight not fixed)")
        return None
    field_ = candidates(cfg)
    if len(field_) < 2:
        log(f"race: none (no other patch grid divides the {cfg.data.img_size}-px images)")
        return None
    for c in field_:  # a stand-in teacher: measuring optimises its forward, not the run's
        c.epoch_seconds = measure_epoch(c.cfg, "student", bundle, copy.deepcopy(teacher))
    student_s = end - time.perf_counter()
    round_s = RACE_SHARE * student_s
    if ROUND_EPOCHS * field_[0].epoch_seconds > round_s:
        log(f"race: none (a round of {round_s:.0f} s, {100 * RACE_SHARE:.0f} % of the student's "
            f"time, holds under {ROUND_EPOCHS} of its {field_[0].epoch_seconds:.1f}-s epochs)")
        return None
    fits = [c for c in field_ if ROUND_EPOCHS * c.epoch_seconds <= round_s]
    for c in field_:
        if c not in fits:
            log(f"race: {c.name} left out (its {c.epoch_seconds:.1f}-s epochs: under "
                f"{ROUND_EPOCHS} in a round of {round_s:.0f} s)")
    if len(fits) < 2:
        return None
    total, winners = race_seconds(len(fits), round_s)
    for c in fits:  # each planned as if it wins: the time the race leaves, at its own speed
        c.cfg = replace_keys(c.cfg, epochs=max(ROUND_EPOCHS + 1, math.floor(
            (student_s - total + winners) / c.epoch_seconds)), out=str(rd.racer(c.name)),
            progress=False)
    log(f"race: {len(fits)} candidate students, rounds of {round_s:.0f} s "
        f"({100 * RACE_SHARE:.0f} % of the student's {student_s:.0f} s; {total:.0f} s in all), "
        f"scored on {len(bundle.holdout)} held-out training images: " + ", ".join(
            f"{c.name} ({c.epoch_seconds:.1f} s per epoch)" for c in fits))

    def train_one(c, seconds: float) -> tuple[float, int, float]:
        t = time.perf_counter()
        rec = fit(c.cfg, "student", bundle, teacher=teacher, log=quiet,
                  resume=RunDir(c.cfg.out).has_last(), pause_at=t + seconds)
        return rec[SCORE], rec.get("epoch", rec.get("epochs", 0)), time.perf_counter() - t
    win = successive_halving(fits, round_s, train_one, log)
    rd.take_run(RunDir(win.cfg.out))
    others = [c for c in fits if c is not win]
    log(f"race: the student is {win.name} ({100 * win.scores[-1]:.1f} % held out, against "
        + ", ".join(f"{c.name} {100 * c.scores[-1]:.1f} %" for c in others)
        + f"); it goes on in {rd} with the rest of the budget (the others are in "
        f"{rd.path / RunDir.RACE})")
    return (replace(win.cfg, out=cfg.out, progress=cfg.progress),
            {"race": [c.record() for c in field_], "race_winner": win.name}, win.seconds)
