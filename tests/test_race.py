"""The race of candidate students inside a budget (issue 32): the driver on constructed
curves, the candidates, and one real raced run."""
import time

from deitkit import build_config, train
from deitkit.pipeline import format_summary
from deitkit.race import Candidate, candidates, race_seconds, successive_halving
from deitkit.rundir import RunDir

TINY = ["progress=false", "device=cpu", "amp=off", "data.train_fraction=0.25",
        "model.overrides={depth: 1}", "data.batch_size=16", "tensorboard=false"]


def on_curves(curves):
    """train(c, seconds) for made-up candidates whose held-out score after t seconds of
    training is curves[name](t); each call also pays 1 s of setup."""
    def train(c, seconds):
        t = c.seconds + seconds + 1.0
        return curves[c.name](t), int(t // 2), seconds + 1.0
    return train


def test_the_race_keeps_the_better_half_and_picks_the_curve_that_ends_highest():
    cfg = build_config("quickstart")
    curves = {"fast start": lambda t: 0.33 + 0.0001 * t,   # ahead after one round, then flat
              "slow start": lambda t: 0.20 + 0.006 * t,    # behind it early, far ahead later
              "never": lambda t: 0.25 + 0.001 * t}         # last after the first round
    field = [Candidate(n, cfg) for n in curves]
    lines = []
    win = successive_halving(field, 20.0, on_curves(curves), lines.append)
    assert win.name == "slow start"
    fast, slow, never = field
    assert len(never.scores) == 1 and len(fast.scores) == len(slow.scores) == 2
    assert fast.seconds == slow.seconds == 41.0 and never.seconds == 21.0  # equal time per round
    assert lines[0].startswith("race round 1 (20 s each): fast start 33.2 %")
    assert "-> fast start, slow start go on" in lines[0]
    assert lines[1].endswith("-> slow start goes on")


def test_a_tie_keeps_the_configured_student():
    cfg = build_config("quickstart")
    same = {n: (lambda t: 0.5) for n in ("configured", "other")}
    win = successive_halving([Candidate(n, cfg) for n in same], 5.0, on_curves(same),
                             lambda s: None)
    assert win.name == "configured"


def test_the_race_time_and_the_winners_part_of_it():
    assert race_seconds(3, 20.0) == (100.0, 40.0)   # 3 then 2 candidates a round
    assert race_seconds(2, 20.0) == (40.0, 20.0)
    assert race_seconds(1, 20.0) == (0.0, 0.0)


def test_the_candidates_are_the_shapes_the_image_size_takes():
    cfg = build_config("quickstart", overrides=["data.img_size=64", "model.patch_size=16",
                                                "model.overrides={depth: 4}"])
    names = [c.name for c in candidates(cfg)]
    assert names == ["4x4 patches, depth 4", "8x8 patches, depth 4", "8x8 patches, depth 2"]
    assert [c.name for c in candidates(build_config("quickstart", overrides=[
        "data.img_size=32", "model.patch_size=4", "model.overrides={depth: 1}"]))] == [
        "8x8 patches, depth 1", "16x16 patches, depth 1"]
    assert len(candidates(build_config("quickstart", overrides=[
        "data.img_size=30", "model.patch_size=3"]))) == 1          # no finer grid divides 30


def test_a_raced_run_continues_the_winner_and_keeps_the_others(tmp_path, monkeypatch):
    # rounds of a fifth of the student's time (a twentieth by default) so that a 40-s budget
    # holds two epochs of each candidate a round
    monkeypatch.setattr("deitkit.race.RACE_SHARE", 0.2)
    monkeypatch.setattr("deitkit.plan.process_seconds", lambda: 0.0)
    out = tmp_path / "r"
    cfg = build_config("quickstart", overrides=[
        f"out={out}", *TINY, "model.patch_size=8", "data.holdout=0.2", "race=true",
        "teacher.train_epochs=1", "eval_train_images=0"])
    lines = []
    t0 = time.perf_counter()
    summary = train(cfg, log=lines.append, time_budget=40 / 60)
    took = time.perf_counter() - t0
    said = "\n".join(lines)
    assert took <= 40.0
    assert "race: 2 candidate students" in said and "race round 1" in said, said
    names = [r["name"] for r in summary["race"]]
    assert names == ["4x4 patches, depth 1", "8x8 patches, depth 1"]
    win = summary["race_winner"]
    assert win in names and f"race: the student is {win}" in said
    rd = RunDir(out)
    patch = {"4x4 patches, depth 1": 8, "8x8 patches, depth 1": 4}[win]
    assert f"patch_size: {patch}" in rd.config.read_text()          # the winner is the run
    assert len(rd.read_metrics()) == summary["epochs"]               # its epochs, race ones too
    raced = next(r for r in summary["race"] if r["name"] == win)
    assert summary["epochs"] > raced["epochs"] >= 2                  # it went on after the race
    loser = next(n for n in names if n != win)
    assert rd.racer(loser).has_last() and not rd.racer(win).path.exists()
    assert "student shape: " + win in format_summary(summary)
    assert summary["wall_seconds"] <= took
